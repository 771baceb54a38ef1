"""Write outputs so that no stage ever sees a half-written one: build under a temporary name, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from components.errors import InputError


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; on success it replaces `final`, on error it is removed.

    The temporary directory sits in the same parent so the closing rename never crosses a filesystem.
    An existing `final` is moved aside first and deleted only after the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed over `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


@contextlib.contextmanager
def scratch_dir(beside: Path) -> Iterator[Path]:
    """A working folder next to `beside`, removed on exit; named as a temporary output (`.<name>-scratch.tmp-<pid>`)
    so that the next run clears it if this process is killed (components.lock)."""
    beside = Path(beside)
    folder = beside.parent / f".{beside.name}-scratch.tmp-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_output(out: Path, inputs: list[Path], replace: bool) -> Path:
    """Refuse an output that would destroy what the command did not create; returns `out` resolved.

    Always refused: an output that is an input, holds one, or lies inside one, and the folder the command runs in
    (or one above it). An existing file or non-empty folder is replaced only when `replace` says so.
    """
    out = Path(out).resolve()
    for path in (Path(p).resolve() for p in inputs):
        if out == path or path.is_relative_to(out) or out.is_relative_to(path):
            relation = "is" if out == path else "holds" if path.is_relative_to(out) else "lies inside"
            raise InputError(f"output {out} {relation} the input {path}: choose an output outside every input")
    if Path.cwd().resolve().is_relative_to(out):
        raise InputError(f"output {out} is the folder this command runs in (or one above it): choose a new folder")
    if (out.is_file() or (out.is_dir() and any(out.iterdir()))) and not replace:
        raise InputError(
            f"output {out} exists{' and is not empty' if out.is_dir() else ' (a file)'}: choose a new folder, "
            "or pass --force to replace it"
        )
    return out
