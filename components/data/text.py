"""Text normalisation and the quality signals the filters use. Pure functions over strings."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFKC, one newline style, no runs of spaces or tabs, at most one blank line in a row, trimmed.

    NFKC folds compatibility forms (ligatures, full-width letters, non-breaking spaces) so that text
    which reads the same deduplicates the same. Newlines are kept: code and lists need them.
    """
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def alpha_ratio(text: str) -> float:
    """Share of characters that are letters: low for symbol soup, tables of numbers, binary junk."""
    return sum(ch.isalpha() for ch in text) / len(text) if text else 0.0


def repeated_line_ratio(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line: high for boilerplate and generation loops."""
    lines = [line for line in text.split("\n") if line.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 3) -> list[str]:
    """Word n-grams of the lower-cased text (the whole text when it has fewer than n words)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
