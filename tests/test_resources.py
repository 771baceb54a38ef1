"""Per-stage wall time and peak memory: the high-water mark is the stage's own, and the run keeps a table of them."""

from pathlib import Path

from components import resources
from components.config import load_params
from components.stage import StageResult
from flows.execute import execute
from flows.stages import Stage, describe


def test_the_peak_is_reset_for_each_measured_block():
    with resources.measured() as big:
        block = bytearray(300 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so that it is resident
        del block
    with resources.measured() as small:
        pass
    assert big.peak_rss_mb - small.peak_rss_mb > 250, (big, small)
    assert big.seconds >= 0 and small.seconds >= 0


def demo_stage(name: str, run) -> Stage:
    return Stage(name, "a stage", "-", "-", (), run, __name__, lambda ws, p: {}, lambda ws, p: [])


def test_a_stage_run_leaves_its_time_and_peak_in_its_metrics_and_the_timings_file(params_file: Path):
    params = load_params(params_file, "tiny")
    stage = demo_stage("demo", lambda p: StageResult(outputs={}, metrics={"m": 1.0}))
    result = execute(stage, params)
    assert result.metrics["m"] == 1.0 and result.metrics["stage_seconds"] >= 0
    assert result.metrics["stage_peak_rss_mb"] > 10
    cached = execute(demo_stage("other", lambda p: StageResult(outputs={}, cached=True)), params)
    assert cached.cached
    listing = describe([stage], params.ws.timings)
    assert "last run: " in listing and "MB (built)" in listing
    assert "(up to date)" in describe([demo_stage("other", stage.run)], params.ws.timings)


def test_releasing_memory_freezes_what_survives_and_still_collects_later_cycles():
    import gc
    import weakref

    class Node:
        pass

    resources.release_free_memory()
    assert gc.get_freeze_count() > 1000  # the libraries' objects are out of later collections' way
    cycle = Node()
    cycle.itself = cycle
    alive = weakref.ref(cycle)
    del cycle
    resources.release_free_memory()
    assert alive() is None  # garbage made after the freeze is still found
