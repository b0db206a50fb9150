"""Score a detector on the test split and write its metrics, plots and per-image predictions."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi import metrics
from aigi.calibration import decision_threshold
from aigi.classes import detector_labels, from_manifest, is_fake, p_fake
from aigi.data.store import load_manifest, load_split
from aigi.errors import AigiError
from aigi.inference import class_probs
from aigi.model import Detector
from aigi.params import Params
from aigi.plots import write_attribution_plots, write_robustness_plots, write_score_plots
from aigi.robustness import evaluate_robustness, summary_table


def test_classes(detector: Detector, manifest: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The data's classes and display names; the detector must have been built for the same classes."""
    classes, display_names = from_manifest(manifest)
    if detector.classes != classes:
        raise AigiError(f"the model's classes {detector.classes} differ from the data's {classes} "
                        f"(its manifest.json); re-run finetune (dvc repro)")
    return classes, display_names


def score_test_split(detector: Detector, params: Params, name: str, batch_size: int, processed: Path,
                     metrics_file: Path, plots_dir: Path) -> dict[str, Any]:
    """The test split of `processed` (the dataset the detector trained on): writes `metrics_file` and
    `plots_dir` (ROC, PR, confusions, predictions.csv); `name` labels the progress bar and the plots."""
    result = score_test_set(detector, params, name, batch_size, processed, plots_dir, cross=False)
    write_json(metrics_file, result)
    return result


def score_test_set(detector: Detector, params: Params, name: str, batch_size: int, processed: Path,
                   plots_dir: Path, cross: bool = True) -> dict[str, Any]:
    """Score the test split of `processed` and write `plots_dir`; returns the metrics (`evaluate_classes`).

    `cross` (a test set from another dataset, `evaluate.test_on`): its classes are matched to the
    detector's by name (`classes.detector_labels`), detection covers every image and the curves too; unknown
    generators are reported under `unseen`. Without it the data must have the detector's classes
    (its own test split), and generators held out of training are reported apart from detection.
    Images stream from the memory-mapped split one batch at a time; what stays in memory is a few
    numbers per image (class probabilities, labels, the table), never the pixels."""
    images, table = load_split(processed, "test")
    names = table["label_name"].to_numpy()
    if cross:
        mapping = detector_labels(sorted(set(names)), detector.classes)  # REAL 0, seen generators, unseen -1
        labels = np.array([mapping[n] for n in names], dtype=int)
    else:
        test_classes(detector, load_manifest(processed))
        labels = table["label"].to_numpy()
    classes = detector.classes
    probs = class_probs(detector, images, batch_size, desc=f"{name} test")
    threshold = decision_threshold(detector.threshold, params.evaluate.threshold)  # the saved one, if any
    result = metrics.evaluate_classes(classes, labels, names, probs, threshold, params.evaluate.bootstrap_samples,
                                      params.seed, files=table["file"].tolist(), include_unseen=cross)
    seen = labels >= 0  # attribution: the trained classes; held-out generators apart
    scored = np.ones_like(seen) if cross else seen
    p = p_fake(probs)
    write_score_plots(plots_dir, is_fake(names)[scored], p[scored], threshold, name)
    if not cross or (len(classes) > 2 and seen.any()):
        write_attribution_plots(plots_dir, classes, labels[seen], probs[seen], name)
    write_predictions(plots_dir / "predictions.csv", table.assign(label=labels), probs, classes)
    return result


_CSV_ROWS = 100_000  # predictions.csv is written this many rows at a time


def write_predictions(path: Path, table: pd.DataFrame, probs: np.ndarray, classes: Sequence[str]) -> None:
    """The test table (file, label = the detector's class index or -1, label_name) with `p_fake` and, with
    several generators, `p_<CLASS>` per class; written in chunks, so a large split needs no copy of it all."""
    p = p_fake(probs)
    with open(path, "w", newline="") as f:
        for start in range(0, max(len(table), 1), _CSV_ROWS):
            end = start + _CSV_ROWS
            columns = {"p_fake": np.round(p[start:end], 6)}
            if len(classes) > 2:
                columns |= {f"p_{c}": np.round(probs[start:end, k], 6) for k, c in enumerate(classes)}
            table.iloc[start:end].assign(**columns).to_csv(f, header=start == 0, index_label="index")


def score_robustness(detector: Detector, params: Params, clean: dict[str, Any], processed: Path, raw_images: Path,
                     metrics_file: Path, plots_dir: Path) -> dict[str, dict[str, Any]]:
    """The test split's originals (under `raw_images`) of the trained classes perturbed per
    `evaluate.robustness`: writes `metrics_file` and `plots_dir` (CSV for DVC, PNG for the report)."""
    _, table = load_split(processed, "test")
    table = table[table["label"] >= 0]  # as the clean detection metrics: held-out generators are reported apart
    results = evaluate_robustness(
        detector, raw_images, table["file"].tolist(), is_fake(table["label_name"]), params.evaluate.robustness,
        decision_threshold(detector.threshold, params.evaluate.threshold), params.seed, params.evaluate.batch_size,
        params.preprocess.max_image_pixels,
    )
    write_json(metrics_file, results)
    write_robustness_plots(plots_dir, summary_table(clean, results))
    return results


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# What MLflow gets per test set and model (the full results, with intervals, are in metrics/test/<name>.json).
SET_METRICS = ("accuracy", "balanced_accuracy", "accuracy_real", "accuracy_fake", "roc_auc", "average_precision",
               "tpr_at_fpr_1", "tpr_at_fpr_5")
SET_GENERATOR_METRICS = ("roc_auc", "flagged_fake")


def mlflow_test_set_metrics(name: str, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`test_<name>_<metric>` (fine-tuned) and `zeroshot_<name>_<metric>` for `SET_METRICS`, and per generator
    `..._generator_<G>_{roc_auc,flagged_fake}` (seen) or `..._unseen_<G>_...`: 16 + 4 x generators keys."""
    out: dict[str, float] = {}
    for model, prefix in (("finetuned", f"test_{name}_"), ("zeroshot", f"zeroshot_{name}_")):
        result = results[model]
        out |= {f"{prefix}{k}": float(result[k]) for k in SET_METRICS}
        for group, tag in (("per_generator", "generator"), ("unseen", "unseen")):
            for g, row in result.get(group, {}).items():
                key = f"{prefix}{tag}_{_metric_name(g)}"
                out |= {f"{key}_{k}": float(row[k]) for k in SET_GENERATOR_METRICS if k in row}
    return out


def mlflow_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flatten a metrics dict for MLflow: `<prefix>accuracy`, `<prefix>accuracy_ci_low`, `<prefix>tp` ..."""
    out = {f"{prefix}{k}": float(result[k]) for k in metrics.SCALARS}
    for k, (lo, hi) in result.get("ci95", {}).items():
        out[f"{prefix}{k}_ci_low"], out[f"{prefix}{k}_ci_high"] = lo, hi
    out.update({f"{prefix}{k}": float(v) for k, v in result["confusion"].items()})
    if att := result.get("attribution"):
        out |= {f"{prefix}attribution_{k}": float(att[k]) for k in ("accuracy", "macro_f1")}
        for k, (lo, hi) in att.get("ci95", {}).items():
            out[f"{prefix}attribution_{k}_ci_low"], out[f"{prefix}attribution_{k}_ci_high"] = lo, hi
    for group in ("per_generator", "unseen"):
        for g, row in result.get(group, {}).items():
            key = f"{prefix}{'unseen' if group == 'unseen' else 'generator'}_{_metric_name(g)}"
            out |= {f"{key}_{k}": float(row[k]) for k in ("flagged_fake", "roc_auc", "attribution_recall") if k in row}
    return out


def _metric_name(name: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, _ - . only)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def mlflow_robustness_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`robust_<perturbation>_<metric>` for the headline metrics of each perturbation."""
    return {f"robust_{name}_{k}": float(r[k]) for name, r in results.items()
            for k in ("accuracy", "roc_auc", "f1", "ece")}
