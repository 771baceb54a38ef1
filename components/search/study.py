"""The recipe search's study: Optuna's multi-objective search, created or continued, run up to `search.trials`.

Resumable: the study lives in a database (SQLite in the search folder, or `search.storage`), so a second run
continues it up to `search.trials` in all. One searcher per study: the flows hold the workspace lock, so a trial
still RUNNING when a search starts was cut off by a kill; it is marked FAIL and its knobs queued again. Only the
models of Pareto-optimal trials are kept on disk.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.errors import ParamsError
from components.search.config import SearchConfig
from components.search.results import trial_name, write_results
from components.search.space import directions, objective_values, suggest
from components.search.trial import SearchInputs, plan_key, run_trial
from components.stage import StageResult
from components.workspace import SearchFolder, TrialFolder

# A finished trial, as the tracking layer logs it: (name, knobs, metrics, tags).
TrialLogger = Callable[[str, dict[str, Any], dict[str, float], dict[str, str]], None]


def open_study(cfg: SearchConfig, storage: str, study_name: str, seed: int):
    """The study, created or continued; trials cut off by a killed search are failed and queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    finished = 0
    if study_name in existing:
        study = optuna.load_study(study_name=study_name, storage=storage)
        if study.directions != [
            optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in directions(cfg.objectives)
        ]:
            raise ParamsError(
                f"search.objectives: study {study_name!r} in {storage} was made for other objectives "
                f"({len(study.directions)}); set search.study_name to start a new study"
            )
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        finished = len(study.trials)
    # A new seed per resumption: a continued study must not draw its first trials' knobs again.
    sampler = optuna.samplers.TPESampler(seed=seed + finished, n_startup_trials=min(10, cfg.trials))
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=directions(cfg.objectives),
        sampler=sampler,
        load_if_exists=True,
    )


def search_recipes(
    cfg: SearchConfig,
    inputs: SearchInputs,
    references: dict[str, dict[str, float]],
    folder: SearchFolder,
    study_name: str,
    log_trial: TrialLogger | None = None,
) -> StageResult:
    """Run the search up to `cfg.trials` finished trials (or `cfg.timeout_minutes`); write the front and the choice.

    `references` are already evaluated models (base, experts) drawn beside the trials for comparison.
    """
    import optuna

    folder.root.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage or f"sqlite:///{folder.study_db.resolve()}"
    study = open_study(cfg, storage, study_name, inputs.seed)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    def objective(trial: optuna.Trial) -> list[float]:
        plan = suggest(trial, cfg.space, cfg.models)
        trial_folder = folder.trial(plan_key(plan))
        trial.set_user_attr(
            "plan", {"recipe": plan.recipe, "realign_lr": plan.realign_lr, "prune_ratio": plan.prune_ratio}
        )
        trial.set_user_attr("dir", str(trial_folder.root))
        started = time.monotonic()
        metrics, model = run_trial(plan, inputs, trial_folder)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("model", str(model))
        trial.set_user_attr("seconds", time.monotonic() - started)
        if log_trial is not None:
            log_trial(
                trial_name(trial.number),
                trial.params,
                metrics,
                {"trial_dir": str(trial_folder.root), "recipe": json.dumps(plan.recipe)},
            )
        return objective_values(metrics, cfg.objectives)

    def keep_front_models(study: optuna.Study, _trial) -> None:
        front_dirs = {t.user_attrs["dir"] for t in study.best_trials}
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if trial.user_attrs["dir"] not in front_dirs:
                for step in TrialFolder(Path(trial.user_attrs["dir"])).models:
                    shutil.rmtree(step, ignore_errors=True)

    remaining = cfg.trials - len(done)
    if remaining > 0:
        timeout = cfg.timeout_minutes * 60 if cfg.timeout_minutes else None
        study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[keep_front_models])
    return write_results(study, cfg, references, folder)
