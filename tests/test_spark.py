"""`aigi predict --spark local[1]`: mlflow.pyfunc.spark_udf over Spark's binaryFile source, end to end on the
tiny model; skipped without pyspark (the `spark` extra) or a Java 17+ runtime."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_images


def _java_major() -> int:
    if not shutil.which("java"):
        return 0
    out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


pytest.importorskip("pyspark", reason='needs the spark extra: pip install -e ".[spark]"')
if _java_major() < 17:
    pytest.skip("needs a Java 17+ runtime", allow_module_level=True)


def test_predict_on_spark_writes_one_parquet_row_per_file(tiny_model_dir, tmp_path, monkeypatch, capfd):
    import pandas as pd

    from aigi import cli, serving
    from aigi.model import load_detector
    from aigi.predict import predict_paths

    good = [*write_images(tmp_path / "in" / "a", 4), *write_images(tmp_path / "in" / "a" / "deep", 2, fmt="jpg",
                                                                   seed=1)]
    broken = tmp_path / "in" / "a" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    (tmp_path / "in" / "a" / "notes.txt").write_text("not an image: not listed")
    globbed = write_images(tmp_path / "in" / "b", 2, (40, 50), seed=2)
    spaced = globbed[1].with_name("999 (10).png")  # CIFAKE's names have spaces and brackets
    globbed[1] = globbed[1].rename(spaced)
    detector, _ = load_detector(tiny_model_dir)
    files = [*good, *globbed]
    expected = {str(r["path"]): r["p_fake"] for r in predict_paths(detector, files)}
    threshold = float(np.median(list(expected.values())))  # saved with the model: the labels split on it
    uri = serving.save_pyfunc(tiny_model_dir, tmp_path / "pyfunc", threshold).as_uri()

    out = tmp_path / "scores.parquet"
    monkeypatch.setattr(sys, "argv", ["aigi", "predict", "--spark", "local[1]", "--partitions", "3", "--model", uri,
                                      "-o", str(out), str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b" / "*.png")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1  # as without --spark: some file could not be read
    err = capfd.readouterr().err
    assert "predict: 9 files scored on local[1]" in err and "1 could not be read" in err
    # three partitions, one Python worker: the detector is built once, not per partition or row
    assert err.count("aigi: loaded the detector") == 1, err[-3000:]

    table = pd.read_parquet(out)
    assert list(table.columns) == ["path", "p_fake", "label", "error"]
    table["path"] = table["path"].str.removeprefix("file:")
    assert sorted(table["path"]) == sorted([*expected, str(broken)])
    rows = table.set_index("path")
    assert rows.loc[str(broken), "error"] == "not a recognised image format" and np.isnan(rows.loc[str(broken),
                                                                                                    "p_fake"])
    scored = rows.drop(str(broken))
    assert (scored["error"] == "").all()
    np.testing.assert_allclose(scored["p_fake"], [expected[p] for p in scored.index], atol=1e-6)
    assert list(scored["label"]) == ["FAKE" if expected[p] >= threshold else "REAL" for p in scored.index]
    assert not list(tmp_path.glob("scores.parquet.partial-*"))


def test_predict_on_spark_refuses_a_missing_path_in_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from aigi import cli

    monkeypatch.setattr(sys, "argv", ["aigi", "predict", "--spark", "local[1]", "--model", str(tiny_model_dir),
                                      "-o", str(tmp_path / "x.parquet"), str(tmp_path / "no-such-folder")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "no-such-folder" in err and "Traceback" not in err, err
    assert not (tmp_path / "x.parquet").exists()
