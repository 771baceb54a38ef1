"""python -m components.merge RECIPE.yaml OUT_DIR: merge outside the pipeline, as mergekit-yaml does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.atomic import check_output
from components.errors import PipelineError
from components.merge.engine import run_recipe
from components.merge.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.merge", description=__doc__)
    parser.add_argument("recipe", type=Path, help="mergekit-style YAML recipe")
    parser.add_argument("out_dir", type=Path, help="where the merged model directory is written")
    parser.add_argument(
        "--max-relative-delta",
        type=float,
        default=0.5,
        help="refuse models whose weights differ from the first by more than this share of its norm",
    )
    parser.add_argument(
        "--random-seed",
        type=int,
        default=None,
        help="seed for mergekit's randomised methods (dare_ties, della, ...), as mergekit-yaml's --random-seed",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUT_DIR if it exists (never when it is, holds or lies in an input)",
    )
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        out = check_output(args.out_dir, [p for p in recipe.model_paths() if p.exists()], replace=args.force)
        result = run_recipe(recipe, out, args.max_relative_delta, random_seed=args.random_seed)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged into {args.out_dir} in {result.metrics['merge_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
