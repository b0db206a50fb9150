"""Scoring writes where its caller says: the library owns no project path."""

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from aigi import params
from aigi.data import preprocess
from aigi.data.synthetic import write_synthetic
from aigi.errors import AigiError
from aigi.evaluation import mlflow_test_set_metrics, score_robustness, score_test_set, score_test_split
from aigi.model import TINY, create_detector
from aigi.params import PreprocessParams


def test_scores_go_to_the_given_paths(tmp_path, monkeypatch, tiny_prompts):
    write_synthetic(tmp_path / "raw", 8, 4, seed=0)
    preprocess.run(tmp_path / "raw", tmp_path / "processed", PreprocessParams(
        train_per_class="all", test_per_class="all", val_fraction=0.2, workers=1), 0, 64)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    p = params.parse({"evaluate": {"bootstrap_samples": 0, "robustness": {
        "jpeg_quality": [50], "blur_sigma": [], "rescale": [], "bootstrap_samples": 0}}})
    detector = create_detector(TINY, "none", tiny_prompts, torch.device("cpu"))
    out = tmp_path / "out"
    result = score_test_split(detector, p, "eval", 16, tmp_path / "processed", out / "m" / "eval.json", out / "plots")
    assert json.loads((out / "m" / "eval.json").read_text())["accuracy"] == result["accuracy"]
    assert (out / "plots" / "predictions.csv").is_file() and (out / "plots" / "roc.csv").is_file()
    score_robustness(detector, p, result, tmp_path / "processed", tmp_path / "raw", out / "m" / "robust.json",
                     out / "robust")
    assert (out / "m" / "robust.json").is_file() and (out / "robust" / "robustness.csv").is_file()
    assert not list(cwd.iterdir())  # nothing written to the working directory's metrics/ or plots/


def test_a_test_set_from_another_dataset_maps_its_classes_by_name(tmp_path, tiny_prompts):
    """REAL -> 0, a generator the detector knows -> seen, any other -> unseen (-1): detection covers them all."""
    write_synthetic(tmp_path / "raw", 4, 6, seed=0, generators=["FAKE", "GAN"])
    preprocess.run(tmp_path / "raw", tmp_path / "processed", PreprocessParams(
        train_per_class="all", test_per_class="all", val_fraction=0.25, workers=1), 0, 64)
    p = params.parse({"evaluate": {"bootstrap_samples": 10}})
    detector = create_detector(TINY, "none", tiny_prompts, torch.device("cpu"))  # REAL, FAKE
    with pytest.raises(AigiError, match="differ from the data's"):  # its own test split must have its classes
        score_test_set(detector, p, "other", 16, tmp_path / "processed", tmp_path / "plots", cross=False)
    result = score_test_set(detector, p, "other", 16, tmp_path / "processed", tmp_path / "plots")
    assert result["n"] == 18  # detection: REAL, the seen FAKE and the unseen GAN
    assert result["confusion"]["tn"] + result["confusion"]["fp"] == 6
    assert set(result["per_generator"]) == {"FAKE"} and result["per_generator"]["FAKE"]["seen"] is True
    assert set(result["unseen"]) == {"GAN"} and result["unseen"]["GAN"]["seen"] is False
    assert result["unseen"]["GAN"]["n"] == 6 and "attribution" not in result
    predictions = pd.read_csv(tmp_path / "plots" / "predictions.csv")
    assert dict(zip(predictions["label_name"], predictions["label"], strict=True)) == {"REAL": 0, "FAKE": 1, "GAN": -1}
    assert len(pd.read_csv(tmp_path / "plots" / "confusion.csv")) == 18  # the curves cover every image too

    keys = mlflow_test_set_metrics("other", {"finetuned": result, "zeroshot": result})
    assert len(keys) == 16 + 4 * 2  # 8 per model, and 2 per generator and model
    assert {"test_other_tpr_at_fpr_1", "zeroshot_other_balanced_accuracy", "test_other_generator_FAKE_roc_auc",
            "zeroshot_other_unseen_GAN_flagged_fake"} <= set(keys)


class _MeanColour(torch.nn.Module):
    """A stand-in detector: logits from the mean red of each image, for a large scoring run in no time."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.register_buffer("mean", torch.zeros(1))
        self.slopes = torch.linspace(-1, 1, len(classes))
        self.threshold = None  # no saved decision threshold: evaluate.threshold

    def inference_model(self, dtype, compiled):  # as Detector's: what maps pixels to logits
        return self

    def forward(self, pixels):
        return pixels[..., 0].float().mean(dim=(1, 2))[:, None] / 255 * self.slopes[None]


def test_scoring_a_large_many_generator_set_never_holds_its_images(tmp_path):
    """50 generators (48 unseen by the detector), 5,100 images: peak memory stays far below the images' size."""
    names = ["REAL", *(f"G{g:02d}" for g in range(50))]
    per_class, size = 100, 64
    folder = tmp_path / "processed"
    folder.mkdir()
    images = np.lib.format.open_memmap(folder / "test.npy", "w+", np.uint8, (per_class * len(names), size, size, 3))
    rng = np.random.default_rng(0)
    for k in range(len(names)):  # each generator a little redder than REAL
        images[k * per_class:(k + 1) * per_class] = rng.integers(0, 200, (per_class, size, size, 3)) + 40 * (k > 0)
    images.flush()
    del images
    labels = np.repeat(np.arange(len(names)), per_class)
    pd.DataFrame({"file": [f"test/{names[k]}/{i}.png" for i, k in enumerate(labels)], "label": labels,
                  "label_name": np.array(names)[labels]}).to_csv(folder / "test.csv", index=False)
    p = params.parse({"evaluate": {"bootstrap_samples": 20}})
    detector = _MeanColour(["REAL", "G00", "G01"])
    tracemalloc.start()
    try:
        result = score_test_set(detector, p, "big", 256, folder, tmp_path / "plots")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    nbytes = len(labels) * size * size * 3
    assert peak < nbytes / 4, f"peak {peak:,} bytes for {nbytes:,} bytes of images"
    assert result["n"] == len(labels) and len(result["unseen"]) == 48 and set(result["per_generator"]) == {"G00", "G01"}
    assert result["roc_auc"] > 0.9
