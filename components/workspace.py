"""Every path of a run, in one place: the workspace root and one profile's run directory under it.

A stage takes a `Workspace` (or the explicit paths it hands out), never a run directory plus string
literals. `dvc.yaml` names the same folders; tests/test_workspace.py checks that the two agree.

    <root>/mlflow.db, mlartifacts/           the default MLflow store (components.tracking)
    <root>/<profile>/                         the run directory
        base_model/                           the base model as a Hugging Face directory
        data/raw/  data/curated/<table>/{train,val,test}.jsonl  data/validation/  data/pairs/<table>/train.jsonl
        models/<job>/   train/<job>/          a train job's merged model; its checkpoints, adapter, loss history
        merged/<recipe>/                      a merge recipe's model
        safety/realigned/  safety/pruned/     SOMF's and Antidote's models
        eval/<candidate>/  eval/summary.json  the evaluation of every candidate
        gate/  registry/  report/             the shipped candidate's gate report, registration, figures
        search/                               the recipe search: study.db, trials/<plan>/, trials.json, eval/,
                                              chosen.json, chosen_recipe.yaml, pareto_front.png, report.md,
                                              and the chosen trial's own gate/ and registry/
        timings.json  run.log                 each stage's latest wall time and peak RSS; library logs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shipping:
    """Where the gate and register stages of one shipped candidate write: the run's, or the recipe search's."""

    root: Path

    @property
    def gate(self) -> Path:
        return self.root / "gate"

    @property
    def gate_json(self) -> Path:
        return self.gate / "report.json"

    @property
    def gate_md(self) -> Path:
        return self.gate / "report.md"

    @property
    def champion_evaluation(self) -> Path:
        """The champion's metrics from the run's own evaluation suite, kept by the gate for the next run."""
        return self.gate / "champion.json"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def registration(self) -> Path:
        """What the register stage did: the version, whether it was promoted, and why."""
        return self.registry / "registration.json"

    @property
    def model_card(self) -> Path:
        return self.registry / "model_card.md"

    @property
    def registered_gate_md(self) -> Path:
        """The gate report stored beside the registered version's card."""
        return self.registry / "report.md"


@dataclass(frozen=True)
class TrialFolder:
    """One plan of the recipe search: its merge, realigned and pruned models, and its final model's evaluation."""

    root: Path

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def realigned(self) -> Path:
        return self.root / "realigned"

    @property
    def pruned(self) -> Path:
        return self.root / "pruned"

    @property
    def models(self) -> tuple[Path, Path, Path]:
        """Every model step's folder, in the order the trial makes them."""
        return self.merged, self.realigned, self.pruned

    @property
    def eval(self) -> Path:
        return self.root / "eval"


@dataclass(frozen=True)
class SearchFolder:
    """The recipe search's folder (components/search/)."""

    root: Path

    @property
    def study_db(self) -> Path:
        """Optuna's SQLite study, when search.storage names no other."""
        return self.root / "study.db"

    def trial(self, plan_key: str) -> TrialFolder:
        """One plan's models and evaluation: the same knobs (a retried trial) find their finished steps here."""
        return TrialFolder(self.root / "trials" / plan_key)

    @property
    def trials(self) -> Path:
        """Every trial's knobs, metrics and state."""
        return self.root / "trials.json"

    @property
    def eval(self) -> Path:
        """The chosen trial's test evaluation and the references' (summary.json), laid out as the evaluate stage's:
        what the gate and register stages read."""
        return self.root / "eval"

    @property
    def chosen(self) -> Path:
        return self.root / "chosen.json"

    @property
    def chosen_recipe(self) -> Path:
        return self.root / "chosen_recipe.yaml"

    @property
    def front_plot(self) -> Path:
        return self.root / "pareto_front.png"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def shipping(self) -> Shipping:
        """The chosen trial's gate and registration."""
        return Shipping(self.root)


@dataclass(frozen=True)
class Workspace:
    """`root` holds the MLflow store and one run directory per profile; `profile` picks the run directory."""

    root: Path
    profile: str

    @property
    def run_dir(self) -> Path:
        """One folder per profile, so profiles never overwrite each other."""
        return self.root / self.profile

    # --- models
    @property
    def base_model(self) -> Path:
        return self.run_dir / "base_model"

    def job_model(self, job: str) -> Path:
        return self.run_dir / "models" / job

    def job_work(self, job: str) -> Path:
        """A train job's checkpoints, adapter and log_history.json."""
        return self.run_dir / "train" / job

    def loss_history(self, job: str) -> Path:
        return self.job_work(job) / "log_history.json"

    def merged(self, recipe: str) -> Path:
        return self.run_dir / "merged" / recipe

    @property
    def realigned(self) -> Path:
        return self.run_dir / "safety" / "realigned"

    @property
    def pruned(self) -> Path:
        return self.run_dir / "safety" / "pruned"

    # --- data
    @property
    def raw(self) -> Path:
        return self.run_dir / "data" / "raw"

    @property
    def curated(self) -> Path:
        return self.run_dir / "data" / "curated"

    @property
    def curation_report(self) -> Path:
        """The curate stage's report.json: every curated table's kind (its manifest) and every filter's removals."""
        return self.curated / "report.json"

    def split(self, table: str, split: str) -> Path:
        """A curated table's split: data/curated/<table>/<split>.jsonl."""
        return self.curated / table / f"{split}.jsonl"

    @property
    def validation(self) -> Path:
        return self.run_dir / "data" / "validation"

    @property
    def pairs(self) -> Path:
        return self.run_dir / "data" / "pairs"

    def pair_table(self, table: str) -> Path:
        """A table of the pairs stage (components.train.data.PAIR_TABLES): data/pairs/<table>/train.jsonl."""
        return self.pairs / table / "train.jsonl"

    @property
    def harmful_compliance(self) -> Path:
        return self.pair_table("harmful_compliance")

    # --- evaluation, shipping, pictures, search
    @property
    def eval(self) -> Path:
        """The evaluation of the test splits: what the gates, the registry and the README read."""
        return self.evaluation("test")

    def evaluation(self, split: str) -> Path:
        """The evaluate stage's folder for one split: eval/ for test, eval-val/ for a validation run."""
        return self.run_dir / ("eval" if split == "test" else f"eval-{split}")

    @property
    def shipping(self) -> Shipping:
        """The gate report and registration of the shipped candidate (registry.candidate)."""
        return Shipping(self.run_dir)

    @property
    def report(self) -> Path:
        return self.run_dir / "report"

    @property
    def search(self) -> SearchFolder:
        return SearchFolder(self.run_dir / "search")

    @property
    def run_log(self) -> Path:
        """Library logs and warnings of the command-line runs (flows/console.py)."""
        return self.run_dir / "run.log"

    @property
    def timings(self) -> Path:
        """Each stage's latest wall time and peak RSS (flows.stages.Stage.execute)."""
        return self.run_dir / "timings.json"

    # --- MLflow's default store (components.tracking; MLFLOW_TRACKING_URI overrides it)
    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
