"""End to end: the demo pipeline (`dvc repro`, synthetic data, tiny CLIP) in a temporary copy of the project."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from aigi import demo

pytestmark = pytest.mark.e2e


def _repro(project: Path, env: dict, *args: str) -> tuple[list[str], str]:
    """Run `dvc repro`; return the stages that ran and the output."""
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", *args], cwd=project, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return re.findall(r"Running stage '(\w+)'", res.stdout), res.stdout


def _runs(uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project copied into a fresh git repo with the demo params; the first `dvc repro` already run."""
    tmp = tmp_path_factory.mktemp("e2e")
    project = tmp / "project"
    demo.prepare(ROOT, project)
    env = demo.stage_env(ROOT)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    ran, _ = _repro(project, env)
    # Commit the results, as a user would, so `dvc metrics diff` has a baseline.
    subprocess.run([*demo.GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*demo.GIT, "commit", "-q", "-m", "baseline"], cwd=project, check=True)
    return project, env, ran


def test_first_repro_runs_every_stage(project):
    _, _, ran = project
    assert ran == ["download", "preprocess", "zeroshot", "finetune", "evaluate", "explain", "report"]


def test_metrics_and_fine_tuning_beats_zero_shot(project):
    root, _, _ = project
    zs = json.loads((root / "metrics" / "zeroshot.json").read_text())
    ft = json.loads((root / "metrics" / "eval.json").read_text())
    for m in (zs, ft):
        assert {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion", "ci95"} <= set(m)
        assert sum(m["confusion"].values()) == m["n"] == 400
    assert ft["accuracy"] >= zs["accuracy"] + 0.2, (zs["accuracy"], ft["accuracy"])
    assert set(ft["per_content_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                            "ship", "truck"}
    robust = json.loads((root / "metrics" / "robustness.json").read_text())
    assert list(robust) == ["jpeg_q90", "jpeg_q70", "jpeg_q50", "jpeg_q30", "blur_sigma0.5", "blur_sigma1",
                            "blur_sigma2", "rescale_0.75", "rescale_0.5"]
    assert all(r["n"] == 400 and 0 <= r["accuracy"] <= 1 and "ci95" in r for r in robust.values())
    sal = json.loads((root / "metrics" / "saliency.json").read_text())
    assert sal["n"] == 400 and list(sal["border_share"]["finetuned"]) == ["all", "REAL", "FAKE"]
    assert all(0 <= v <= 1 for shares in sal["border_share"].values() for v in shares.values())
    for path in ("plots/eval/roc.csv", "plots/eval/confusion.csv", "plots/zeroshot/pr.csv",
                 "plots/robustness/robustness.csv", "plots/robustness/robustness.png",
                 "plots/train/loss.csv", "plots/train/accuracy.csv", "models/finetuned/detector.json",
                 "plots/explain/grid.png",
                 "data/raw/SOURCE.json", "data/processed/manifest.json"):
        assert (root / path).is_file(), path
    assert not (root / "models" / "checkpoints" / "finetune.pt").exists()  # only declared outs remain


def test_report_is_self_contained(project):
    root, _, _ = project
    md = (root / "reports" / "report.md").read_text()
    html = (root / "reports" / "report.html").read_text()
    assert "Zero-shot vs fine-tuned" in md and "| accuracy |" in md
    for section in ("## Data", "## Robustness (fine-tuned)", "| blur_sigma2 |", "## Accuracy per subject",
                    "## Where the models look (Grad-CAM)", "assets/saliency-grid.png",
                    "## Most confident mistakes", "models:/aigi-demo-detector@newest", "## Params"):
        assert section in md, section
    assert "data:image/png;base64," in html
    assert not re.search(r"<img[^>]+src=\"(?!data:)", html)


def test_mlflow_run_holds_params_metrics_and_model(project):
    root, env, _ = project
    runs = _runs(env["MLFLOW_TRACKING_URI"], "aigi-demo")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == json.loads((root / "models" / "run.json").read_text())["run_id"]
    p = run.data.params
    assert p["finetune.method"] == "contrastive" and p["model.arch"] == "aigi-tiny" and p["seed"] == "42"
    m = run.data.metrics
    assert {"zeroshot_accuracy", "test_accuracy", "test_roc_auc", "zeroshot_roc_auc", "val_accuracy"} <= set(m)
    assert len(run.data.tags["git_commit"]) == 40
    assert run.data.tags["dvc_data_version"].startswith("md5:")
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [h.step for h in history] == list(range(1, 7))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"finetuned", "plots", "report", "metrics"} <= artifacts
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "finetuned")}
    assert "finetuned/head.safetensors" in model_files and "finetuned/clip" in model_files
    assert {"robust_jpeg_q50_accuracy", "robust_blur_sigma2_roc_auc", "test_saliency_border_share_FAKE",
            "zeroshot_saliency_border_share"} <= set(m)
    assert "plots/explain/grid.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots/explain")}
    version = client.get_model_version_by_alias("aigi-demo-detector", "newest")
    assert int(version.version) == 1 and version.run_id == run.info.run_id


def test_dvc_plots_render(project):
    root, env, _ = project
    res = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert not out.get("errors"), out.get("errors")
    plots = out["data"]
    for name in ("Training loss", "Training accuracy", "ROC (zero-shot vs fine-tuned)",
                 "Precision-recall (zero-shot vs fine-tuned)", "plots/eval/confusion.csv",
                 "plots/zeroshot/confusion.csv", "Robustness (fine-tuned accuracy per perturbation)"):
        assert plots[name][0]["type"] == "vega" and plots[name][0]["content"]["data"]["values"], name


def test_second_repro_does_nothing_and_adds_no_run(project):
    root, env, _ = project
    ran, _ = _repro(root, env)
    assert ran == []
    assert len(_runs(env["MLFLOW_TRACKING_URI"], "aigi-demo")) == 1


def test_renaming_the_experiment_or_changing_robustness_keeps_the_model_and_its_version(project):
    import mlflow
    import yaml

    root, env, _ = project
    original = (root / "params.yaml").read_text()
    p = yaml.safe_load(original)
    p["mlflow"]["experiment"] = "aigi-demo-renamed"
    p["evaluate"]["robustness"]["rescale"] = [0.5]
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    try:
        ran, _ = _repro(root, env)
        assert ran == ["evaluate", "report"]  # no retraining: same weights, same registry version, alias kept
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        assert [int(v.version) for v in client.search_model_versions("name = 'aigi-demo-detector'")] == [1]
        assert int(client.get_model_version_by_alias("aigi-demo-detector", "newest").version) == 1
    finally:
        (root / "params.yaml").write_text(original)
    assert "finetune" not in _repro(root, env)[0]  # back to the baseline (DVC's run cache may restore it)


def test_changing_a_finetune_param_reruns_only_its_descendants(project):
    root, env, _ = project
    res = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "finetune.epochs=2"], cwd=root,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = re.findall(r"Running stage '(\w+)'", res.stdout)
    assert ran == ["finetune", "evaluate", "explain", "report"]
    runs = _runs(env["MLFLOW_TRACKING_URI"], "aigi-demo")
    assert len(runs) == 2
    show = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert show.returncode == 0 and "metrics/eval.json" in show.stdout and "metrics/saliency.json" in show.stdout
    diff = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stderr[-2000:]
    changed = json.loads(diff.stdout)
    assert "brier" in changed["metrics/eval.json"] and "metrics/zeroshot.json" not in changed
    import mlflow

    newest = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias("aigi-demo-detector", "newest")
    assert int(newest.version) == 2 and newest.run_id == max(runs, key=lambda r: r.info.start_time).info.run_id



@pytest.fixture(scope="module")
def multigen(tmp_path_factory):
    """`make demo-multigen` in a temporary copy: three synthetic generators, VAE held out of training."""
    tmp = tmp_path_factory.mktemp("e2e-multigen")
    project = tmp / "project"
    demo.prepare(ROOT, project, demo.generator_overrides(ROOT, ["GAN", "DIFFUSION", "VAE"], ["VAE"]))
    env = demo.stage_env(ROOT)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    _repro(project, env)
    return project, env


def test_multigen_demo_attributes_generators_and_reports_the_unseen_one(multigen):
    root, env = multigen
    manifest = json.loads((root / "data" / "processed" / "manifest.json").read_text())
    assert manifest["classes"] == ["REAL", "DIFFUSION", "GAN"] and manifest["unseen_generators"] == ["VAE"]
    assert json.loads((root / "models" / "finetuned" / "detector.json").read_text())["classes"] == manifest["classes"]
    ft = json.loads((root / "metrics" / "eval.json").read_text())
    att = ft["attribution"]
    assert att["accuracy"] >= 0.6 and att["ci95"]["accuracy"][0] > 1 / 3, att  # chance: 1/3
    assert sum(sum(row.values()) for row in att["confusion"].values()) == ft["n"] == 300
    assert set(ft["per_generator"]) == {"DIFFUSION", "GAN"} and set(ft["unseen"]) == {"VAE"}
    assert ft["unseen"]["VAE"]["n"] == 100 and "roc_auc_ci95" in ft["unseen"]["VAE"]
    zs = json.loads((root / "metrics" / "zeroshot.json").read_text())
    assert att["accuracy"] >= zs["attribution"]["accuracy"] + 0.2
    md = (root / "reports" / "report.md").read_text()
    for section in ("## Attribution: which generator made it", "## Detection per generator", "## Unseen generators",
                    "| VAE | VAE |"):
        assert section in md, section
    # The registered model answers with the generator and a probability per class.
    test = json.loads((root / "data" / "raw" / "SOURCE.json").read_text())
    assert "GAN" in test["classes"]
    images = sorted((root / "data" / "raw" / "images" / "test" / "GAN").iterdir())[:4]
    res = subprocess.run([sys.executable, "-m", "aigi.cli", "predict", *map(str, images), "--model",
                          str(root / "models" / "finetuned")], cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0] == "path,p_fake,label,generator,p_REAL,p_DIFFUSION,p_GAN,error"
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root, env=env,
                           capture_output=True, text=True)
    assert plots.returncode == 0 and not json.loads(plots.stdout).get("errors")
    assert json.loads(plots.stdout)["data"]["plots/eval/attribution_confusion.csv"][0]["content"]["data"]["values"]
