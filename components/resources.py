"""Wall time and peak resident memory of one piece of work inside a long-lived process (one pipeline stage).

Linux keeps the process's high-water mark of resident memory (VmHWM in /proc/self/status); writing 5 to
/proc/self/clear_refs resets it to the current resident size, so the peak seen after the reset belongs to the
work that ran since. Where that file is not writable (other systems), the peak is the process's since it
started (`ru_maxrss`), which can only over-state a stage's.
"""

from __future__ import annotations

import contextlib
import re
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new high-water mark; False where the system does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """The resident-memory high-water mark in MB (since the last reset, where resets work)."""
    if STATUS.is_file():
        found = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1)) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


@dataclass
class Usage:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


@contextlib.contextmanager
def measured() -> Iterator[Usage]:
    """Wall seconds and peak RSS of the block, filled in when it ends (also when it raises)."""
    usage = Usage()
    reset_peak_rss()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        usage.seconds = time.perf_counter() - start
        usage.peak_rss_mb = peak_rss_mb()
