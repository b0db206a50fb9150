"""bench/gpu.py, the device script of issue 19, on the CPU with the tiny model, so that it cannot rot
before a GPU is lent: its JSON and table, and (e2e) every path end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_path_writes_the_labelled_json_and_table(tmp_path):
    bench = load_script()
    rc = bench.main(["--out", str(tmp_path), "--tiny", "--only", "zeroshot_forward", "--budget-s", "0.2"])
    assert rc == 0
    result = json.loads((tmp_path / "cpu-tiny.json").read_text())
    assert "NOT a GPU figure" in result["label"] and result["model"] == "aigi-tiny"
    assert set(result["rows"]) == {"zeroshot_forward"}
    row = result["rows"]["zeroshot_forward"]
    assert row["img_s"] > 0 and row["flops_per_image"] > 1e6 and row["tflops"] > 0
    assert row["share_of_peak"] is None and row["peak_gpu_gib"] is None  # no peak and no GPU on a CPU
    where = row["where"]
    shares = [where[k] for k in ("kernels_share", "h2d_share", "d2h_share", "host_python_idle_share")]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) == pytest.approx(1, abs=0.05)
    assert "zeroshot_forward" in (tmp_path / "cpu-tiny.md").read_text()


def test_a_failing_path_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    bench = load_script()

    def broken(self):
        raise RuntimeError("CUDA error: out of memory\n  at somewhere")

    monkeypatch.setattr(bench.Bench, "explain", broken)
    rc = bench.main(["--out", str(tmp_path), "--tiny", "--only", "explain_gradcam", "zeroshot_forward",
                     "--budget-s", "0.2"])
    rows = json.loads((tmp_path / "cpu-tiny.json").read_text())["rows"]
    assert rc == 1 and rows["explain_gradcam"]["error"] == "RuntimeError: CUDA error: out of memory at somewhere"
    assert rows["zeroshot_forward"]["img_s"] > 0


@pytest.mark.e2e  # every path on the tiny model: about a minute on 2 shared cores
def test_every_path_runs_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.loads((tmp_path / "cpu-tiny.json").read_text())["rows"]
    assert set(rows) == {"train_full", "train_contrastive", "zeroshot_forward", "explain_gradcam",
                         "predict_files_32px", "predict_files_12mp", "evaluate_with_robustness"}
    assert all(r.get("img_s", 0) > 0 and "where" in r for r in rows.values()), rows
