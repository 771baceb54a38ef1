"""The benchmark registry and the report: figures in seconds, printed beside their ratio to the baseline."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from components import resources
from components.config import Params


@dataclass
class Report:
    """Named timings of one benchmark; `baseline` names the one every other is divided by."""

    name: str
    baseline: str
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def time(self, label: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[label] = time.perf_counter() - start

    def ratios(self) -> dict[str, float]:
        base = self.seconds[self.baseline]
        return {label: value / base for label, value in self.seconds.items()}

    def render(self) -> str:
        lines = [f"## {self.name} (baseline: {self.baseline})", f"{'figure':<40} {'seconds':>10} {'x baseline':>11}"]
        for label, ratio in self.ratios().items():
            lines.append(f"{label:<40} {self.seconds[label]:>10.3f} {ratio:>11.2f}")
        lines += [f"  {key}: {value}" for key, value in self.notes.items()]
        return "\n".join(lines)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(
            json.dumps(
                {"baseline": self.baseline, "seconds": self.seconds, "ratios": self.ratios(), "notes": self.notes},
                indent=2,
            )
            + "\n"
        )
        return path


BENCHMARKS: dict[str, Callable[[Params, Path], Report]] = {}


def benchmark(name: str):
    """Register `fn(params, scratch_dir) -> Report` under `name`."""

    def register(fn: Callable[[Params, Path], Report]) -> Callable[[Params, Path], Report]:
        BENCHMARKS[name] = fn
        return fn

    return register


def measured(target, *args) -> tuple[float, float, object]:
    """(seconds, peak RSS in MB during the call, result) of target(*args) in a fresh process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_timed, (target, *args))


def _timed(target, *args):
    # The peak is reset first, so that the libraries imported before the call do not count.
    with resources.measured() as usage:
        result = target(*args)
    return usage.seconds, usage.peak_rss_mb, result
