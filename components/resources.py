"""Wall time and peak resident memory of one piece of work inside a long-lived process (one pipeline stage).

Linux keeps the process's high-water mark of resident memory (VmHWM in /proc/self/status); writing 5 to
/proc/self/clear_refs resets it to the current resident size, so the peak seen after the reset belongs to the
work that ran since, plus what the process still holds (free memory is handed back to the system first).
Where that file is not writable (other systems), the peak is the process's since it started (`ru_maxrss`),
which can only over-state a stage's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import re
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def release_free_memory() -> None:
    """Hand memory that is free but still held by the process back to the system (glibc keeps what earlier work
    freed), so that a new high-water mark starts from what is really in use, not from the last stage's peak.

    What survives the collection is frozen (`gc.freeze`): it is the libraries' modules and classes and the
    pipeline's own state, about 0.9 million objects once torch, transformers, MLflow and Great Expectations are
    loaded, which every full collection would walk again (0.45 s each, 9 of the tiny run's 66 s). The next
    stage's collection then looks only at what was made since. The price: an object alive at a stage boundary
    that later becomes garbage inside a reference cycle is never collected; over a whole tiny run that was 139
    objects (a few kB).
    """
    gc.collect()
    gc.freeze()
    return_free_pages()


def return_free_pages() -> None:
    """glibc's malloc_trim: the free pages of the C heap back to the system (no garbage collection: cheap enough to
    call once per training step)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Start a new high-water mark; False where the system does not allow it."""
    release_free_memory()
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
