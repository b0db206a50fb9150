"""What finetune saves with the model (input transform, decision threshold) is what predict and the pyfunc apply."""

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import write_images

from aigi import cli
from aigi.data.images import load_rgb, model_input, to_model_input
from aigi.inference import predict_proba
from aigi.model import load_detector
from aigi.predict import predict_paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("in")
    return [*write_images(tmp, 3, (80, 96), "png"), *write_images(tmp, 2, (40, 40), "png", seed=1)]


def _saved(tiny_model_dir, tmp_path, **meta):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    saved = json.loads((folder / "detector.json").read_text())
    (folder / "detector.json").write_text(json.dumps({**saved, **meta}))
    return folder


def test_predict_applies_the_saved_transform(tiny_model_dir, tmp_path, files):
    detector, _ = load_detector(_saved(tiny_model_dir, tmp_path, resize="crop", jpeg_align=60))
    assert detector.input_transform == {"resize": "crop", "jpeg_quality": 60}
    got = [r["p_fake"] for r in predict_paths(detector, files, batch_size=2)]
    decoded = [load_rgb(f) for f in files]
    want = predict_proba(detector, model_input(decoded, detector.image_size, "crop", 60), 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    plain = predict_proba(detector, to_model_input(decoded, detector.image_size), 8)
    assert np.abs(plain - want).max() > 1e-4  # the transform matters: without it the scores differ


def test_old_models_keep_clips_transform(tiny_model_dir):
    detector, _ = load_detector(tiny_model_dir)
    assert detector.input_transform == {"resize": "shorter_side", "jpeg_quality": None} and detector.threshold is None


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["aigi", "predict", *args, "--format", "jsonl"])
    cli.main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_predict_defaults_to_the_saved_threshold(tiny_model_dir, tmp_path, files, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside a project: no params.yaml
    base = _cli(monkeypatch, capsys, *map(str, files), "--model", str(tiny_model_dir))
    p = sorted(r["p_fake"] for r in base)
    cut = (p[1] + p[2]) / 2  # two images below, three above
    folder = _saved(tiny_model_dir, tmp_path, threshold=cut)
    rows = _cli(monkeypatch, capsys, *map(str, files), "--model", str(folder))
    assert [r["label"] for r in rows] == ["FAKE" if r["p_fake"] >= cut else "REAL" for r in rows]
    assert sorted(r["label"] for r in rows) == ["FAKE"] * 3 + ["REAL"] * 2
    forced = _cli(monkeypatch, capsys, *map(str, files), "--model", str(folder), "--threshold", "0.999999")
    assert {r["label"] for r in forced} == {"REAL"}  # an explicit --threshold wins


def test_pyfunc_uses_the_saved_threshold_and_transform(tiny_model_dir, tmp_path, files):
    from aigi.serving import DetectorModel

    first = DetectorModel()
    first.load_context(SimpleNamespace(artifacts={"detector": str(tiny_model_dir)}))
    p = np.sort(first.predict(None, pd.DataFrame({"image": [f.read_bytes() for f in files]}))["p_fake"].to_numpy())
    cut = float((p[1] + p[2]) / 2)
    model = DetectorModel()
    model.load_context(SimpleNamespace(artifacts={"detector": str(
        _saved(tiny_model_dir, tmp_path, threshold=cut, resize="crop", jpeg_align=60))}))
    out = model.predict(None, pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    detector = model.detector
    want = predict_proba(detector, model_input([load_rgb(f) for f in files], detector.image_size, "crop", 60), 8)
    np.testing.assert_allclose(out["p_fake"], want, atol=1e-6)
    assert list(out["label"]) == ["FAKE" if v >= cut else "REAL" for v in want]
    assert list(model.predict(None, pd.DataFrame({"image": [f.read_bytes() for f in files]}),
                              params={"threshold": 0.999999})["label"]) == ["REAL"] * len(files)


def test_registered_model_defaults_to_the_saved_threshold(tiny_model_dir, tmp_path):
    import mlflow

    from aigi import params, serving

    folder = _saved(tiny_model_dir, tmp_path, threshold=0.123, target_fpr=0.01)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
        p = params.parse({"mlflow": {"registered_model": "thr"}, "evaluate": {"threshold": 0.4}})
        with mlflow.start_run(experiment_id=exp):
            version = serving.log_and_register(folder, p)
        assert version.tags[serving.THRESHOLD_TAG] == "0.123"
        model = mlflow.pyfunc.load_model(f"models:/thr/{version.version}")
        spec = {s.name: s.default for s in model.metadata.get_params_schema().params}
        assert spec == {"threshold": 0.123}  # what `mlflow models serve` uses when a request names none
    finally:
        mlflow.set_tracking_uri(None)
