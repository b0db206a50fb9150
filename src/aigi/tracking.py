"""MLflow: where runs go, and the one run per trained model that finetune, evaluate and report share.

Tracking URI: `MLFLOW_TRACKING_URI` if set, else `mlflow.tracking_uri` from params, else a SQLite
database at the root of the user's checkout (`sqlite:///<root>/mlflow.db`, MLflow's own default
store) with artifacts beside it in `<root>/mlartifacts`. Anchoring both to the user's root (not the
working directory, not DVC's temporary experiment copy) keeps every run in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from aigi.errors import AigiError, one_line
from aigi.params import MlflowParams, Params
from aigi.paths import MANIFEST, processed_dir, project_root, user_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" and lands on traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# A runs-table view stored in the experiment (MLflow's "shared view"): the headline numbers of
# metrics/summary.json as the first columns, since MLflow 3 shows no metric columns by default.
HEADLINE_VIEW = "aigi-headline"
HEADLINE_METRICS = ("acc_zs", "acc_ft", "auc_zs", "auc_ft", "f1_zs", "f1_ft", "ece_zs", "ece_ft", "acc_attr_ft")

def tracking_uri(mlflow_params: MlflowParams) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow_params.tracking_uri or (
        f"sqlite:///{user_root() / 'mlflow.db'}"
    )


def artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts go next to the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def use_store(mlflow_params: MlflowParams) -> str:
    """Point MLflow (tracking and model registry) at the project's store; returns its URI."""
    uri = tracking_uri(mlflow_params)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(mlflow_params: MlflowParams) -> str:
    """Point MLflow at the store and return the experiment's id, creating it on first use."""
    uri = use_store(mlflow_params)
    try:
        exp = mlflow.get_experiment_by_name(mlflow_params.experiment)
        if exp is None:
            return mlflow.create_experiment(mlflow_params.experiment, artifact_location=artifact_location(uri),
                                            tags=experiment_tags())
        missing = {k: v for k, v in experiment_tags().items() if exp.tags.get(k) != v}  # created by an older aigi
        for key, value in missing.items():
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    except mlflow.exceptions.MlflowException as e:
        raise AigiError(f"MLflow tracking at {uri} failed ({one_line(e)}); "
                        f"check mlflow.tracking_uri / MLFLOW_TRACKING_URI") from None


def experiment_tags() -> dict[str, str]:
    columns = ["attributes.`Dataset`", "params.`train_on`", "params.`finetune.method`",
               *(f"metrics.`{m}`" for m in HEADLINE_METRICS)]
    view = {"selectedColumns": columns, "columnWidths": {"attributes.`Dataset`": 160}}
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, f"mlflow.sharedViewState.{HEADLINE_VIEW}": json.dumps(view)}


def runs_page(base_url: str, experiment: str) -> str:
    """The experiment's runs table with the headline view (the UI otherwise opens in its GenAI mode)."""
    return f"{base_url}/#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey={HEADLINE_VIEW}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(root: Path, dataset: str) -> str:
    """DVC's hash of data/processed/<dataset> (from dvc.lock), else a hash of its manifest."""
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get(f"preprocess@{dataset}", {}).get("outs", []):
            if out.get("path") == processed_dir(dataset).as_posix():
                return f"md5:{out.get('md5')}"
    manifest = root / processed_dir(dataset) / MANIFEST
    if manifest.is_file():
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return "unknown"


def run_name(params: Params) -> str:
    """Under `dvc exp run`, the DVC experiment's name (DVC sets DVC_EXP_NAME in the stage's environment);
    otherwise method, arch and a short hash of the params, so runs that differ have different names."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    flat = {k: v for k, v in params.flat().items() if not k.startswith("mlflow.")}  # where a run goes, not what
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{params.finetune.method}-{Path(params.model.arch).stem}-{digest}"


def data_label(params: Params) -> str:
    """Where the images came from, in a few words: `synthetic`, `kaggle:birdy654/cifake-...`."""
    d = params.training_dataset
    where = {"kaggle": d.kaggle_dataset, "huggingface": d.huggingface_dataset, "url": d.url, "local": d.path}
    return f"{d.source}:{where[d.source]}" if where.get(d.source) else d.source


def class_counts(table: pd.DataFrame) -> dict[str, int]:
    names = table["label_name"]
    return {str(k): int(v) for k, v in sorted(names.value_counts().items(), key=lambda kv: str(kv[0]))}


class SplitDataset(MetaDataset):
    """A split of data/processed as an MLflow dataset: metadata only (the images stay in DVC), with its
    class counts as the profile the UI shows."""

    def __init__(self, source: DatasetSource, name: str, digest: str, counts: dict[str, int]):
        self._counts = counts
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return {"num_rows": sum(self._counts.values()), "class_counts": self._counts}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def log_datasets(params: Params, processed: Path, version: str) -> dict[str, dict[str, int]]:
    """Log the train and test splits as dataset inputs (contexts training / testing) of the active run.

    The digest is DVC's hash of data/processed, so two runs on different data show different datasets.
    Returns the class counts per split.
    """
    digest = version.split(":", 1)[-1][:32]  # MLflow keeps at most 36 characters
    counts: dict[str, dict[str, int]] = {}
    for split, context in (("train", "training"), ("test", "testing")):
        path = processed / f"{split}.csv"
        if not path.is_file():  # finetune has read train already; a run opened elsewhere may have no data
            continue
        counts[split] = class_counts(pd.read_csv(path))
        dataset = SplitDataset(LocalArtifactDatasetSource(str(path.resolve())),
                               f"{data_label(params)} {split}", digest, counts[split])
        mlflow.log_input(dataset, context=context)
    return counts


def describe(params: Params, counts: dict[str, dict[str, int]]) -> str:
    """The run's one-line description: data source and size, method, key params."""
    f = params.finetune
    sizes = " / ".join(f"{sum(c.values()):,} {split}" for split, c in counts.items())
    classes = ", ".join(counts.get("train", {}))
    return (f"{data_label(params)} data ({sizes} images; {classes}); {f.method} fine-tuning of "
            f"{params.model.arch} ({params.model.pretrained}); lr {f.lr:g}, {f.epochs} epochs, "
            f"batch {f.batch_size}x{f.grad_accum_steps}, seed {params.seed}")


def run_usable(mlflow_params: MlflowParams, run_id: str) -> bool:
    """Whether `run_id` exists in the store and is not deleted (a resume reopens it). Read-only, so every
    torchrun rank can ask and all take the same decision."""
    use_store(mlflow_params)
    try:
        return mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


def start_training_run(params: Params, run_id: str | None = None) -> mlflow.ActiveRun:
    """Open the run of a new model (or reopen `run_id` when resuming) with params, tags and datasets logged."""
    exp = experiment_id(params.mlflow)
    if run_id:
        return mlflow.start_run(run_id=run_id)
    root = project_root()
    run = mlflow.start_run(experiment_id=exp, run_name=run_name(params))
    mlflow.log_params(params.flat())
    version = data_version(root, params.train_on)
    counts = log_datasets(params, root / processed_dir(params.train_on), version)
    mlflow.set_tags({
        "git_commit": git_commit(root),
        "dvc_data_version": version,
        "aigi.method": params.finetune.method,
        "aigi.arch": params.model.arch,
        "mlflow.note.content": describe(params, counts),  # the description the UI shows under the run's name
    })
    return run


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """Per-epoch values under `<metric>/<split>` names: MLflow groups charts by the part before `/`,
    so train and val loss (and accuracy) are drawn side by side."""
    out = {}
    for key, value in row.items():
        split, _, metric = key.partition("_")
        out[f"{metric}/{split}" if split in ("train", "val") and metric else key] = value
    out.pop("epoch", None)
    return out


def write_run_file(path: Path, run_id: str) -> None:
    """`models/run.json`: the MLflow run of the model finetune saved, which evaluate and report log into."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"run_id": run_id}) + "\n")
    tmp.replace(path)


def read_run_id(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())["run_id"])
    except FileNotFoundError:
        raise AigiError(f"{path} is missing; re-run the finetune stage (dvc repro finetune)") from None
    except (ValueError, KeyError, TypeError):
        raise AigiError(f"{path} is not a run file written by finetune; re-run it (dvc repro -f finetune)") from None


@contextlib.contextmanager
def model_run(params: Params, run_file: Path) -> Iterator[Any]:
    """Reopen the run named in `run_file` (written by finetune) for evaluate, explain and report. Only the store
    matters (mlflow.tracking_uri): the run is found by its id, in whatever experiment it was opened."""
    run_id = read_run_id(run_file)
    uri = use_store(params.mlflow)
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise AigiError(f"MLflow run {run_id} (from {run_file}) is not in the store {uri}; point mlflow.tracking_uri"
                        " at the store that holds it, or train anew: dvc repro -f finetune") from None
    with mlflow.start_run(run_id=run_id) as run:
        # MLflow params are write-once: params changed since training (evaluate.*, report.*) are
        # recorded as tags, so the run says what its latest metrics were computed with.
        logged = mlflow.get_run(run.info.run_id).data.params
        changed = {k: str(v) for k, v in params.flat().items() if k in logged and logged[k] != str(v)}
        if changed:
            mlflow.set_tags({f"evaluated_with.{k}": v for k, v in changed.items()})
        yield run
