"""`aigi predict`: files, folders, globs; CSV and JSON lines; unreadable files; local folders and MLflow URIs."""

import csv
import io
import json
import sys

import numpy as np
import pytest
from conftest import write_images
from PIL import Image

from aigi import cli
from aigi.data.images import load_rgb, to_model_input
from aigi.inference import predict_proba
from aigi.model import load_detector
from aigi.predict import expand, predict_paths


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    pngs = write_images(folder / "sub", 3, (48, 40), "png")
    jpgs = write_images(folder, 2, (32, 32), "jpg", seed=1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder, pngs, jpgs


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["aigi", "predict", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_expand_folders_globs_and_missing_files(inputs, tmp_path):
    folder, pngs, jpgs = inputs
    files = expand([str(folder), str(folder / "*.jpg"), str(tmp_path / "missing.png")])
    assert files[:6] == sorted([folder / "broken.png", *jpgs, *pngs])  # recursive, images only
    assert files[6:] == [*jpgs, tmp_path / "missing.png"]


def test_predict_matches_the_preprocess_path_in_batches(tiny_model_dir, inputs):
    _, pngs, jpgs = inputs
    detector, _ = load_detector(tiny_model_dir)
    files = [*pngs, *jpgs]
    rows = list(predict_paths(detector, files, batch_size=2, threshold=0.5))
    expected = predict_proba(detector, to_model_input([load_rgb(f) for f in files], detector.image_size), 64)
    np.testing.assert_allclose([r["p_fake"] for r in rows], expected, atol=1e-6)
    assert [r["label"] for r in rows] == ["FAKE" if p >= 0.5 else "REAL" for p in expected]


def test_cli_csv_reports_unreadable_files_and_exits_1(tiny_model_dir, inputs, monkeypatch, capsys, tmp_path):
    folder, pngs, jpgs = inputs
    code, out, err = _run(monkeypatch, capsys, str(folder), str(tmp_path / "gone.jpg"), "--model", str(tiny_model_dir),
                          "--batch-size", "2")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1
    assert [r["path"] for r in rows] == [str(p) for p in sorted([folder / "broken.png", *jpgs, *pngs])] + [
        str(tmp_path / "gone.jpg")]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5 and all(0 <= float(r["p_fake"]) <= 1 and r["label"] in ("REAL", "FAKE") for r in good)
    assert f"error: {folder / 'broken.png'}: corrupt or truncated image" in err
    assert f"error: {tmp_path / 'gone.jpg'}: file not found" in err
    assert "error: 2 of 7 files could not be read" in err


def test_cli_jsonl_to_file_with_threshold_and_size_limit(tiny_model_dir, inputs, monkeypatch, capsys, tmp_path):
    _, pngs, _ = inputs
    target = tmp_path / "out.jsonl"
    code, out, _ = _run(monkeypatch, capsys, *map(str, pngs), "--model", str(tiny_model_dir), "--format", "jsonl",
                        "-o", str(target), "--threshold", "0.000001")
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert code == 0 and out == ""
    assert [r["path"] for r in rows] == list(map(str, pngs)) and {r["label"] for r in rows} == {"FAKE"}
    assert set(rows[0]) == {"path", "p_fake", "label"}
    code, out, _ = _run(monkeypatch, capsys, str(pngs[0]), "--model", str(tiny_model_dir), "--format", "jsonl",
                          "--max-pixels", "1000")
    assert code == 1 and "decompression-bomb guard" in json.loads(out)["error"]


def test_cli_without_a_model_is_a_clear_error(monkeypatch, capsys, tmp_path, inputs):
    _, pngs, _ = inputs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    code, _, err = _run(monkeypatch, capsys, str(pngs[0]))
    assert code == 1 and "models/finetuned: not a saved aigi model" in err and "Traceback" not in err


def test_several_generators_add_the_generator_and_a_probability_per_class(tiny_multigen_model_dir, inputs, monkeypatch,
                                                                          capsys):
    from conftest import MULTIGEN_CLASSES

    from aigi.inference import class_probs

    _, pngs, jpgs = inputs
    files = [*pngs, *jpgs]
    detector, _ = load_detector(tiny_multigen_model_dir)
    probs = class_probs(detector, to_model_input([load_rgb(f) for f in files], detector.image_size), 64)
    code, out, _ = _run(monkeypatch, capsys, *map(str, files), "--model", str(tiny_multigen_model_dir))
    reader = csv.DictReader(io.StringIO(out))
    rows = list(reader)
    assert code == 0
    assert reader.fieldnames == ["path", "p_fake", "label", "generator", *(f"p_{c}" for c in MULTIGEN_CLASSES), "error"]
    np.testing.assert_allclose([float(r["p_fake"]) for r in rows], 1 - probs[:, 0], atol=1e-6)
    np.testing.assert_allclose([[float(r[f"p_{c}"]) for c in MULTIGEN_CLASSES] for r in rows], probs, atol=1e-6)
    assert [r["generator"] for r in rows] == [MULTIGEN_CLASSES[1 + k] for k in probs[:, 1:].argmax(axis=1)]
    assert [r["label"] for r in rows] == ["FAKE" if p >= 0.5 else "REAL" for p in 1 - probs[:, 0]]


def test_cli_explain_writes_one_png_per_readable_input(tiny_model_dir, inputs, monkeypatch, capsys, tmp_path):
    folder, pngs, jpgs = inputs
    shown = tmp_path / "explain"
    code, out, _ = _run(monkeypatch, capsys, str(folder), "--model", str(tiny_model_dir), "--batch-size", "2",
                        "--explain", str(shown))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1  # broken.png
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5 and all(r["explain"] for r in good) and not any(r["explain"] for r in rows if r["error"])
    written = sorted(shown.iterdir())
    assert sorted(r["explain"] for r in good) == [str(p) for p in written] and len(written) == 5
    for row in good:
        with Image.open(row["explain"]) as png:
            assert png.size == (2 * 256, 256)  # the 64 px input beside its overlay, 4× nearest neighbour
    # same names in two folders do not overwrite each other
    names = {r["path"]: r["explain"] for r in good}
    assert names[str(pngs[0])] != names[str(jpgs[0])]
