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

import yaml

from aigi.errors import AigiError, one_line
from aigi.params import Params
from aigi.paths import PROCESSED, project_root, user_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri or (
        f"sqlite:///{user_root() / 'mlflow.db'}"
    )


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts go next to the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def use_store(params: Params) -> str:
    """Point MLflow (tracking and model registry) at the project's store; returns its URI."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(params: Params) -> str:
    """Point MLflow at the store and return the experiment's id, creating it on first use."""
    uri = use_store(params)
    try:
        exp = mlflow.get_experiment_by_name(params.mlflow.experiment)
        if exp is not None:
            return exp.experiment_id
        return mlflow.create_experiment(params.mlflow.experiment, artifact_location=_artifact_location(uri))
    except mlflow.exceptions.MlflowException as e:
        raise AigiError(f"MLflow tracking at {uri} failed ({one_line(e)}); "
                        f"check mlflow.tracking_uri / MLFLOW_TRACKING_URI") from None


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(root: Path) -> str:
    """DVC's hash of data/processed (from dvc.lock), else a hash of its manifest."""
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("preprocess", {}).get("outs", []):
            if out.get("path") == PROCESSED.as_posix():
                return f"md5:{out.get('md5')}"
    manifest = root / PROCESSED / "manifest.json"
    if manifest.is_file():
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return "unknown"


def run_usable(params: Params, run_id: str) -> bool:
    """Whether `run_id` exists in the store and is not deleted (a resume reopens it). Read-only, so every
    torchrun rank can ask and all take the same decision."""
    use_store(params)
    try:
        return mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


def start_training_run(params: Params, run_id: str | None = None) -> mlflow.ActiveRun:
    """Open the run of a new model (or reopen `run_id` when resuming) with params and tags logged."""
    exp = experiment_id(params)
    if run_id:
        return mlflow.start_run(run_id=run_id)
    root = project_root()
    run = mlflow.start_run(experiment_id=exp, run_name=f"{params.finetune.method}-{params.model.arch}")
    mlflow.log_params(params.flat())
    mlflow.set_tags({
        "git_commit": git_commit(root),
        "dvc_data_version": data_version(root),
        "aigi.method": params.finetune.method,
        "aigi.arch": params.model.arch,
    })
    return run


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
    """Reopen the run named in `run_file` (written by finetune) for evaluate and report."""
    run_id = read_run_id(run_file)
    experiment_id(params)
    with mlflow.start_run(run_id=run_id) as run:
        # MLflow params are write-once: params changed since training (evaluate.*, report.*) are
        # recorded as tags, so the run says what its latest metrics were computed with.
        logged = mlflow.get_run(run.info.run_id).data.params
        changed = {k: str(v) for k, v in params.flat().items() if k in logged and logged[k] != str(v)}
        if changed:
            mlflow.set_tags({f"evaluated_with.{k}": v for k, v in changed.items()})
        yield run
