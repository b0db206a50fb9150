"""Scoring writes where its caller says: the library owns no project path."""

import json

import torch

from aigi import params
from aigi.data import preprocess
from aigi.data.synthetic import write_synthetic
from aigi.evaluation import score_robustness, score_test_split
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
