"""Grad-CAM saliency: shape and sanity of the maps, that they point at a local fingerprint after training,
the border-share metric, the per-class grid and the synthetic source's artefact region."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from aigi import saliency
from aigi.data.images import to_model_input
from aigi.data.synthetic import SIZE, write_synthetic
from aigi.errors import AigiError
from aigi.model import TINY, create_detector
from aigi.params import ExplainParams, FinetuneParams, parse
from aigi.train import train

CPU = torch.device("cpu")
PROMPTS = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}


pytestmark = pytest.mark.usefixtures("one_thread")


def _split(root, split):
    images, labels = [], []
    for label, name in enumerate(("REAL", "FAKE")):
        for f in sorted((root / split / name).glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(label)
    return to_model_input(images, 64), np.array(labels)


@pytest.fixture(scope="module")
def corner_model(tmp_path_factory):
    """aigi-tiny trained on synthetic data whose FAKE fingerprint sits in the top-left quarter only."""
    root = tmp_path_factory.mktemp("corner")
    write_synthetic(root, 200, 40, seed=0, artifact_region="corner")
    (train_x, train_y), (test_x, test_y) = _split(root, "train"), _split(root, "test")
    detector = create_detector(TINY, "none", PROMPTS, CPU, seed=0)
    cfg = FinetuneParams(method="full", epochs=8, lr=1e-3, batch_size=32, weight_decay=0.01, warmup_fraction=0.1,
                         early_stopping_patience=0, augment_flip=False)  # a flip would move the corner
    result = train(detector, (train_x, train_y), (test_x, test_y), cfg, PROMPTS, seed=0)
    return detector, test_x, test_y, result


def test_heatmaps_have_the_input_size_and_point_at_the_fingerprint(corner_model):
    detector, images, labels, result = corner_model
    assert result.final_val["val_accuracy"] >= 0.9  # learnt the fingerprint; otherwise the rest is moot
    fake = images[labels == 1]
    maps = saliency.saliency_maps(detector, fake, batch_size=16)
    assert maps.shape == fake.shape[:3] and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert (maps.reshape(len(maps), -1).std(axis=1) > 0).mean() > 0.9  # not constant
    quarter = np.zeros((64, 64), dtype=bool)
    quarter[:32, :32] = True
    share = maps[:, quarter].sum(axis=1) / maps.sum(axis=(1, 2)).clip(1e-12)
    assert np.median(share) > 0.6  # a quarter of the area, most of the mass (uniform: 0.25)
    # batching changes nothing
    np.testing.assert_allclose(saliency.saliency_maps(detector, fake[:5], batch_size=2), maps[:5], atol=1e-5)


def test_border_share_is_defined_on_the_outer_eighth():
    size = 64
    border = saliency.border_mask(size)
    assert border[:8].all() and border[:, -8:].all() and not border[8:56, 8:56].any()
    maps = np.stack([border.astype(np.float32), (~border).astype(np.float32), np.ones((size, size), np.float32),
                     np.zeros((size, size), np.float32)])
    share = saliency.border_share(maps)
    np.testing.assert_allclose(share[:3], [1.0, 0.0, 1 - 0.75**2])
    assert np.isnan(share[3])
    assert saliency.uniform_border_share(size) == pytest.approx(0.4375)
    summary = saliency.border_summary(maps, ["REAL", "gen-b", "Gen-A", "REAL"], 0.125)
    assert list(summary) == ["all", "REAL", "Gen-A", "gen-b"]  # REAL first, then case-insensitive order
    assert summary["REAL"] == 1.0 and summary["all"] == pytest.approx((1 + 0 + 0.4375) / 3, abs=1e-4)


def test_examples_per_class_most_confident_first_for_several_generators():
    predictions = pd.DataFrame({
        "index": range(7),
        "label_name": ["REAL", "REAL", "REAL", "sd", "sd", "Midjourney", "unseen-gen"],
        "p_fake": [0.1, 0.3, 0.9, 0.99, 0.2, 0.6, 0.8],
    })
    picks = saliency.pick_examples(predictions, 0.5, 2)
    assert list(picks) == ["REAL", "Midjourney", "sd", "unseen-gen"]
    assert picks["REAL"] == {"correct": [0, 1], "mistakes": [2]}
    assert picks["sd"] == {"correct": [3], "mistakes": [4]}
    assert picks["unseen-gen"] == {"correct": [6], "mistakes": []}


def test_grid_and_summary_for_both_models(corner_model, tmp_path):
    detector, images, labels, _ = corner_model
    predictions = pd.DataFrame({"index": range(len(images)), "label": labels,
                                "label_name": np.where(labels == 1, "FAKE", "REAL"),
                                "p_fake": np.linspace(0.01, 0.99, len(images))})
    zeroshot = create_detector(TINY, "none", PROMPTS, CPU, seed=0)
    models = {"fine-tuned": (detector, predictions), "zero-shot": (zeroshot, predictions)}
    saliency.grid_figure(models, images, 0.5, 2, 16, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as png:
        assert png.width > 2 * 16 * 64 and png.height > 2 * 64  # 2 models × 16 tiles, at least 1 px per pixel
    table = predictions.drop(columns="p_fake")
    result = saliency.summarise(models, images, table, ExplainParams(max_images=30), seed=0)
    assert result["n"] == 30 and result["uniform_border_share"] == 0.4375
    assert set(result["border_share"]) == {"finetuned", "zeroshot"}
    assert list(result["border_share"]["finetuned"]) == ["all", "REAL", "FAKE"]
    keys = saliency.mlflow_metrics(result)
    assert {"test_saliency_border_share", "test_saliency_border_share_FAKE",
            "zeroshot_saliency_border_share_REAL"} <= set(keys)


def test_synthetic_artifact_region_confines_the_fingerprint(tmp_path):
    for region in ("full", "corner", "center"):
        write_synthetic(tmp_path / region, 1, 1, seed=3, artifact_region=region)
    def fake(region):
        return np.asarray(Image.open(tmp_path / region / "train" / "FAKE" / "0000.png"), dtype=np.int16)
    half = SIZE // 2
    assert np.array_equal(fake("corner")[:half, :half], fake("full")[:half, :half])
    assert np.array_equal(fake("center")[8:24, 8:24], fake("full")[8:24, 8:24])
    # outside its region the image is the plain scene (no period-2 row pattern): far from the full fingerprint
    assert np.abs(fake("corner")[half:] - fake("full")[half:]).mean() > 5
    with pytest.raises(AigiError, match=r"datasets\.cifake\.synthetic_artifact_region"):
        parse({"datasets": {"cifake": {"source": "synthetic", "synthetic_artifact_region": "edge"}}})


def test_saliency_needs_a_vit():
    detector = create_detector(TINY, "none", PROMPTS, CPU, seed=0)
    detector.clip.visual.transformer = None
    with pytest.raises(AigiError, match="ViT"):
        saliency.saliency_maps(detector, np.zeros((1, 64, 64, 3), np.uint8))
