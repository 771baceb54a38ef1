"""One run at a time per run directory, whatever starts it (the CLI, a Prefect flow, the recipe search).

The lock is an advisory `flock` on `<run dir>/.lock`: the kernel releases it when its process ends, killed or not,
so a crash never leaves a stale lock. The file names the holder, so a second run is refused with who holds it.
Whoever takes the lock also clears what a killed run left behind: temporary output folders of processes that no
longer exist (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`, components.atomic).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from components.errors import PipelineError

LOCK_FILE = ".lock"
_TEMPORARY = re.compile(r"^\..+\.(tmp|old)-(\d+)$")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def clear_stale_temporaries(root: Path) -> list[Path]:
    """Remove the temporary outputs under `root` whose writing process is gone; returns what was removed."""
    removed = []
    for path in sorted(Path(root).rglob(".*")):
        match = _TEMPORARY.match(path.name)
        if match and not process_alive(int(match[2])) and path.exists():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    return removed


def _command_line() -> str:
    program = Path(sys.argv[0])
    start = f"python -m {program.parent.name}" if program.name == "__main__.py" else f"python {program.name}"
    return " ".join([start, *sys.argv[1:]])


@contextlib.contextmanager
def workspace_lock(run_dir: Path, command: str | None = None) -> Iterator[Path]:
    """Hold the run directory for this process; PipelineError naming the holder when another process has it.

    In a distributed job (torchrun, accelerate launch) the processes of one job share the run: rank 0 holds it."""
    run_dir = Path(run_dir)
    if os.environ.get("RANK", "0") != "0":
        yield run_dir
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 (held until the context ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        try:
            holder = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            holder = {}
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        raise PipelineError(
            f"{run_dir} is in use by `{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {since}); wait for it to finish, or run in another workspace "
            "(--set workspace=...)"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.time(),
                    "command": command or _command_line(),
                }
            )
            + "\n"
        )
        handle.flush()
        clear_stale_temporaries(run_dir)
        yield run_dir
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
