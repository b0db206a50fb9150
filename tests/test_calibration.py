"""Temperature scaling and the threshold for a false-positive budget (aigi.calibration)."""

import numpy as np
import pytest
import torch

from aigi import calibration
from aigi.metrics import expected_calibration_error


def _overconfident(n: int, seed: int, classes: int = 2, scale: float = 6.0):
    """Logits of a model whose true log-odds are `z` but which reports `scale`·z: right on average,
    far too sure. Labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (n, classes))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return scale * z, labels


@pytest.mark.parametrize("classes", [2, 4])
def test_temperature_recovers_the_overconfidence_and_lowers_ece(classes):
    logits, labels = _overconfident(4000, 0, classes)
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(6.0, rel=0.15)
    assert calibration.nll(logits, labels, t) < calibration.nll(logits, labels) - 0.5
    test_logits, test_labels = _overconfident(4000, 1, classes)
    y = (test_labels != 0).astype(int)
    before = 1 - calibration.softmax(test_logits)[:, 0]
    after = 1 - calibration.softmax(test_logits, t)[:, 0]
    assert expected_calibration_error(y, after) < expected_calibration_error(y, before) / 3
    # the decision never changes: argmax is invariant to T
    assert (calibration.softmax(test_logits, t).argmax(1) == test_logits.argmax(1)).all()


def test_temperature_of_a_calibrated_model_is_about_one():
    logits, labels = _overconfident(4000, 2, scale=1.0)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.15)


def test_target_fpr_threshold_gives_the_target_on_new_images():
    rng = np.random.default_rng(0)
    val_real = rng.beta(2, 5, 5000)  # REAL scores; fakes would sit higher, irrelevant to the FPR
    chosen = calibration.threshold_for_fpr(val_real, 0.01)
    assert chosen.note == "" and chosen.n_real == 5000 and chosen.val_fpr <= 0.01
    assert (val_real >= chosen.value).sum() == 50  # exactly the budget on validation
    test_real = rng.beta(2, 5, 20000)
    assert (test_real >= chosen.value).mean() == pytest.approx(0.01, abs=0.004)
    looser = calibration.threshold_for_fpr(val_real, 0.05)
    assert looser.value < chosen.value and (test_real >= looser.value).mean() == pytest.approx(0.05, abs=0.008)


def test_ties_never_push_the_validation_fpr_over_the_budget():
    scores = np.array([0.9, 0.9, 0.9, *np.linspace(0, 0.5, 97)])
    chosen = calibration.threshold_for_fpr(scores, 0.02)
    assert chosen.val_fpr <= 0.02 and chosen.value > 0.9


def test_too_few_real_images_for_the_budget_is_one_clear_line():
    chosen = calibration.threshold_for_fpr(np.linspace(0.1, 0.6, 40), 0.01)
    assert chosen.value > 0.6 and chosen.val_fpr == 0
    assert "needs at least 100 validation REAL images" in chosen.note and "there are 40" in chosen.note
    assert "\n" not in chosen.note


def test_reliability_bins_count_every_image():
    logits, labels = _overconfident(500, 3)
    p = 1 - calibration.softmax(logits)[:, 0]
    bins = calibration.reliability_bins((labels != 0).astype(int), p)
    assert sum(bins["count"]) == 500 and all(0.5 <= c <= 1 for c in bins["confidence"])
    assert all(0 <= a <= 1 for a in bins["accuracy"])


def test_calibrate_then_load_applies_the_temperature(tiny_model_dir, tmp_path):
    from aigi.inference import class_probs
    from aigi.model import load_detector, save_detector

    detector, meta = load_detector(tiny_model_dir)
    with torch.no_grad():
        detector.head.weight.mul_(40.0)  # a random-weights model made wildly over-confident
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, detector.image_size, detector.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 300)
    raw = calibration.logits_of(detector, images, 64)
    out = calibration.calibrate(detector, images, labels, "temperature", 0.05, 64)
    np.testing.assert_array_equal(calibration.logits_of(detector, images, 64), raw)  # the detector is untouched
    t = out["temperature"]
    assert t > 1 and out["calibration"]["val_after"]["nll"] < out["calibration"]["val_before"]["nll"]
    assert 0 < out["threshold"] <= 1 and out["calibration"]["val_fpr_at_threshold"] <= 0.05
    save_detector(detector, tmp_path / "m", {**meta, "temperature": t, "threshold": out["threshold"]})
    loaded, _ = load_detector(tmp_path / "m")
    np.testing.assert_allclose(class_probs(loaded, images, 64), calibration.softmax(raw, t), atol=1e-5)
    assert loaded.threshold == out["threshold"]
    kept = calibration.calibrate(detector, images, labels, "none", None, 64)
    assert kept["temperature"] == 1.0 and kept["threshold"] is None


def test_reliability_plots_write_a_csv_per_curve_and_a_png(tmp_path):
    import pandas as pd

    from aigi.plots import write_reliability_plots

    logits, labels = _overconfident(300, 4)
    y = (labels != 0).astype(int)
    curves = {"before": calibration.reliability_bins(y, 1 - calibration.softmax(logits)[:, 0]),
              "after": calibration.reliability_bins(y, 1 - calibration.softmax(logits, 6.0)[:, 0])}
    write_reliability_plots(tmp_path, curves, "validation")
    frame = pd.read_csv(tmp_path / "reliability_after.csv")
    assert list(frame.columns) == ["bin", "confidence", "accuracy", "count"] and frame["count"].sum() == 300
    assert (tmp_path / "reliability_before.csv").is_file() and (tmp_path / "reliability.png").stat().st_size > 0
