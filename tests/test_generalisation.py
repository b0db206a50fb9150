"""Train on one dataset, test on many: the test@<name> and summary stages as processes (tiny CLIP, CPU),
the report's Generalisation section and the train x test matrix of `aigi compare --train-on`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import ROOT

from aigi import compare, demo
from aigi.data import preprocess
from aigi.data.synthetic import write_synthetic
from aigi.params import PreprocessParams


def _stage(root: Path, tracking: str, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MLFLOW_TRACKING_URI": tracking,
           "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> tuple[Path, str, str]:
    """A project trained on CIFAKE-like data (the tiny REAL/FAKE detector) with a second dataset, `other`
    (REAL, FAKE and a GAN the detector never saw), preprocessed test-only; and the model's MLflow run."""
    root = tmp_path_factory.mktemp("project")
    raw = root / "raw-other"
    write_synthetic(raw, 2, 6, seed=1, generators=["FAKE", "GAN"])
    preprocess.run(raw, root / "data" / "processed" / "other", PreprocessParams(
        train_per_class="all", test_per_class="all", val_fraction=0.5, workers=1), 0, 64)
    shutil.copytree(tiny_model_dir, root / "models" / "finetuned")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.create_experiment("generalisation-test", artifact_location=(root / "mlartifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id
    (root / "models" / "run.json").write_text(json.dumps({"run_id": run_id}))
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": {"arch": "aigi-tiny", "pretrained": "none", "device": "cpu"},
        "datasets": {"cifake": {"source": "synthetic"}, "other": {"source": "synthetic"}},
        "evaluate": {"bootstrap_samples": 20, "test_on": ["other"]},
        "mlflow": {"experiment": "generalisation-test"},
    }))
    return root, tracking, run_id


def test_test_stage_scores_both_detectors_and_logs_per_set_keys(project):
    root, tracking, run_id = project
    res = _stage(root, tracking, "test.py", "other")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "test@other: roc_auc=" in res.stdout and "unseen generators: GAN" in res.stdout
    results = json.loads((root / "metrics" / "test" / "other.json").read_text())
    assert set(results) == {"finetuned", "zeroshot"}
    for model in ("finetuned", "zeroshot"):
        r = results[model]
        assert r["n"] == 18 and "tpr_at_fpr_1" in r["ci95"] and "balanced_accuracy" in r
        assert r["per_generator"]["FAKE"]["seen"] is True and r["unseen"]["GAN"]["seen"] is False
        for name in ("roc.csv", "pr.csv", "confusion.csv", "predictions.csv", "curves.png"):
            assert (root / "plots" / "test" / "other" / model / name).is_file(), (model, name)
    logged = mlflow.MlflowClient(tracking).get_run(run_id).data.metrics
    keys = {k for k in logged if k.startswith(("test_other_", "zeroshot_other_"))}
    assert len(keys) == 16 + 4 * 2  # as the README says: 16 + 4 per generator
    assert logged["test_other_roc_auc"] == pytest.approx(results["finetuned"]["roc_auc"])
    artifacts = {a.path for a in mlflow.MlflowClient(tracking).list_artifacts(run_id, "plots/test/other/finetuned")}
    assert "plots/test/other/finetuned/roc.csv" in artifacts
    assert "plots/test/other/finetuned/predictions.csv" not in artifacts  # a row per image stays in DVC

    res = _stage(root, tracking, "test.py", "elsewhere")
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("error: elsewhere is not in "
                                                                                  "evaluate.test_on")


def test_summary_adds_auc_and_tpr_columns_per_test_set(project):
    root, tracking, run_id = project
    if not (root / "metrics" / "test" / "other.json").is_file():
        assert _stage(root, tracking, "test.py", "other").returncode == 0
    own = {"accuracy": 0.9, "roc_auc": 0.95, "f1": 0.9, "ece": 0.05}
    for name in ("zeroshot", "eval"):
        (root / "metrics" / f"{name}.json").write_text(json.dumps(own))
    res = _stage(root, tracking, "summary.py")
    assert res.returncode == 0, res.stderr[-2000:]
    headline = json.loads((root / "metrics" / "summary.json").read_text())
    other = json.loads((root / "metrics" / "test" / "other.json").read_text())
    assert {"acc_zs", "acc_ft", "auc_zs", "auc_ft", "f1_zs", "f1_ft", "ece_zs", "ece_ft"} < set(headline)
    assert headline["auc_ft_other"] == round(other["finetuned"]["roc_auc"], 4)
    assert headline["tpr1_zs_other"] == round(other["zeroshot"]["tpr_at_fpr_1"], 4)
    logged = mlflow.MlflowClient(tracking).get_run(run_id).data.metrics
    assert {"auc_ft_other", "auc_zs_other", "tpr1_ft_other", "tpr1_zs_other", "acc_ft"} <= set(logged)


# ---- the train x test matrix ---------------------------------------------------------------------------------

def test_matrix_queues_one_experiment_per_training_set_tested_on_the_others():
    sets = compare.matrix_sets(["cifake", "multigen"], ["multigen", "genimage"])
    assert sets == ["cifake", "multigen", "genimage"]
    assert compare.matrix_commands(["cifake", "multigen"], sets, ["finetune.epochs=2"]) == [
        ["exp", "run", "--queue", "-n", "train-cifake", "-S", "train_on=cifake",
         "-S", "evaluate.test_on=[multigen,genimage]", "-S", "finetune.epochs=2"],
        ["exp", "run", "--queue", "-n", "train-multigen", "-S", "train_on=multigen",
         "-S", "evaluate.test_on=[cifake,genimage]", "-S", "finetune.epochs=2"],
    ]


# ROC-AUC of a detector trained on the row's set, tested on the column's; TPR@1%FPR is AUC - 0.5.
FAKE_AUC = {("x", "x"): 0.95, ("x", "y"): 0.7, ("x", "z"): 0.65, ("y", "y"): 0.9, ("y", "x"): 0.8, ("y", "z"): 0.6}
FAKE_STAGE = """import json, pathlib, sys
auc = {auc!r}
train, tested = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]
result = lambda a: {{"roc_auc": a, "tpr_at_fpr_1": round(a - 0.5, 4)}}
out = {{"finetuned": result(auc[(train, tested)]), "zeroshot": result(0.55)}}
pathlib.Path("metrics/test").mkdir(parents=True, exist_ok=True)
if len(sys.argv) > 2:
    pathlib.Path(f"metrics/test/{{tested}}.json").write_text(json.dumps(out))
else:
    pathlib.Path("metrics/eval.json").write_text(json.dumps(out["finetuned"]))
    pathlib.Path("metrics/zeroshot.json").write_text(json.dumps(out["zeroshot"]))
"""
FAKE_PIPELINE = {"stages": {
    "evaluate": {"cmd": "python stage.py ${train_on}", "deps": ["stage.py"], "params": ["train_on"],
                 "metrics": ["metrics/eval.json", "metrics/zeroshot.json"]},
    "test": {"foreach": "${evaluate.test_on}", "do": {"cmd": "python stage.py ${train_on} ${item}",
                                                      "deps": ["stage.py"], "params": ["train_on"],
                                                      "metrics": ["metrics/test/${item}.json"]}},
}}


def test_matrix_runs_as_dvc_experiments_and_reads_them_back(tmp_path):
    """The real `dvc exp run --queue` / `--run-all` / `exp show --json` round trip, on a pipeline that only writes
    the metrics files the matrix reads (the models are the e2e test's business)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "stage.py").write_text(FAKE_STAGE.format(auc=FAKE_AUC))
    (project / "dvc.yaml").write_text(yaml.safe_dump(FAKE_PIPELINE, sort_keys=False))
    (project / "params.yaml").write_text(yaml.safe_dump({"train_on": "x", "evaluate": {"test_on": ["z"]}}))
    subprocess.run([*demo.GIT, "init", "-q"], cwd=project, check=True)
    assert compare.dvc(project, "init", "-q", capture=True).returncode == 0
    text = compare.run_matrix(project, ["x", "y"])
    finetuned, zeroshot = text.split("\n\n")
    lines = finetuned.splitlines()
    assert lines[0].split()[-3:] == ["x", "y", "z"]
    assert lines[1].split() == ["x", "0.950", "/", "0.450", "0.700", "/", "0.200", "0.650", "/", "0.150"]
    assert lines[2].split() == ["y", "0.800", "/", "0.300", "0.900", "/", "0.400", "0.600", "/", "0.100"]
    assert zeroshot.splitlines()[1].split()[1:4] == ["0.550", "/", "0.050"]
    assert "zero-shot" in zeroshot.splitlines()[0]
    # The experiments stay: the matrix can be printed again without running anything.
    assert compare.show_matrix(project, ["x", "y"], ["x", "y", "z"]) == text


def test_matrix_of_missing_experiments_says_how_to_run_them():
    show = [{"rev": "workspace", "experiments": None},
            {"rev": "abc", "experiments": [{"name": "train-x", "revs": [{"data": {"metrics": {
                "metrics/eval.json": {"data": {"roc_auc": 0.9, "tpr_at_fpr_1": float("nan")}},
                "metrics/test/y.json": {"error": {"type": "FileNotFoundError"}}}}}]}]}]
    matrix = compare.matrix_from_show(show, ["x", "y"])
    assert set(matrix) == {"x"} and set(matrix["x"]) == {"x"}  # an unreadable file is no cell
    assert compare.format_matrix(matrix, ["x", "y"]).splitlines()[1].split() == ["x", "0.900", "/", "–", "–"]


def test_adding_a_test_set_touches_only_its_own_stage_summary_and_report():
    """Static wiring of dvc.yaml: which stages see `evaluate.test_on`, and who reads the folder metrics/test."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    test = stages["test"]
    assert test["foreach"] == "${evaluate.test_on}" and test["do"]["cmd"] == "python stages/test.py ${item}"
    assert "data/processed/${item}" in test["do"]["deps"] and test["do"]["metrics"] == ["metrics/test/${item}.json"]
    readers = {name for name, s in stages.items()
               if {"evaluate", "evaluate.test_on"} & {str(p) for p in s.get("do", s).get("params", [])}}
    assert readers == {"summary", "report"}  # not evaluate, not the other test@ stages: nothing re-trains or re-scores
    for name in ("summary", "report"):
        assert "metrics/test" in stages[name]["deps"]
    assert "metrics/test/${train_on}.json" in stages["evaluate"]["outs"]  # the folder is never empty
