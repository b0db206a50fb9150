"""Where things live. Every stage resolves paths against the project root."""

from __future__ import annotations

import os
from pathlib import Path

RAW = Path("data/raw")
RAW_IMAGES = RAW / "images"  # every source normalised to {train,test}/<CLASS>/
SOURCE_JSON = RAW / "SOURCE.json"
PROCESSED = Path("data/processed")
MODEL_DIR = Path("models/finetuned")
RUN_JSON = Path("models/run.json")  # the model's MLflow run: outside the model folder, whose hash is the weights'
CHECKPOINT_DIR = Path("models/checkpoints")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
TEST_METRICS = METRICS / "test"  # <name>.json per set in evaluate.test_on: {"finetuned": ..., "zeroshot": ...}
TEST_PLOTS = PLOTS / "test"  # <name>/{finetuned,zeroshot}/: ROC, PR, confusion, predictions.csv
SUMMARY = METRICS / "summary.json"  # the headline numbers (`dvc exp show`), written by the summary stage


def processed_dir(name: str) -> Path:
    """`data/processed/<name>/`: a dataset's CLIP-ready arrays and manifest."""
    return PROCESSED / name


def project_root() -> Path:
    """The project root: `DVC_ROOT` inside a DVC stage, else the nearest folder with a dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def user_root() -> Path:
    """The user's own checkout, also when DVC runs an experiment in a temporary copy of it.

    `dvc exp run --temp` and queued experiments run in `<repo>/.dvc/tmp/exps/<name>/`; tracking
    (the MLflow database, the artifacts) must still land in `<repo>`, where the user looks.
    """
    root = project_root()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root
