"""Command line: `python -m flows --help`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import DEFAULT_PARAMS, Params, load_params, parse_overrides
from components.errors import PipelineError
from components.stage import StageResult
from components.tracking import pipeline_run, tracked_stage, tracking_uri
from flows.stages import FIXED, Stage, describe, stages_for


def _add_params_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameters file (default: params.yaml)")
    parser.add_argument("--profile", help="profile in the parameters file (default: its `profile` key)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter, for example --set base_model.dtype=bfloat16 (repeatable)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows",
        description="Post-train a language model: data, training, merging, safety, evaluation, registry.",
        epilog="stages, in pipeline order:\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run every stage in order under one MLflow parent run")
    _add_params_options(run)
    stage = commands.add_parser("stage", help="run one stage", epilog="stages:\n" + describe(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    stage.add_argument("name", metavar="NAME", help=", ".join(s.name for s in FIXED) + ", train-<job>")
    _add_params_options(stage)
    listing = commands.add_parser("stages", help="list the stages with what each reads and writes")
    _add_params_options(listing)
    chat = commands.add_parser("chat", help="answer one prompt with a model directory (default: the base model)")
    chat.add_argument("prompt")
    chat.add_argument("--model", type=Path, help="model directory (default: <workspace>/<profile>/base_model)")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    _add_params_options(chat)
    return parser


def _run_stage(stage: Stage, params: Params, repo: Path, tracking: bool, parent_run_id: str | None = None) -> StageResult:
    if not tracking:
        result = stage.run(params)
    else:
        result, _ = tracked_stage(params, repo, stage.name, stage.param_keys, lambda: stage.run(params), parent_run_id)
    state = "up to date" if result.cached else "done"
    print(f"[{stage.name}] {state}: " + ", ".join(f"{k}={v}" for k, v in result.outputs.items()))
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, args.profile, parse_overrides(args.overrides))
        repo = args.params.resolve().parent
        stages = stages_for(params)
        if args.command == "stages":
            print(describe(stages))
        elif args.command == "stage":
            by_name = {stage.name: stage for stage in stages}
            if args.name not in by_name:
                raise PipelineError(f"unknown stage {args.name!r}; stages of profile {params.profile!r}: {', '.join(by_name)}")
            _run_stage(by_name[args.name], params, repo, not args.no_tracking)
        elif args.command == "run":
            if args.no_tracking:
                for stage in stages:
                    _run_stage(stage, params, repo, tracking=False)
            else:
                with pipeline_run(params, repo) as parent:
                    for stage in stages:
                        _run_stage(stage, params, repo, True, parent)
                print(f"MLflow: run {parent} in experiment {params.tracking.experiment!r} at {tracking_uri(params)}")
                print(f"        browse it with: mlflow ui --backend-store-uri {tracking_uri(params)}")
        elif args.command == "chat":
            from components.model.chat import chat

            print(chat(args.model or params.run_dir / "base_model", args.prompt, args.max_new_tokens))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
