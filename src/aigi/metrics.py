"""Detection metrics for P(fake) scores, with seeded bootstrap confidence intervals.

FAKE is the positive class (label 1). scikit-learn computes what it has; expected calibration
error is the usual equal-width-bin estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

SCALARS = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece", "brier")


def expected_calibration_error(y: np.ndarray, p_fake: np.ndarray, bins: int = 15) -> float:
    """ECE of the predicted class's confidence, equal-width bins over [0.5, 1]."""
    pred = (p_fake >= 0.5).astype(int)
    conf = np.where(pred == 1, p_fake, 1 - p_fake)
    correct = (pred == y).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def scalar_metrics(y: np.ndarray, p_fake: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p_fake >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p_fake)) if both else float("nan"),
        "average_precision": float(skm.average_precision_score(y, p_fake)) if both else float("nan"),
        "ece": expected_calibration_error(y, p_fake),
        "brier": float(skm.brier_score_loss(y, p_fake)),
    }


def bootstrap_intervals(
    y: np.ndarray, p_fake: np.ndarray, threshold: float, samples: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap interval of each scalar metric (resampling images with replacement)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in SCALARS}
    for _ in range(samples):
        idx = rng.integers(0, len(y), len(y))
        for k, v in scalar_metrics(y[idx], p_fake[idx], threshold).items():
            draws[k].append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))] for k, v in draws.items() if v}


def evaluate(y: np.ndarray, p_fake: np.ndarray, threshold: float, bootstrap: int, seed: int) -> dict[str, Any]:
    """Everything `metrics/*.json` holds: scalars, their 95% intervals, the confusion matrix."""
    y = np.asarray(y, dtype=int)
    pred = (p_fake >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    out: dict[str, Any] = scalar_metrics(y, p_fake, threshold)
    out["n"] = len(y)
    out["threshold"] = threshold
    out["confusion"] = {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    if bootstrap:
        out["ci95"] = bootstrap_intervals(y, p_fake, threshold, bootstrap, seed)
    return out
