"""Score a detector on the test split and write its metrics, plots and per-image predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from aigi import metrics
from aigi.classes import from_manifest, is_fake, p_fake
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
    """The test split of `processed`: writes `metrics_file` and `plots_dir` (ROC, PR, confusions,
    predictions.csv); `name` labels the progress bar and the plots."""
    images, table = load_split(processed, "test")
    classes, _ = test_classes(detector, load_manifest(processed))
    labels = table["label"].to_numpy()
    probs = class_probs(detector, images, batch_size, desc=f"{name} test")
    result = metrics.evaluate_classes(classes, labels, table["label_name"].to_numpy(), probs,
                                      params.evaluate.threshold, params.evaluate.bootstrap_samples, params.seed,
                                      files=table["file"].tolist())
    write_json(metrics_file, result)
    seen = labels >= 0  # detection and attribution curves: the trained classes; held-out generators apart
    p = p_fake(probs)
    write_score_plots(plots_dir, is_fake(table["label_name"])[seen], p[seen], params.evaluate.threshold, name)
    write_attribution_plots(plots_dir, classes, labels[seen], probs[seen], name)
    columns = {"p_fake": np.round(p, 6)}
    if len(classes) > 2:
        columns |= {f"p_{c}": np.round(probs[:, k], 6) for k, c in enumerate(classes)}
    table.assign(**columns).to_csv(plots_dir / "predictions.csv", index_label="index")
    return result


def score_robustness(detector: Detector, params: Params, clean: dict[str, Any], processed: Path, raw_images: Path,
                     metrics_file: Path, plots_dir: Path) -> dict[str, dict[str, Any]]:
    """The test split's originals (under `raw_images`) of the trained classes perturbed per
    `evaluate.robustness`: writes `metrics_file` and `plots_dir` (CSV for DVC, PNG for the report)."""
    _, table = load_split(processed, "test")
    table = table[table["label"] >= 0]  # as the clean detection metrics: held-out generators are reported apart
    results = evaluate_robustness(
        detector, raw_images, table["file"].tolist(), is_fake(table["label_name"]), params.evaluate.robustness,
        params.evaluate.threshold, params.seed, params.evaluate.batch_size, params.preprocess.max_image_pixels,
    )
    write_json(metrics_file, results)
    write_robustness_plots(plots_dir, summary_table(clean, results))
    return results


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def summary(zeroshot: dict[str, Any], finetuned: dict[str, Any]) -> dict[str, float]:
    """The headline numbers, zero-shot (`_zs`) next to fine-tuned (`_ft`), for metrics/summary.json and the
    MLflow runs table. Short names keep `dvc exp show` narrow; `acc_`/`auc_` sort first in MLflow's columns."""
    out: dict[str, float] = {}
    for key, name in (("accuracy", "acc"), ("roc_auc", "auc"), ("f1", "f1"), ("ece", "ece")):
        for tag, result in (("zs", zeroshot), ("ft", finetuned)):
            out[f"{name}_{tag}"] = round(float(result[key]), 4)
    for tag, result in (("zs", zeroshot), ("ft", finetuned)):
        if "attribution" in result:  # several generators: which one made the image
            out[f"acc_attr_{tag}"] = round(float(result["attribution"]["accuracy"]), 4)
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
