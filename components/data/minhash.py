"""MinHash signatures and LSH band keys for near-duplicate detection, vectorised over a batch of texts.

Broder (1997), "On the resemblance and containment of documents": for a random hash h, the probability
that min h(A) = min h(B) equals the Jaccard similarity J(A, B). With b bands of r rows, two texts
share a band key with probability 1 - (1 - J^r)^b (Leskovec, Rajaraman, Ullman, Mining of Massive
Datasets, ch. 3). Written here rather than taken from datasketch because datasketch hashes one text
at a time in Python; this computes a whole batch's signatures in a few numpy calls, which is what
lets curation stream a million rows in minutes. datasketch's MinHash is used in the tests as the
reference for the Jaccard estimate.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash

from components.data.text import shingles

_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a, b) of the universal hashes h_i(x) = (a_i x + b_i) mod p, p = 2^61 - 1."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def signatures(texts: Sequence[str], num_perm: int = 64, seed: int = 1, ngram: int = 3) -> np.ndarray:
    """MinHash signature of each text's word-shingle set: shape (len(texts), num_perm), uint64."""
    a, b = permutations(num_perm, seed)
    shingle_lists = [sorted(set(shingles(t, ngram))) for t in texts]
    counts = np.array([len(s) for s in shingle_lists])
    hashes = np.fromiter(
        (xxhash.xxh32_intdigest(s.encode()) for ss in shingle_lists for s in ss),
        dtype=np.uint64,
        count=int(counts.sum()),
    )
    # (a*x + b) mod p with x < 2^32 and a < 2^32 stays below 2^64: no overflow before the mod.
    permuted = (hashes[:, None] * a[None, :] + b[None, :]) % _PRIME & _MASK32
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.minimum.reduceat(permuted, starts, axis=0)


def band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
    """One 64-bit key per (text, band): texts that share a key are near-duplicate candidates. Shape (n, bands)."""
    n, num_perm = sigs.shape
    if num_perm % bands:
        raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
    rows = sigs.reshape(n, bands, num_perm // bands)
    # A random linear hash of each band's r values, wrapping mod 2^64; the band index is mixed in so
    # that equal values in different bands do not collide.
    rng = np.random.default_rng(num_perm)
    multipliers = rng.integers(1, 1 << 63, size=rows.shape[2], dtype=np.uint64) | np.uint64(1)
    salts = rng.integers(0, 1 << 63, size=bands, dtype=np.uint64)
    with np.errstate(over="ignore"):
        keys = (rows * multipliers).sum(axis=2, dtype=np.uint64) ^ salts
    return keys.view(np.int64)


def bands_for(threshold: float, num_perm: int) -> int:
    """The band count whose S-curve 1 - (1 - J^r)^b crosses 1/2 nearest to `threshold` (r = num_perm / b)."""
    best, best_gap = 1, float("inf")
    for bands in (b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        midpoint = (1 - 0.5 ** (1 / bands)) ** (1 / rows)
        if abs(midpoint - threshold) < best_gap:
            best, best_gap = bands, abs(midpoint - threshold)
    return best


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash estimate of J(A, B): the share of equal signature entries."""
    return float(np.mean(sig_a == sig_b))


class SeenIndex:
    """Keys seen so far, on disk (SQLite), so that memory stays bounded whatever the input size."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache per index: its memory bound
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (key INTEGER PRIMARY KEY, row INTEGER) WITHOUT ROWID")

    def lookup(self, keys: Sequence[int]) -> dict[int, int]:
        """key -> the row id that first had it, for the keys already seen."""
        found: dict[int, int] = {}
        unique = list(set(int(k) for k in keys))
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 900]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, row FROM seen WHERE key IN ({marks})", chunk))
        return found

    def add(self, pairs: Sequence[tuple[int, int]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(int(k), int(r)) for k, r in pairs])

    def close(self) -> None:
        self._db.close()
