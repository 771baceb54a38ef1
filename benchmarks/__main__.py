"""python -m benchmarks [NAME ...] [--profile smol] [--set KEY=VALUE ...]: run benchmarks, print the figures and
save them as JSON."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import benchmarks.base_model  # noqa: F401  (each module registers its benchmarks)
import benchmarks.curate_scale  # noqa: F401
import benchmarks.evaluate  # noqa: F401
import benchmarks.merge  # noqa: F401
import benchmarks.orchestration  # noqa: F401
import benchmarks.train  # noqa: F401
from benchmarks.runner import BENCHMARKS
from components.config import DEFAULT_PARAMS, load_params, parse_overrides
from components.errors import ParamsError
from flows.__main__ import add_override_option


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--profile", default="smol")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    add_override_option(parser)
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(BENCHMARKS)}")
    try:
        params = load_params(args.params, args.profile, parse_overrides(args.overrides))
    except ParamsError as error:
        parser.error(str(error))
    results = params.workspace / "benchmarks" / params.profile
    for name in args.names or BENCHMARKS:
        scratch = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        try:
            report = BENCHMARKS[name](params, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(report.render())
        print(f"  saved: {report.save(results)}\n")


if __name__ == "__main__":
    main()
