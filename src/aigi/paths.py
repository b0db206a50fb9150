"""Where things live: every path of the pipeline, relative to the project root, is named here once.

Each dataset (params.yaml `datasets.<name>`) has its own raw and processed folders; every other
artifact is one per run. tests/test_paths.py checks that each name below is an out or dep in dvc.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path

_RAW = Path("data/raw")
_PROCESSED = Path("data/processed")
_METRICS = Path("metrics")
_PLOTS = Path("plots")

# File and folder names inside a dataset's folders (library code builds them from the folder it is given).
IMAGES = "images"  # in each raw folder: the images, normalised to {train,test}/<CLASS>/
SOURCE = "SOURCE.json"  # in each raw folder: what was fetched, from where, classes, counts, hashes
SHA256SUMS = "SHA256SUMS"  # in each raw folder: one line per image, `sha256sum -c` format
MANIFEST = "manifest.json"  # in each processed folder: what preprocess made (aigi.data.store.load_manifest)


def raw_dir(dataset: str) -> Path:
    """The download stage's out for `dataset`: images/, SOURCE.json, SHA256SUMS."""
    return _RAW / dataset


def raw_images(dataset: str) -> Path:
    """Every source normalised to `{train,test}/<CLASS>/` (a test-only dataset: `test/` alone)."""
    return raw_dir(dataset) / IMAGES


def source_json(dataset: str) -> Path:
    return raw_dir(dataset) / SOURCE


def processed_dir(dataset: str) -> Path:
    """The preprocess stage's out: `{train,val,test}.{npy,csv}` (test-only: `test.*`) and manifest.json."""
    return _PROCESSED / dataset


def audit_metrics(dataset: str) -> Path:
    """The audit@<dataset> stage's out: what the files' metadata alone says about their labels."""
    return _METRICS / "audit" / f"{dataset}.json"


def test_set_plots(dataset: str) -> Path:
    """The test@<dataset> stage's plots: `{finetuned,zeroshot}/` with ROC, PR, confusion and predictions.csv."""
    return _PLOTS / "test" / dataset


MODEL_DIR = Path("models/finetuned")
RUN_JSON = Path("models/run.json")  # the model's MLflow run: outside the model folder, whose hash is the weights'
CHECKPOINT_DIR = Path("models/checkpoints")  # finetune's scratch while it runs; never an out

ZEROSHOT_METRICS = _METRICS / "zeroshot.json"
EVAL_METRICS = _METRICS / "eval.json"
ROBUSTNESS_METRICS = _METRICS / "robustness.json"
SUMMARY_METRICS = _METRICS / "summary.json"  # the headline numbers for `dvc exp show`
SALIENCY_METRICS = _METRICS / "saliency.json"
TEST_METRICS = _METRICS / "test"  # <name>.json per test set (and train_on's): {"finetuned": ..., "zeroshot": ...}

TRAIN_PLOTS = _PLOTS / "train"
ZEROSHOT_PLOTS = _PLOTS / "zeroshot"
EVAL_PLOTS = _PLOTS / "eval"
ROBUSTNESS_PLOTS = _PLOTS / "robustness"
EXPLAIN_PLOTS = _PLOTS / "explain"

TRAIN_CURVES = TRAIN_PLOTS / "curves.png"
ZEROSHOT_CURVES = ZEROSHOT_PLOTS / "curves.png"
ZEROSHOT_PREDICTIONS = ZEROSHOT_PLOTS / "predictions.csv"
EVAL_CURVES = EVAL_PLOTS / "curves.png"
EVAL_PREDICTIONS = EVAL_PLOTS / "predictions.csv"
ATTRIBUTION_FIGURE = EVAL_PLOTS / "attribution_confusion.png"
ROBUSTNESS_FIGURE = ROBUSTNESS_PLOTS / "robustness.png"
RELIABILITY_FIGURE = EVAL_PLOTS / "reliability.png"  # zero-shot vs fine-tuned on the test split
SALIENCY_GRID = EXPLAIN_PLOTS / "grid.png"

REPORTS = Path("reports")
REPORT_HTML = REPORTS / "report.html"


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
