"""Command line: `python -m flows --help`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from components import progress
from components.config import DEFAULT_PARAMS, Params, load_params, parse_overrides
from components.errors import PipelineError
from components.lock import workspace_lock
from components.model.ref import ModelKind, ModelRef
from components.safety.judge import JUDGES, MODEL_JUDGES, judge_file, judged_rows, record_agreement
from components.stage import StageResult
from flows.console import progress_line, route_library_output
from flows.defaults import DEFAULT_CRON, DEFAULT_POOL
from flows.execute import execute, prepare_apart
from flows.stages import DATA, Stage, describe, search_stages, stages_for


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameters file (default: params.yaml)")
    parser.add_argument("--profile", help="profile in the parameters file (default: its `profile` key)")


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """--set KEY=VALUE, repeatable, into `overrides` (for `parse_overrides`); `python -m benchmarks` takes it too."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, for example --set base_model.dtype=bfloat16 (repeatable)",
    )


def _add_params_options(parser: argparse.ArgumentParser) -> None:
    _add_profile_options(parser)
    add_override_option(parser)
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="library logs, warnings and progress bars on the console too"
    )


def stage_table() -> str:
    """The stages of params.yaml's default profile, then the search's, with what each reads and writes (reading
    params.yaml checks the merge recipes, which imports torch: built only when help is asked for)."""
    try:
        params = load_params(DEFAULT_PARAMS)
    except PipelineError as err:
        return describe(DATA) + f"\n  (the other stages come from {DEFAULT_PARAMS}, which could not be read: {err})"
    stages = stages_for(params)
    stages += [s for s in search_stages(params) if s.name not in {stage.name for stage in stages}]
    return f"(profile {params.profile} of {DEFAULT_PARAMS})\n" + describe(stages)


def build_parser(stage_table_in_help: bool = True) -> argparse.ArgumentParser:
    """The command line; `stage_table_in_help`: the help lists the stages (see `stage_table`)."""
    table = stage_table() if stage_table_in_help else ""
    parser = argparse.ArgumentParser(
        prog="python -m flows",
        description="Post-train a language model: data, training, merging, safety, evaluation, registry.",
        epilog="stages, in pipeline order:\n" + table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run every stage in order under one MLflow parent run")
    _add_params_options(run)
    search = commands.add_parser(
        "search",
        help="search merge recipes with Optuna (search in params.yaml): the "
        "stages it needs, then the trials, each a nested MLflow run; resumes its study",
    )
    _add_params_options(search)
    stage = commands.add_parser(
        "stage",
        help="run one stage",
        epilog="stages:\n" + table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stage.add_argument("name", metavar="NAME", help=", ".join(s.name for s in DATA) + ", train-<job>")
    _add_params_options(stage)
    listing = commands.add_parser("stages", help="list the stages with what each reads and writes")
    _add_params_options(listing)
    dvc = commands.add_parser(
        "dvc-yaml",
        help="write dvc.yaml beside the parameters file from the stage table: one DVC stage per stage of the profile",
    )
    _add_profile_options(dvc)
    judge = commands.add_parser(
        "judge",
        help="judge answers: each JSONL row with `prompt` and `answer` written back with its verdict (refusal, attempt "
        "or non-answer), refusal, attempt, specific, harmful and score",
    )
    judge.add_argument("source", type=Path, metavar="IN.jsonl", nargs="?")
    judge.add_argument("target", type=Path, metavar="OUT.jsonl", nargs="?")
    judge.add_argument(
        "--agreement",
        action="store_true",
        help="instead: every judge's accuracy, precision and recall on the gold set's held-out third "
        "(components/safety/gold/), written to its agreement.json",
    )
    judge.add_argument(
        "--select-content",
        action="store_true",
        help="instead: choose the content judge's settings on the gold set's validation third and report them on its "
        "held-out third (components/safety/gold/content_judge.json)",
    )
    judge.add_argument(
        "--judge", choices=JUDGES, help="the judge (default: evaluate.judge of the parameters file's profile)"
    )
    judge.add_argument(
        "--judge-model",
        type=Path,
        metavar="DIR",
        help="the model the probe and content judges read (default: the profile's base model, built if missing)",
    )
    _add_profile_options(judge)
    chat = commands.add_parser("chat", help="answer one prompt with a model (default: the base model)")
    chat.add_argument("prompt")
    chat.add_argument(
        "--model",
        help="a model directory, a pipeline model (base, math, merge-ties, realigned-merge-ties, ...) or a registry "
        "URI such as models:/post-train@champion (default: base)",
    )
    chat.add_argument("--max-new-tokens", type=int, default=64)
    _add_params_options(chat)
    registry = commands.add_parser("registry", help="show the registered versions, promote one, or roll back")
    registry.add_argument("action", choices=["show", "promote", "rollback"])
    registry.add_argument("version", nargs="?", help="the version to promote (promote only)")
    _add_params_options(registry)
    deploy = commands.add_parser(
        "deploy", help="register the post-train and nightly deployments with the Prefect API of PREFECT_API_URL"
    )
    _add_deploy_options(deploy)
    stack = commands.add_parser(
        "stack", help="start or stop the local stack: Prefect and MLflow servers, work pool, worker, deployments"
    )
    stack.add_argument("action", choices=["start", "stop"])
    stack.add_argument(
        "--home",
        type=Path,
        default=Path("outputs/stack"),
        help="folder of the stack's databases, artifacts and logs (default: outputs/stack)",
    )
    stack.add_argument("--prefect-port", type=int, default=4200)
    stack.add_argument("--mlflow-port", type=int, default=5000)
    _add_deploy_options(stack)
    return parser


def _add_deploy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool (default: {DEFAULT_POOL})")
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule of nightly (default: '{DEFAULT_CRON}', UTC)")
    parser.add_argument("--nightly-profile", help="profile nightly runs (default: the params file's)")


def _run_stage(
    stage: Stage,
    params: Params,
    repo: Path,
    tracking: bool,
    parent_run_id: str | None = None,
    place: str = "",
    apart: bool = False,
) -> StageResult:
    from components.tracking import tracked_stage

    with progress.listening(progress_line(place + stage.name)):
        if not tracking:
            result = execute(stage, params, apart)
        else:
            result, _ = tracked_stage(
                params, repo, stage.name, stage.param_keys, lambda: execute(stage, params, apart), parent_run_id
            )
    state = "up to date" if result.cached else "done"
    took = f"{result.metrics['stage_seconds']:.1f} s, peak RSS {result.metrics['stage_peak_rss_mb']:.0f} MB"
    print(f"[{place}{stage.name}] {state} ({took}): " + ", ".join(f"{k}={v}" for k, v in result.outputs.items()))
    return result


def run_all(stages: list[Stage], params: Params, repo: Path, tracking: bool) -> None:
    """Every stage in order under the workspace lock, with `tracking` under one MLflow parent run."""
    with workspace_lock(params.ws.run_dir):
        prepare_apart(params)
        if tracking:
            from components.tracking import pipeline_run, tracking_uri

            run = pipeline_run(params, repo)
        else:
            run = contextlib.nullcontext(None)
        with run as parent:
            for k, stage in enumerate(stages, 1):
                _run_stage(stage, params, repo, tracking, parent, f"{k}/{len(stages)} ", apart=True)
    if tracking:
        uri = tracking_uri(params)
        print(f"MLflow: run {parent} in experiment {params.tracking.experiment!r} at {uri}")
        print(f"        browse it with: mlflow ui --backend-store-uri {uri}")


def probe_model(args: argparse.Namespace) -> Path:
    """The model the probe and content judges read: --judge-model, else the profile's base model (built if missing)."""
    if args.judge_model is not None:
        return args.judge_model
    from components.model.stage import base_model_stage

    return base_model_stage(load_params(args.params, args.profile)).outputs["model"]


def agreement_table(recorded: dict) -> str:
    """The judges' agreement with the gold set as a Markdown table."""
    columns = ("refusal", "attempt", "non-answer", "harmful")
    lines = [
        f"gold set, held-out third: {recorded['rows']} rows ({recorded['harmful_rows']} harmful); accuracy "
        "(precision, recall) of each verdict on every row, and of attempts on the harmful prompts' rows (harmful)",
        "| judge | " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for judge, scores in recorded["judges"].items():
        cells = [
            f"{scores[c]['accuracy']:.3f} ({scores[c]['precision']:.2f}, {scores[c]['recall']:.2f})" for c in columns
        ]
        lines.append(f"| {judge} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chat_model(params: Params, model: str | None) -> Path:
    """A model directory, a registry URI (downloaded), or a pipeline name (base, math, merge-ties, ...)."""
    if model and Path(model).is_dir():
        return Path(model)
    ref = ModelRef.parse(model or "base")
    if ref.kind is ModelKind.REGISTRY:
        from components.registry.registry import check_reachable, download_model
        from components.tracking import tracking_uri

        check_reachable(tracking_uri(params))
        return download_model(str(ref), tracking_uri=tracking_uri(params))
    folder = ref.folder(params.ws)
    if not folder.is_dir():
        raise PipelineError(
            f"--model {model}: neither a model directory nor a built model of profile "
            f"{params.profile!r} ({folder} does not exist)"
        )
    return folder


def registry_command(params: Params, action: str, version: str | None) -> str:
    from components.registry.registry import check_reachable, promote, rollback
    from components.registry.registry import describe as describe_registry
    from components.tracking import client_for, tracking_uri

    uri = tracking_uri(params)
    check_reachable(uri)
    client = client_for(params)
    name = params.registry.model_name
    if action == "promote":
        if not version:
            raise PipelineError("registry promote: which version? for example: python -m flows registry promote 3")
        replaced = promote(client, name, version)
        return f"{name}: champion is now v{version}" + (f" (was v{replaced})" if replaced else "")
    if action == "rollback":
        old, new = rollback(client, name)
        return f"{name}: champion rolled back from v{old} to v{new}"
    return describe_registry(client, name)


def orchestration_command(args: argparse.Namespace) -> int:
    import json

    if args.command == "deploy":
        from flows.deployments import deploy

        print(json.dumps(deploy(args.pool, args.cron, nightly_profile=args.nightly_profile)))
    elif args.action == "start":
        from flows.stack import describe, start

        print(
            describe(start(args.home, args.prefect_port, args.mlflow_port, args.pool, args.cron, args.nightly_profile))
        )
    else:
        from flows.stack import stop

        print("stopped: " + (", ".join(stop(args.home)) or "nothing was running"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(stage_table_in_help=bool({"-h", "--help"} & set(argv))).parse_args(argv)
    try:
        if args.command in ("deploy", "stack"):
            return orchestration_command(args)
        if args.command == "dvc-yaml":
            from flows.dvc_yaml import write_dvc_yaml

            print(f"wrote {write_dvc_yaml(load_params(args.params, args.profile), args.params)}")
            return 0
        if args.command == "judge" and args.select_content:
            from components.safety.content import record_selection

            chosen = record_selection(probe_model(args))
            print(f"wrote {chosen['file']}: chose {chosen['chosen']} on the validation third")
            return 0
        if args.command == "judge" and args.agreement:
            print(agreement_table(record_agreement(probe_model(args))))
            return 0
        if args.command == "judge":
            if args.source is None or args.target is None:
                raise PipelineError("judge: give IN.jsonl and OUT.jsonl (or --agreement)")
            judge = args.judge or load_params(args.params, args.profile).evaluate.judge
            judged_rows(args.source)  # a bad row is named before any judge model is built
            counts = judge_file(args.source, args.target, judge, probe_model(args) if judge in MODEL_JUDGES else None)
            print(
                f"{args.target}: {counts['rows']} rows, {counts['refusals']} refusals, {counts['attempts']} attempts, "
                f"{counts['non-answers']} non-answers (judge: {judge})"
            )
            return 0
        params = load_params(args.params, args.profile, parse_overrides(args.overrides))
        if args.command in ("run", "search", "stage", "chat"):
            route_library_output(params.ws.run_log, args.verbose)
        repo = args.params.resolve().parent
        stages = (
            search_stages(params, repo)
            if args.command == "search" or (args.command == "stage" and args.name.startswith("search"))
            else stages_for(params, repo)
        )
        if args.command == "stages":
            print(describe(stages, params.ws.timings))
        elif args.command == "stage":
            by_name = {stage.name: stage for stage in stages}
            if args.name not in by_name:
                raise PipelineError(
                    f"unknown stage {args.name!r}; stages of profile {params.profile!r}: {', '.join(by_name)}"
                )
            with workspace_lock(params.ws.run_dir):
                _run_stage(by_name[args.name], params, repo, not args.no_tracking)
        elif args.command in ("run", "search"):
            run_all(stages, params, repo, tracking=not args.no_tracking)
        elif args.command == "chat":
            from components.model.chat import chat

            print(chat(chat_model(params, args.model), args.prompt, args.max_new_tokens))
        elif args.command == "registry":
            print(registry_command(params, args.action, args.version))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
