"""Detection metrics for P(fake) scores and, with several generators, attribution metrics; with seeded
bootstrap confidence intervals.

Detection: FAKE (any generator) is the positive class (label 1). scikit-learn computes the point estimates; expected
calibration error is the usual equal-width-bin estimate. The bootstrap is vectorised: a resample
is a vector of counts per image, so every metric of many resamples is a few matrix products and
cumulative sums (exactly what scikit-learn gives on the resampled arrays, see the tests), instead of
thousands of scikit-learn calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from aigi.cifake import per_content_class
from aigi.classes import REAL, is_fake, p_fake

SCALARS = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece", "brier")
ECE_BINS = 15
_BOOTSTRAP_CELLS = 4_000_000  # resamples x images held in memory at once


def _confidence_bins(p_fake: np.ndarray, bins: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin index, confidence and predicted class of each image, for the decision at `threshold`.

    The confidence is the probability the model gives the class it is scored as deciding (FAKE when
    p_fake >= threshold), so ECE measures the calibration of the same decision as accuracy and F1.
    It ranges over [min(t, 1 - t), 1]: the equal-width bins span that range (at t = 0.5, [0.5, 1])."""
    pred = (p_fake >= threshold).astype(int)
    conf = np.where(pred == 1, p_fake, 1 - p_fake)
    edges = np.linspace(min(threshold, 1 - threshold), 1.0, bins + 1)
    return np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1), conf, pred


def expected_calibration_error(y: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5, bins: int = ECE_BINS
                               ) -> float:
    """ECE of the decided class's confidence at `threshold` (see `_confidence_bins`)."""
    which, conf, pred = _confidence_bins(p_fake, bins, threshold)
    correct = (pred == y).astype(float)
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
        "ece": expected_calibration_error(y, p_fake, threshold),
        "brier": float(skm.brier_score_loss(y, p_fake)),
    }


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def resample_metrics(y: np.ndarray, p_fake: np.ndarray, threshold: float, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every scalar metric for each row of `weights` (B×N: how often each image is in a resample)."""
    w = weights.astype(np.float64)
    yf = y.astype(np.float64)
    pred = (p_fake >= threshold).astype(np.float64)
    n = w.sum(axis=1)
    tp, fp, fn = w @ (pred * yf), w @ (pred * (1 - yf)), w @ ((1 - pred) * yf)
    out = {
        "accuracy": _ratio(n - fp - fn, n),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": _ratio(w @ (p_fake - yf) ** 2, n),
    }
    which, conf, calib_pred = _confidence_bins(p_fake, ECE_BINS, threshold)
    onehot = np.eye(ECE_BINS)[which]  # N×bins
    correct = (calib_pred == y).astype(np.float64)
    out["ece"] = _ratio(np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * conf[:, None])).sum(axis=1), n)

    # Ranking metrics: group images by distinct score (ties count half for AUC, as scikit-learn does).
    order = np.argsort(p_fake, kind="stable")
    scores = p_fake[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    pos = np.add.reduceat(w[:, order] * yf[order], starts, axis=1)  # B×G, ascending score
    neg = np.add.reduceat(w[:, order] * (1 - yf[order]), starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    both = (total_pos > 0) & (total_neg > 0)
    neg_below = np.cumsum(neg, axis=1) - neg
    out["roc_auc"] = _ratio((pos * (neg_below + 0.5 * neg)).sum(axis=1), total_pos * total_neg, np.nan)
    # Average precision: sum over thresholds (descending) of recall gain x precision at that threshold.
    tp_at = np.cumsum(pos[:, ::-1], axis=1)
    fp_at = np.cumsum(neg[:, ::-1], axis=1)
    precision_at = _ratio(tp_at, tp_at + fp_at)
    out["average_precision"] = _ratio((pos[:, ::-1] * precision_at).sum(axis=1), total_pos, np.nan)
    out["roc_auc"] = np.where(both, out["roc_auc"], np.nan)
    out["average_precision"] = np.where(both, out["average_precision"], np.nan)
    return out


def _percentiles(draws: np.ndarray, level: float = 0.95) -> list[float]:
    return [float(np.nanpercentile(draws, q)) for q in ((1 - level) / 2 * 100, (1 + level) / 2 * 100)]


def _resample_counts(rng: np.random.Generator, n: int, samples: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples as rows of counts per item (B×n), in chunks that bound memory."""
    chunk = max(1, _BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        idx = rng.integers(0, n, (rows, n)) + (np.arange(rows) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)


def bootstrap_intervals(
    y: np.ndarray, p_fake: np.ndarray, threshold: float, samples: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap interval of each scalar metric (resampling images with replacement)."""
    draws: dict[str, list[np.ndarray]] = {k: [] for k in SCALARS}
    for counts in _resample_counts(np.random.default_rng(seed), len(y), samples):
        for k, v in resample_metrics(y, p_fake, threshold, counts).items():
            draws[k].append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for k in SCALARS:
        values = np.concatenate(draws[k])
        if np.isnan(values).all():
            continue
        out[k] = [float(np.nanpercentile(values, lo)), float(np.nanpercentile(values, hi))]
    return out


def evaluate(
    y: np.ndarray, p_fake: np.ndarray, threshold: float, bootstrap: int, seed: int,
    files: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything `metrics/*.json` holds: scalars, their 95% intervals, the confusion matrix and,
    when the file names carry it, accuracy per content class."""
    y = np.asarray(y, dtype=int)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    pred = (p_fake >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    out: dict[str, Any] = scalar_metrics(y, p_fake, threshold)
    out["n"] = len(y)
    out["threshold"] = threshold
    out["confusion"] = {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    if bootstrap:
        out["ci95"] = bootstrap_intervals(y, p_fake, threshold, bootstrap, seed)
    if files is not None and (by_subject := per_content_class(files, y, p_fake, threshold)):
        out["per_content_class"] = by_subject
    return out


# ---- several generators ------------------------------------------------------------------------------------


def _accuracy_macro_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N-way accuracy and macro-F1 (over every class, 0 for a class never seen nor predicted, as
    scikit-learn with zero_division=0) of confusion matrices B×C×C (actual × predicted)."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    actual, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    n = actual.sum(axis=1)
    return _ratio(tp.sum(axis=1), n), _ratio(2 * tp, actual + predicted).mean(axis=1)


def attribution(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], bootstrap: int, seed: int
) -> dict[str, Any]:
    """N-way metrics of the argmax over all classes (REAL included) against the true class index."""
    labels = np.asarray(labels, dtype=int)
    pred = probs.argmax(axis=1)
    c = len(classes)
    cm = skm.confusion_matrix(labels, pred, labels=list(range(c)))
    accuracy, macro_f1 = (float(v[0]) for v in _accuracy_macro_f1(cm[None].astype(np.float64)))
    precision, recall, _, support = skm.precision_recall_fscore_support(
        labels, pred, labels=list(range(c)), zero_division=0)
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]), "n": int(support[k])}
                      for k, name in enumerate(classes)},
        "confusion": {actual: {p: int(cm[i, j]) for j, p in enumerate(classes)} for i, actual in enumerate(classes)},
    }
    if bootstrap:
        # A resample's confusion matrix is its counts summed per (actual, predicted) cell.
        cell = labels * c + pred
        draws = [_accuracy_macro_f1(np.stack([np.bincount(cell, w, c * c) for w in counts]).reshape(-1, c, c))
                 for counts in _resample_counts(np.random.default_rng(seed), len(labels), bootstrap)]
        out["ci95"] = {"accuracy": _percentiles(np.concatenate([d[0] for d in draws])),
                       "macro_f1": _percentiles(np.concatenate([d[1] for d in draws]))}
    return out


def generator_detection(
    label_names: np.ndarray, p_fake: np.ndarray, generators: Sequence[str], threshold: float, bootstrap: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per generator: its images' share flagged as fake, and the ROC-AUC of its images against the REAL ones
    (P(fake) as the score), each with a bootstrap interval over the REAL + generator images."""
    label_names = np.asarray(label_names, dtype=object)
    real = label_names == REAL
    out = {}
    for g in generators:
        mask = real | (label_names == g)
        y, p = (label_names[mask] == g).astype(int), p_fake[mask]
        row: dict[str, Any] = {"n": int(y.sum()), "flagged_fake": float((p[y == 1] >= threshold).mean())}
        if row["n"] and len(np.unique(y)) == 2:
            row["roc_auc"] = float(skm.roc_auc_score(y, p))
        if bootstrap and row["n"]:
            ci = bootstrap_intervals(y, p, threshold, bootstrap, seed)
            row["flagged_fake_ci95"] = ci["recall"]  # recall of this generator's images = share flagged
            if "roc_auc" in ci:
                row["roc_auc_ci95"] = ci["roc_auc"]
        out[g] = row
    return out


def evaluate_classes(
    classes: Sequence[str], labels: np.ndarray, label_names: Sequence[str], probs: np.ndarray, threshold: float,
    bootstrap: int, seed: int, files: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`metrics/*.json` for a detector over `classes`: detection (as `evaluate`) on the images of the
    trained classes; with more than two classes, `attribution` and `per_generator`; and `unseen`
    (detection only) for test images of generators held out of training (label -1)."""
    labels = np.asarray(labels, dtype=int)
    names = np.asarray(label_names, dtype=object)
    p = p_fake(probs)
    seen = labels >= 0
    out = evaluate(is_fake(names[seen]), p[seen], threshold, bootstrap, seed,
                   files=None if files is None else [f for f, s in zip(files, seen, strict=True) if s])
    if len(classes) > 2:
        att = attribution(labels[seen], probs[seen], classes, bootstrap, seed)
        out["attribution"] = att
        out["per_generator"] = generator_detection(names[seen], p[seen], classes[1:], threshold, bootstrap, seed)
        for g, row in out["per_generator"].items():
            row["attribution_recall"] = att["per_class"][g]["recall"]
    if (~seen).any():
        unseen = sorted(set(names[~seen]), key=str.lower)
        real = names == REAL
        out["unseen"] = generator_detection(names[real | ~seen], p[real | ~seen], unseen, threshold, bootstrap, seed)
    return out
