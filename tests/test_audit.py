"""The shortcut audit: metadata features read from headers, JPEG quality from the quantisation tables,
and the cross-validated AUC that flags a dataset whose container gives its labels away."""

import io

import numpy as np
import pytest
from conftest import write_images
from container_leak import write_container_leak
from PIL import Image

from aigi import audit
from aigi.errors import AigiError


@pytest.mark.parametrize("quality", [5, 30, 50, 75, 90, 96, 100])
def test_jpeg_quality_is_recovered_from_the_quantisation_tables(quality):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=quality)
    with Image.open(buf) as img:
        assert audit.jpeg_quality(img.quantization) == quality


def test_file_meta_reads_the_header(tmp_path):
    img = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    img.save(tmp_path / "a.jpg", quality=80, progressive=True, subsampling="4:4:4", icc_profile=b"\0" * 128)
    img.save(tmp_path / "b.png")
    jpg, png = audit.file_meta(tmp_path / "a.jpg"), audit.file_meta(tmp_path / "b.png")
    assert (jpg.format, jpg.jpeg_quality, jpg.subsampling, jpg.progressive, jpg.icc, jpg.exif) == (
        "JPEG", 80, "4:4:4", 1, 1, 0)
    assert (jpg.width, jpg.height, jpg.mode) == (30, 20, "RGB")
    assert jpg.bytes_per_pixel == pytest.approx((tmp_path / "a.jpg").stat().st_size / 600)
    assert (png.format, png.jpeg_quality, png.subsampling, png.progressive) == ("PNG", 0, "none", 0)


def test_container_leak_is_flagged_with_format_as_the_cause(tmp_path):
    root = write_container_leak(tmp_path / "raw", 30, 10)
    result = audit.audit(root, threshold=0.75, folds=5, max_per_class="all", seed=0)
    row = result["generators"]["FAKE"]
    assert row["roc_auc"] > 0.99 and row["flagged"]
    assert row["n_real"] == row["n_fake"] == 40
    # Several features give it away alone (format, quality, subsampling); the container is among the top.
    assert row["feature_auc"]["format"] > 0.99 and row["feature_auc"][row["top_feature"]] > 0.99
    assert row["feature_auc"]["width"] == 0.5  # all 32x32: size says nothing
    assert len(result["warnings"]) == 1 and "preprocess.jpeg_align" in result["warnings"][0]
    assert result["classes"]["REAL"]["format"] == {"JPEG": 40} and result["classes"]["FAKE"]["format"] == {"PNG": 40}


def test_same_container_for_every_class_is_chance(tmp_path):
    for split, n in (("train", 30), ("test", 10)):
        for k, name in enumerate(("REAL", "FAKE")):
            write_images(tmp_path / "raw" / split / name, n, (32, 32), "png", seed=10 * k + len(split))
    result = audit.audit(tmp_path / "raw", max_per_class=25, seed=0)
    row = result["generators"]["FAKE"]
    assert row["n_real"] == row["n_fake"] == 25  # sampled per class
    assert not row["flagged"] and row["roc_auc"] < 0.75 and result["warnings"] == []


def test_sizes_that_differ_per_class_are_flagged_as_size(tmp_path):
    write_images(tmp_path / "raw" / "train" / "REAL", 20, (40, 48), "png")
    write_images(tmp_path / "raw" / "train" / "GAN", 20, (32, 32), "png", seed=1)
    row = audit.audit(tmp_path / "raw", folds=4)["generators"]["GAN"]
    assert row["flagged"] and row["top_feature"] in ("width", "height") and row["folds"] == 4


def test_missing_real_is_one_clear_line(tmp_path):
    write_images(tmp_path / "raw" / "train" / "FAKE", 3)
    with pytest.raises(AigiError, match="no REAL class"):
        audit.audit(tmp_path / "raw")


def test_the_stage_writes_its_json_and_warns_in_one_line(tmp_path, monkeypatch, capsys):
    import json
    import runpy
    import sys

    from conftest import ROOT

    from aigi import paths

    root = write_container_leak(tmp_path / "data" / "raw" / "leaky" / "images", 12, 4)
    monkeypatch.setattr(paths, "raw_images", lambda name: tmp_path / "data" / "raw" / name / "images", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("audit: {folds: 3}\n")
    monkeypatch.setattr(sys, "argv", ["stages/audit.py", "leaky"])
    runpy.run_path(str(ROOT / "stages" / "audit.py"), run_name="__main__")
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "metrics" / "audit" / "leaky.json").read_text())
    assert saved["dataset"] == "leaky" and saved["generators"]["FAKE"]["flagged"] and saved["folds"] == 3
    assert [line for line in out.splitlines() if line.startswith("warning: audit: FAKE vs REAL")] and root.is_dir()
    assert not list((tmp_path / "metrics" / "audit").glob("*.partial"))
