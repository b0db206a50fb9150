"""End to end: the demo pipeline (`dvc repro`, synthetic data, tiny CLIP) in a temporary copy of the project."""

import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import browser
import pytest
from conftest import ROOT

from aigi import compare, demo, paramdeps, params, tracking

pytestmark = pytest.mark.e2e


def _repro(project: Path, env: dict, *args: str) -> tuple[list[str], str]:
    """Run `dvc repro`; return the stages that ran and the output."""
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", *args], cwd=project, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return re.findall(r"Running stage '([\w@-]+)'", res.stdout), res.stdout


def _store(project: Path) -> str:
    import yaml

    return yaml.safe_load((project / "params.yaml").read_text())["mlflow"]["tracking_uri"]


def _runs(project: Path, experiment: str = "aigi-demo"):
    import mlflow

    mlflow.set_tracking_uri(_store(project))
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project copied into a fresh git repo with the demo params; the first `dvc repro` already run."""
    tmp = tmp_path_factory.mktemp("e2e")
    project = tmp / "project"
    # The copy's params name its store (as `aigi demo` writes them); no MLFLOW_TRACKING_URI needed.
    demo.prepare(ROOT, project, {"mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"}})
    env = demo.stage_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env[params.RECORD_ENV] = str(tmp / "params-read")  # each stage notes the params it reads (issue 17.1)
    ran, _ = _repro(project, env)
    # Commit the results, as a user would, so `dvc metrics diff` has a baseline.
    subprocess.run([*demo.GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*demo.GIT, "commit", "-q", "-m", "baseline"], cwd=project, check=True)
    return project, env, ran


def test_first_repro_runs_every_stage(project):
    _, _, ran = project
    assert "audit@cifake" in ran  # the shortcut audit, beside preprocess: the order between them is DVC's
    assert [r for r in ran if r != "audit@cifake"] == ["download@cifake", "preprocess@cifake", "zeroshot", "finetune",
                                                      "evaluate", "summary", "explain", "report"]


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
                 "data/raw/cifake/SOURCE.json", "data/processed/cifake/manifest.json"):
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
    root, _, _ = project
    runs = _runs(root)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == json.loads((root / "models" / "run.json").read_text())["run_id"]
    p = run.data.params
    assert p["finetune.method"] == "contrastive" and p["model.arch"] == "aigi-tiny" and p["seed"] == "42"
    m = run.data.metrics
    assert {"zeroshot_accuracy", "test_accuracy", "test_roc_auc", "zeroshot_roc_auc", "accuracy/val"} <= set(m)
    headline = json.loads((root / "metrics" / "summary.json").read_text())
    assert set(headline) == {"acc_zs", "acc_ft", "auc_zs", "auc_ft", "f1_zs", "f1_ft", "ece_zs", "ece_ft"}
    assert all(m[k] == v for k, v in headline.items())
    assert run.info.run_name.startswith("contrastive-aigi-tiny-")
    assert run.data.tags["mlflow.note.content"].startswith("synthetic data (1,080 train / 400 test images")
    assert {(i.tags[0].value, i.dataset.digest) for i in run.inputs.dataset_inputs} == {
        ("training", run.data.tags["dvc_data_version"][4:36]), ("testing", run.data.tags["dvc_data_version"][4:36])}
    assert len(run.data.tags["git_commit"]) == 40
    assert run.data.tags["dvc_data_version"].startswith("md5:")
    import mlflow

    client = mlflow.MlflowClient(_store(root))
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    history = client.get_metric_history(run.info.run_id, "accuracy/val")
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
    assert len(_runs(root)) == 1


def test_adding_a_test_set_fetches_and_preprocesses_only_that_set(project):
    """A second dataset (params.cross-demo.yaml's `other`) in `datasets` and `evaluate.test_on`: only its own
    stages run; nothing is downloaded again or retrained."""
    import yaml

    root, env, _ = project
    original = (root / "params.yaml").read_text()
    cross = yaml.safe_load((ROOT / "params.cross-demo.yaml").read_text())
    p = yaml.safe_load(original)
    p["datasets"]["other"] = cross["datasets"]["other"]
    p["evaluate"]["test_on"] = ["other"]
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        ran, _ = _repro(root, env)
        assert set(ran[:3]) == {"download@other", "audit@other", "preprocess@other"} and not {
            "download@cifake", "preprocess@cifake", "zeroshot", "finetune", "evaluate"} & set(ran), ran
        manifest = json.loads((root / "data" / "processed" / "other" / "manifest.json").read_text())
        assert (manifest["dataset"], manifest["role"], list(manifest["splits"])) == ("other", "test", ["test"])
        assert manifest["classes"] == ["REAL", "FAKE", "GAN"] and manifest["class_aliases"] == {"SD14": "FAKE"}
        assert not (root / "data" / "raw" / "other" / "images" / "train").exists()
        assert len(_runs(root)) == 1
    finally:
        (root / "params.yaml").write_text(original)
    # The baseline's stages are untouched; DVC leaves the removed set's metrics/test/other.json behind, and
    # summary and report depend on that folder, so they alone run again (they read only the sets named).
    assert set(_repro(root, env)[0]) <= {"summary", "report"}


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
        client = mlflow.MlflowClient(_store(root))
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
    ran = re.findall(r"Running stage '([\w@-]+)'", res.stdout)
    assert ran == ["finetune", "evaluate", "summary", "explain", "report"]
    runs = _runs(root)
    assert len(runs) == 2
    names = subprocess.run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], cwd=root, env=env,
                           capture_output=True, text=True).stdout.split()
    assert max(runs, key=lambda r: r.info.start_time).info.run_name in names  # the MLflow run has the exp's name
    show = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert show.returncode == 0 and "metrics/eval.json" in show.stdout and "metrics/saliency.json" in show.stdout
    diff = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stderr[-2000:]
    changed = json.loads(diff.stdout)
    assert "brier" in changed["metrics/eval.json"] and "metrics/zeroshot.json" not in changed
    import mlflow

    newest = mlflow.MlflowClient(_store(root)).get_model_version_by_alias("aigi-demo-detector", "newest")
    assert int(newest.version) == 2 and newest.run_id == max(runs, key=lambda r: r.info.start_time).info.run_id


def test_param_edit_in_the_copy_reruns_into_the_same_store(project, tmp_path):
    """Issue 9.6: `dvc repro` in the demo copy after editing its params, with no MLFLOW_TRACKING_URI."""
    import yaml

    root, env, _ = project
    assert "MLFLOW_TRACKING_URI" not in env
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["evaluate"]["bootstrap_samples"] = 100
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ran, _ = _repro(root, env)
    assert "evaluate" in ran and "report" in ran and "finetune" not in ran
    # A store without the recorded run: one line naming the store and the run, no traceback.
    empty = f"sqlite:///{tmp_path / 'other.db'}"
    res = subprocess.run([sys.executable, "stages/report.py"], cwd=root, capture_output=True, text=True,
                         env={**env, "MLFLOW_TRACKING_URI": empty})
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: MLflow run") and run_id in line and empty in line


def _params_problems(root: Path, env: dict) -> tuple[set[str], list[str]]:
    """The stages that recorded their params reads, and each mismatch with what dvc.lock tracked for them."""
    seen = paramdeps.recorded(Path(env[params.RECORD_ENV]))
    return set(seen), paramdeps.problems(paramdeps.declared(root / "dvc.lock"), seen)


def test_each_stage_reads_exactly_the_params_it_declares(project):
    """Every param a stage read, in every run above (the queued runs of `aigi compare` are not recorded), is in
    its dvc.yaml `params:` (else a change to it would leave a stale output) and every declared one was read
    (else it re-runs for nothing); see aigi.paramdeps."""
    root, env, ran = project
    stages, problems = _params_problems(root, env)
    assert set(ran) <= stages, sorted(set(ran) - stages)
    assert not problems, "\n".join(problems)


def test_compare_queues_methods_side_by_side_in_dvc_and_mlflow(project):
    root, _, _ = project
    table = compare.run(root, methods=("linear_probe", "full"), overrides=["finetune.epochs=2"])
    assert "cmp-linear-probe" in table and "cmp-full" in table and "acc_zs" in table and "acc_ft" in table
    assert max(len(line) for line in table.splitlines()) <= 120, table
    # Queued experiments run in temporary copies; their runs still land in the copy's store, named after them.
    runs = {r.info.run_name: r for r in _runs(root)}
    assert {"cmp-linear-probe", "cmp-full"} <= set(runs)
    assert runs["cmp-full"].data.params["finetune.method"] == "full"
    assert runs["cmp-full"].data.metrics["acc_zs"] == runs["cmp-linear-probe"].data.metrics["acc_zs"]


@pytest.mark.skipif(browser.CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")
def test_mlflow_ui_and_report_in_a_real_browser(project, tmp_path):
    import mlflow

    root, _, _ = project
    runs = _runs(root)
    assert len(runs) >= 2
    exp_id = runs[0].info.experiment_id
    shots = Path(os.environ.get("AIGI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    store = _store(root)
    with browser.mlflow_ui(store, tmp_path / "mlartifacts", tmp_path / "ui.log") as url:
        # The link `make ui` prints: the runs table with the headline view stored in the experiment.
        dom = browser.render(tracking.runs_page(url, exp_id), tmp_path / "p1", shots / "mlflow-runs.png")
        for run in runs:
            assert run.info.run_name in dom, run.info.run_name
        assert "acc_zs" in dom and "acc_ft" in dom and "synthetic train" in dom
        ids = [r.info.run_id for r in runs[:2]]
        query = urllib.parse.quote(json.dumps(ids)), urllib.parse.quote(json.dumps([exp_id]))
        dom = browser.render(f"{url}/#/compare-runs?runs={query[0]}&experiments={query[1]}", tmp_path / "p2",
                             shots / "mlflow-compare.png")
        for run in runs[:2]:
            assert run.info.run_name in dom, run.info.run_name
        assert "acc_zs" in dom and "acc_ft" in dom and "auc_ft" in dom
    mlflow.set_tracking_uri(None)
    count, broken, dom = browser.images_loaded(root / "reports" / "report.html", tmp_path)
    assert count >= 4 and broken == 0, (count, broken)  # the four figures, plus any mistakes shown
    assert "Zero-shot vs fine-tuned" in dom
    (shots / "report.png").write_bytes((tmp_path / "report.png").read_bytes())


@pytest.fixture(scope="module")
def multigen(tmp_path_factory):
    """`make demo-multigen` in a temporary copy: three synthetic generators, VAE held out of training."""
    tmp = tmp_path_factory.mktemp("e2e-multigen")
    project = tmp / "project"
    demo.prepare(ROOT, project, demo.generator_overrides(ROOT, ["GAN", "DIFFUSION", "VAE"], ["VAE"]))
    env = demo.stage_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env[params.RECORD_ENV] = str(tmp / "params-read")
    _repro(project, env)
    return project, env


def test_multigen_demo_attributes_generators_and_reports_the_unseen_one(multigen):
    root, env = multigen
    manifest = json.loads((root / "data" / "processed" / "cifake" / "manifest.json").read_text())
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
    test = json.loads((root / "data" / "raw" / "cifake" / "SOURCE.json").read_text())
    assert "GAN" in test["classes"]
    images = sorted((root / "data" / "raw" / "cifake" / "images" / "test" / "GAN").iterdir())[:4]
    res = subprocess.run([sys.executable, "-m", "aigi.cli", "predict", *map(str, images), "--model",
                          str(root / "models" / "finetuned")], cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0] == "path,p_fake,label,generator,p_REAL,p_DIFFUSION,p_GAN,error"
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root, env=env,
                           capture_output=True, text=True)
    assert plots.returncode == 0 and not json.loads(plots.stdout).get("errors")
    assert json.loads(plots.stdout)["data"]["plots/eval/attribution_confusion.csv"][0]["content"]["data"]["values"]


def test_multigen_stages_read_exactly_the_params_they_declare(multigen):
    root, env = multigen
    stages, problems = _params_problems(root, env)
    assert {"preprocess@cifake", "evaluate", "report"} <= stages
    assert not problems, "\n".join(problems)
