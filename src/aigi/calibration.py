"""The operating point: temperature scaling and the decision threshold for a false-positive budget.

Both are fitted on the validation split after training and saved with the model (detector.json), so
`aigi predict`, the pyfunc and `mlflow models serve` use them without being told.

- Temperature scaling (Guo et al. 2017): one scalar T divides every logit, chosen to minimise the
  validation negative log-likelihood. The argmax (and so attribution) never changes, only how
  confident the probabilities are. The NLL is convex in 1/T, so a bracketing search finds the
  optimum. T is saved in detector.json and `load_detector` divides the head's weights and bias by it,
  so every consumer of a saved model gets calibrated probabilities through the code path it already
  has, while the saved weights stay exactly the trained ones.
- Threshold for a false-positive budget (`evaluate.target_fpr`): the P(fake) at or above which
  at most that share of the validation REAL images lie. With fewer validation REAL images than
  about 1/target the budget cannot be resolved (the threshold is then just above the highest REAL
  score, an FPR of 0 on validation and an unknown one beyond it): one line says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aigi.device import autocast
from aigi.metrics import ECE_BINS, _confidence_bins, expected_calibration_error
from aigi.model import Detector

BETA_RANGE = (1e-3, 1e3)  # 1/T searched over this (log scale)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (`logits` N×C, `labels` N), any C.

    Golden-section search on log(1/T): the NLL is convex in 1/T (a log-sum-exp minus a linear term),
    so this is its global minimum within `BETA_RANGE`, to ~1e-9 relative.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("temperature scaling needs at least one validation image")
    f = lambda log_beta: nll(logits * math.exp(log_beta), labels)  # noqa: E731
    lo, hi = math.log(BETA_RANGE[0]), math.log(BETA_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(math.exp(-(lo + hi) / 2))


@dataclass(frozen=True)
class Threshold:
    value: float
    n_real: int  # validation REAL images it was chosen on
    val_fpr: float  # their share at or above it
    note: str = ""  # one line when the budget cannot be resolved


def threshold_for_fpr(p_fake_real: np.ndarray, target_fpr: float) -> Threshold:
    """The P(fake) at or above which at most `target_fpr` of these (validation REAL) scores lie.

    Between the k-th and (k+1)-th highest REAL score, k = floor(target · n): midway, so the
    threshold sits in the gap rather than on an image. Ties at the gap are kept below it (FPR never
    over the budget on validation).
    """
    scores = np.sort(np.asarray(p_fake_real, dtype=np.float64))[::-1]
    n = len(scores)
    if n == 0:
        raise ValueError("evaluate.target_fpr needs validation REAL images; the validation split has none")
    k = math.floor(target_fpr * n + 1e-9)
    if k >= n:
        value = float(scores[-1])
    elif k == 0 or scores[k - 1] == scores[k]:
        value = float(np.nextafter(scores[k], np.inf))
    else:
        value = float((scores[k - 1] + scores[k]) / 2)
    value = min(max(value, 1e-12), 1.0)
    note = ""
    need = math.ceil(1 / target_fpr - 1e-9)
    if n < need:
        note = (f"evaluate.target_fpr={target_fpr:g} needs at least {need} validation REAL images to be resolved, "
                f"there are {n}: the threshold ({value:.4g}) is only 'above every validation REAL image' and the FPR "
                f"it gives on new images is unknown; raise preprocess.train_per_class or preprocess.val_fraction, "
                f"or raise evaluate.target_fpr")
    return Threshold(value, n, float((scores >= value).mean()), note)


@torch.no_grad()
def logits_of(detector: Detector, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Raw class logits (before any softmax) of an N×S×S×3 uint8 array; float64 N×C."""
    detector.eval()
    device = detector.mean.device
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        with autocast(device):
            out.append(detector(batch).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(detector.classes)))


def reliability_bins(y: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5, bins: int = ECE_BINS
                     ) -> dict[str, list]:
    """Reliability diagram data of the detection decision at `threshold`: per confidence bin (the bins
    of ECE) its mean confidence, its accuracy and its count; empty bins omitted."""
    y, p = np.asarray(y, dtype=int), np.asarray(p_fake, dtype=np.float64)
    which, conf, pred = _confidence_bins(p, bins, threshold)
    out: dict[str, list] = {"bin": [], "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        mask = which == b
        if mask.any():
            out["bin"].append(b)
            out["confidence"].append(float(conf[mask].mean()))
            out["accuracy"].append(float((pred[mask] == y[mask]).mean()))
            out["count"].append(int(mask.sum()))
    return out


def calibrate(detector: Detector, val_images: np.ndarray, val_labels: np.ndarray, method: str,
              target_fpr: float | None, batch_size: int, threshold: float = 0.5) -> dict[str, Any]:
    """After training: temperature scaling (`method` temperature | none), then the threshold for `target_fpr`
    (None: keep `threshold`) on the calibrated validation scores. The detector is not changed: `load_detector`
    applies the saved `temperature`.

    Returns what detector.json records (`temperature`, `threshold`, `target_fpr`, `calibration` with the
    validation NLL / ECE / Brier before and after, and `threshold_note`) and the reliability data.
    """
    labels = np.asarray(val_labels, dtype=int)
    logits = logits_of(detector, val_images, batch_size)
    temperature = fit_temperature(logits, labels) if method == "temperature" else 1.0
    y = (labels != 0).astype(int)
    before, after = softmax(logits), softmax(logits, temperature)

    def scores(probs: np.ndarray, t: float) -> dict[str, float]:
        p = 1 - probs[:, 0]
        return {"nll": nll(logits, labels, t), "ece": expected_calibration_error(y, p, threshold),
                "brier": float(np.mean((p - y) ** 2))}

    out: dict[str, Any] = {
        "temperature": temperature, "target_fpr": target_fpr, "threshold": None, "threshold_note": "",
        "calibration": {"method": method, "val_before": scores(before, 1.0), "val_after": scores(after, temperature)},
    }
    if target_fpr is not None:
        chosen = threshold_for_fpr(1 - after[labels == 0, 0], target_fpr)
        out["threshold"], out["threshold_note"] = chosen.value, chosen.note
        out["calibration"]["val_fpr_at_threshold"] = chosen.val_fpr
        out["calibration"]["val_tpr_at_threshold"] = float((1 - after[labels != 0, 0] >= chosen.value).mean())
    decision = out["threshold"] if out["threshold"] is not None else threshold
    out["reliability"] = {"before": reliability_bins(y, 1 - before[:, 0], decision),
                          "after": reliability_bins(y, 1 - after[:, 0], decision)}
    return out


def mlflow_metrics(result: dict[str, Any]) -> dict[str, float]:
    """`calibrate`'s figures as MLflow metrics: temperature, val NLL/ECE/Brier before and after, threshold."""
    cal = result["calibration"]
    out = {"temperature": result["temperature"],
           **{f"val_{k}_{when}": v for when in ("before", "after") for k, v in cal[f"val_{when}"].items()}}
    if result["threshold"] is not None:
        out |= {"decision_threshold": result["threshold"], "val_fpr_at_threshold": cal["val_fpr_at_threshold"],
                "val_tpr_at_threshold": cal["val_tpr_at_threshold"]}
    return out


def decision_threshold(saved: float | None, fallback: float) -> float:
    """The threshold a prediction uses by default: the one saved with the model, else `fallback`
    (evaluate.threshold, or 0.5 outside a project)."""
    return float(saved) if saved is not None else float(fallback)
