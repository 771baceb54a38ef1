"""The deployments: `post-train` (run from the UI's form), `nightly` (cron), and `recipe-search` (the Optuna
search over merge recipes, flows/recipe_search.py).

`python -m flows deploy` registers them with the Prefect API that PREFECT_API_URL points at. The code
is pulled from this checkout (`from_source` on the repository folder), so a process worker on this
machine runs it as it is; a Kubernetes pool runs the image of the Dockerfile instead (infra/kubernetes/).
"""

from __future__ import annotations

from prefect.flows import Flow
from prefect.schedules import Cron

from flows.defaults import DEFAULT_CRON, DEFAULT_POOL
from flows.post_train import PostTrainRequest
from flows.runner import CHOICES, REPO

ENTRYPOINT = "flows/post_train.py:post_train"
SEARCH_ENTRYPOINT = "flows/recipe_search.py:recipe_search"


def deploy(
    pool: str = DEFAULT_POOL,
    nightly_cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
    nightly_profile: str | None = None,
) -> dict[str, str]:
    """Register the deployments on `pool`; returns {name: deployment id}. The nightly runs `nightly_profile`, by
    default params.yaml's `profile`, written into the deployment's parameters so that the UI shows which."""
    nightly_profile = nightly_profile or CHOICES.default_profile
    flow = Flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    common = dict(work_pool_name=pool, build=False, push=False, print_next_steps=False, ignore_warnings=True)
    ids = {
        "post-train": flow.deploy(
            name="post-train",
            description="The whole pipeline with the parameters of the form: profile, experts, merge, safety, gates.",
            **common,
        ),
        "nightly": flow.deploy(
            name="nightly",
            schedule=Cron(nightly_cron, timezone=timezone),
            parameters=PostTrainRequest(profile=nightly_profile).model_dump(),
            description=f"Profile {nightly_profile}, {nightly_cron} ({timezone}): re-curate, retrain what changed, "
            "re-merge, re-gate, promote if the gates pass. Only changed stages recompute (stage keys).",
            **common,
        ),
        "recipe-search": Flow.from_source(source=str(REPO), entrypoint=SEARCH_ENTRYPOINT).deploy(
            name="recipe-search",
            description="Optuna over merge recipes (method, density, lambda, layer-swap depth, "
            "realign and prune strength): utility up, harm and over-refusal down; the Pareto front and the chosen "
            "recipe. Continues its study when run again.",
            **common,
        ),
    }
    return {name: str(deployment_id) for name, deployment_id in ids.items()}
