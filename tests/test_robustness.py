"""Robustness: perturbations of the original images, before the shared resize, scored per perturbation."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aigi import metrics, robustness
from aigi.data.images import load_rgb, to_model_input
from aigi.errors import AigiError
from aigi.inference import predict_proba
from aigi.model import load_detector
from aigi.params import RobustnessParams
from aigi.plots import write_robustness_plots


def _row_stripes() -> Image.Image:
    """A grey image whose rows alternate by ±40: the period-2 artefact a generator can leave."""
    rows = np.where(np.arange(32) % 2 == 0, 168, 88).astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(rows[:, None, None], 32, axis=1), 3, axis=2))


def _stripe_amplitude(img: Image.Image) -> float:
    a = np.asarray(img, dtype=float)[4:-4, 4:-4, 0]  # ignore the borders
    return float(np.abs(np.diff(a, axis=0)).mean() / 2)


def test_each_perturbation_degrades_fine_detail_by_its_level():
    img = _row_stripes()
    assert _stripe_amplitude(img) == 40
    assert _stripe_amplitude(robustness.blur(2.0)(img)) < _stripe_amplitude(robustness.blur(0.5)(img)) < 40
    assert _stripe_amplitude(robustness.rescale(0.5)(img)) < 5  # below the Nyquist rate: the stripes vanish
    assert _stripe_amplitude(robustness.rescale(0.75)(img)) < 40
    q90 = np.asarray(robustness.jpeg(90)(img), dtype=float)
    q10 = np.asarray(robustness.jpeg(10)(img), dtype=float)
    clean = np.asarray(img, dtype=float)
    assert np.abs(q10 - clean).mean() > np.abs(q90 - clean).mean() > 0
    for pert in robustness.perturbations(RobustnessParams()):
        out = pert.apply(img)
        assert out.size == img.size and out.mode == "RGB", pert.name


def test_names_and_order_follow_params():
    p = RobustnessParams(jpeg_quality=[80], blur_sigma=[0.5, 2], rescale=[0.5])
    assert [x.name for x in robustness.perturbations(p)] == ["jpeg_q80", "blur_sigma0.5", "blur_sigma2", "rescale_0.5"]
    assert robustness.perturbations(RobustnessParams(jpeg_quality=[], blur_sigma=[], rescale=[])) == []


def test_evaluate_robustness_on_raw_files(synthetic_raw, tiny_model_dir, tmp_path):
    detector, _ = load_detector(tiny_model_dir)
    files = sorted(p.relative_to(synthetic_raw).as_posix() for p in (synthetic_raw / "test").rglob("*.png"))
    y = np.array([int("/FAKE/" in f) for f in files])
    params = RobustnessParams(jpeg_quality=[30], blur_sigma=[1.5], rescale=[0.5], bootstrap_samples=50)
    results = robustness.evaluate_robustness(detector, synthetic_raw, files, y, params, 0.5, seed=0, batch_size=8)
    assert list(results) == ["jpeg_q30", "blur_sigma1.5", "rescale_0.5"]
    for r in results.values():
        assert r["n"] == len(files) == 24 and set(r["ci95"]) >= {"accuracy", "roc_auc"}
    assert results["blur_sigma1.5"]["kind"] == "blur" and results["blur_sigma1.5"]["level"] == 1.5
    # The same numbers as perturbing and scoring one by one through the shared resize.
    perturbed = [np.asarray(robustness.blur(1.5)(Image.fromarray(load_rgb(synthetic_raw / f)))) for f in files]
    p_fake = predict_proba(detector, to_model_input(perturbed, detector.image_size), 64)
    assert results["blur_sigma1.5"]["brier"] == pytest.approx(np.mean((p_fake - y) ** 2))

    clean = {k: 0.9 for k in metrics.SCALARS}
    table = robustness.summary_table(clean, results)
    assert list(table["perturbation"]) == ["clean", "jpeg_q30", "blur_sigma1.5", "rescale_0.5"]
    write_robustness_plots(tmp_path / "plots", table)
    csv = pd.read_csv(tmp_path / "plots" / "robustness.csv")
    assert list(csv.columns) == ["perturbation", "kind", "level", "accuracy", "roc_auc"] and len(csv) == 4
    assert (tmp_path / "plots" / "robustness.png").stat().st_size > 5000
    json.dumps(results)  # what metrics/robustness.json holds must serialise


def test_missing_original_is_a_clear_error(synthetic_raw, tiny_model_dir):
    detector, _ = load_detector(tiny_model_dir)
    with pytest.raises(AigiError, match="re-run download and preprocess"):
        robustness.evaluate_robustness(detector, synthetic_raw, ["test/REAL/gone.png"], np.array([0]),
                                       RobustnessParams(), 0.5, 0, 8)


@pytest.mark.parametrize("bad", [{"jpeg_quality": [0]}, {"blur_sigma": [-1]}, {"rescale": [1.5]}, {"rescale": 0.5}])
def test_bad_robustness_params_name_the_key(bad):
    from aigi.params import parse

    with pytest.raises(AigiError, match=rf"evaluate\.robustness\.{next(iter(bad))}"):
        parse({"evaluate": {"robustness": bad}})
