"""Progress of long stages (training steps) for whoever watches: the Prefect UI, a terminal, nobody.

A stage calls `report`; an orchestrator that wants to show progress wraps the stage in `listening`.
Context-local, so concurrent stages in other threads never see each other's listener, and a stage
run without one pays nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Listener = Callable[[str, float], None]
_listener: ContextVar[Listener | None] = ContextVar("progress_listener", default=None)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report(what: str, fraction: float) -> None:
    """`fraction` of `what` is done (0 to 1)."""
    listener = _listener.get()
    if listener is not None:
        listener(what, fraction)
