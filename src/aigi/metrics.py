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

SCALARS = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece", "brier",
           "balanced_accuracy", "accuracy_real", "accuracy_fake", "tpr_at_fpr_1", "tpr_at_fpr_5")
# TPR at a false-positive budget: key -> the budget (share of the set's REAL images allowed to score as fake).
FPR_BUDGETS = {"tpr_at_fpr_1": 0.01, "tpr_at_fpr_5": 0.05}
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


def allowed_false_positives(n_real: float | np.ndarray, budget: float) -> np.ndarray:
    """How many REAL images may score as fake within the budget: floor(budget x n_real), guarded against
    rounding (0.07 x 100 is 7.000000000000001 in floating point)."""
    return np.floor(np.asarray(n_real, dtype=np.float64) * budget + 1e-9)


def tpr_at_fpr(y: np.ndarray, p_fake: np.ndarray, budget: float) -> float:
    """TPR at a false-positive budget: the share of FAKE images (y = 1) scoring strictly above the
    (k+1)-th highest REAL score, k = floor(budget x n_real) (`allowed_false_positives`).

    That is the lowest threshold at which at most k REAL images are called fake (P(fake) >= t), so
    the largest TPR reachable with FPR <= budget on this set's REAL images: the ROC curve read at
    FPR = budget without interpolation. All REAL may be flagged (k >= n_real): 1.0. No REAL or no
    FAKE images: NaN."""
    real, fake = p_fake[y == 0], p_fake[y == 1]
    if not len(real) or not len(fake):
        return float("nan")
    k = int(allowed_false_positives(len(real), budget))
    if k >= len(real):
        return 1.0
    cut = np.sort(real)[::-1][k]  # the (k+1)-th highest REAL score: the threshold must lie above it
    return float((fake > cut).mean())


def scalar_metrics(y: np.ndarray, p_fake: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p_fake >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    real, fake = y == 0, y == 1
    accuracy_real = float((pred[real] == 0).mean()) if real.any() else float("nan")  # share of REAL called REAL
    accuracy_fake = float((pred[fake] == 1).mean()) if fake.any() else float("nan")  # share of fakes caught
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p_fake)) if both else float("nan"),
        "average_precision": float(skm.average_precision_score(y, p_fake)) if both else float("nan"),
        "ece": expected_calibration_error(y, p_fake, threshold),
        "brier": float(skm.brier_score_loss(y, p_fake)),
        "balanced_accuracy": (accuracy_real + accuracy_fake) / 2,  # NaN unless both kinds are present
        "accuracy_real": accuracy_real,
        "accuracy_fake": accuracy_fake,
        **{key: tpr_at_fpr(y, p_fake, budget) for key, budget in FPR_BUDGETS.items()},
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
    n_fake = w @ yf
    n_real = n - n_fake
    out = {
        "accuracy": _ratio(n - fp - fn, n),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": _ratio(w @ (p_fake - yf) ** 2, n),
        "accuracy_real": _ratio(n_real - fp, n_real, np.nan),
        "accuracy_fake": _ratio(tp, n_fake, np.nan),
    }
    out["balanced_accuracy"] = (out["accuracy_real"] + out["accuracy_fake"]) / 2
    # ECE: per confidence bin, |weighted correct - weighted confidence|; images grouped by bin, so memory is
    # the B×N of the resamples, not N×bins.
    which, conf, calib_pred = _confidence_bins(p_fake, ECE_BINS, threshold)
    by_bin = np.argsort(which, kind="stable")
    bin_starts = np.flatnonzero(np.r_[True, which[by_bin][1:] != which[by_bin][:-1]])
    gap = (calib_pred == y).astype(np.float64)[by_bin] - conf[by_bin]
    out["ece"] = _ratio(np.abs(np.add.reduceat(w[:, by_bin] * gap, bin_starts, axis=1)).sum(axis=1), n)

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
    # TPR at a false-positive budget: thresholds descend through the distinct scores; the feasible ones
    # call at most k REAL images fake (`tpr_at_fpr`), and TP only grows as the threshold falls.
    for key, budget in FPR_BUDGETS.items():
        k = allowed_false_positives(total_neg, budget)[:, None]
        tp_feasible = np.where(fp_at <= k, tp_at, 0.0).max(axis=1)
        out[key] = np.where(both, _ratio(tp_feasible, total_pos, np.nan), np.nan)
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


GENERATOR_METRICS = ("roc_auc", "average_precision", "tpr_at_fpr_1")  # per generator, against the set's REAL


def generator_detection(
    label_names: np.ndarray, p_fake: np.ndarray, generators: Sequence[str], threshold: float, bootstrap: int,
    seed: int, seen: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per generator: n, `seen` (a class the detector was trained on), its images' share flagged as fake,
    and the ROC-AUC, AP and TPR at 1% FPR of its images against the REAL ones (P(fake) as the score), each
    with a bootstrap interval over the REAL + generator images."""
    label_names = np.asarray(label_names, dtype=object)
    real = label_names == REAL
    out = {}
    for g in generators:
        mask = real | (label_names == g)
        y, p = (label_names[mask] == g).astype(int), p_fake[mask]
        row: dict[str, Any] = {"n": int(y.sum()), "seen": seen,
                               "flagged_fake": float((p[y == 1] >= threshold).mean()) if y.any() else float("nan")}
        if row["n"] and len(np.unique(y)) == 2:
            point = scalar_metrics(y, p, threshold)
            row |= {k: point[k] for k in GENERATOR_METRICS}
        if bootstrap and row["n"]:
            ci = bootstrap_intervals(y, p, threshold, bootstrap, seed)
            row["flagged_fake_ci95"] = ci["recall"]  # recall of this generator's images = share flagged
            row |= {f"{k}_ci95": ci[k] for k in GENERATOR_METRICS if k in ci}
        out[g] = row
    return out


def evaluate_classes(
    classes: Sequence[str], labels: np.ndarray, label_names: Sequence[str], probs: np.ndarray, threshold: float,
    bootstrap: int, seed: int, files: Sequence[str] | None = None, include_unseen: bool = False,
) -> dict[str, Any]:
    """`metrics/*.json` for a detector over `classes`: detection (as `evaluate`) on the images of the
    trained classes; with more than two classes, `attribution` and `per_generator`; and `unseen`
    (detection only) for test images of generators the detector was not trained on (label -1).

    `include_unseen` (a test set from another dataset): detection covers every image, seen and unseen
    generators alike ("does it catch those?"), and `per_generator` lists the set's seen generators even
    for a two-class detector. Attribution always covers the seen classes only."""
    labels = np.asarray(labels, dtype=int)
    names = np.asarray(label_names, dtype=object)
    p = p_fake(probs)
    seen = labels >= 0
    scored = np.ones_like(seen) if include_unseen else seen
    out = evaluate(is_fake(names[scored]), p[scored], threshold, bootstrap, seed,
                   files=None if files is None else [f for f, s in zip(files, scored, strict=True) if s])
    present = [g for g in classes[1:] if (names[seen] == g).any()]
    if len(classes) > 2:
        att = attribution(labels[seen], probs[seen], classes, bootstrap, seed)
        out["attribution"] = att
    if len(classes) > 2 or include_unseen:
        out["per_generator"] = generator_detection(names[seen], p[seen], present, threshold, bootstrap, seed)
        if len(classes) > 2:
            for g, row in out["per_generator"].items():
                row["attribution_recall"] = att["per_class"][g]["recall"]
    if (~seen).any():
        unseen = sorted(set(names[~seen]), key=str.lower)
        real = names == REAL
        out["unseen"] = generator_detection(names[real | ~seen], p[real | ~seen], unseen, threshold, bootstrap, seed,
                                            seen=False)
    return out


# ---- the headline ------------------------------------------------------------------------------------------


def summary(zeroshot: dict[str, Any], finetuned: dict[str, Any],
            test_sets: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict[str, float]:
    """The headline numbers, zero-shot (`_zs`) next to fine-tuned (`_ft`), for metrics/summary.json and the
    MLflow runs table. Short names keep `dvc exp show` narrow; `acc_`/`auc_` sort first in MLflow's columns.
    Per set in `test_sets` (name -> metrics/test/<name>.json): `auc_ft_<name>`, `auc_zs_<name>`,
    `tpr1_ft_<name>`, `tpr1_zs_<name>` (ROC-AUC and TPR at 1% FPR)."""
    out: dict[str, float] = {}
    for key, name in (("accuracy", "acc"), ("roc_auc", "auc"), ("f1", "f1"), ("ece", "ece")):
        for tag, result in (("zs", zeroshot), ("ft", finetuned)):
            out[f"{name}_{tag}"] = round(float(result[key]), 4)
    for tag, result in (("zs", zeroshot), ("ft", finetuned)):
        if "attribution" in result:  # several generators: which one made the image
            out[f"acc_attr_{tag}"] = round(float(result["attribution"]["accuracy"]), 4)
    for name, results in (test_sets or {}).items():
        for key, short in (("roc_auc", "auc"), ("tpr_at_fpr_1", "tpr1")):
            for tag, model in (("ft", "finetuned"), ("zs", "zeroshot")):
                out[f"{short}_{tag}_{name}"] = round(float(results[model][key]), 4)
    return out
