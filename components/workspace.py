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
        search/                               the recipe search (its own trials/, eval/, gate/, registry/)
        timings.json  run.log                 each stage's latest wall time and peak RSS; library logs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        return self.run_dir / "eval"

    @property
    def gate(self) -> Path:
        return self.run_dir / "gate"

    @property
    def registry(self) -> Path:
        return self.run_dir / "registry"

    @property
    def report(self) -> Path:
        return self.run_dir / "report"

    @property
    def search(self) -> Path:
        return self.run_dir / "search"

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
