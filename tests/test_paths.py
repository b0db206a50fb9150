"""Where outputs and tracking land: the project root, also inside DVC's temporary experiment copies; and
every path paths.py names is one that dvc.yaml tracks."""

import re
from pathlib import Path

import yaml
from conftest import ROOT

from aigi import paths, tracking
from aigi.params import Params

NOT_TRACKED = {"CHECKPOINT_DIR"}  # finetune's scratch while it runs: deleted when the stage finishes


def dvc_paths() -> list[re.Pattern]:
    """Every out, dep, metric and plot of dvc.yaml as a pattern: `${key}`, `${item}`, `${train_on}` match a name."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = []
    for stage in stages.values():
        body = stage.get("do", stage)
        for field in ("deps", "outs", "metrics", "plots"):
            for entry in body.get(field, []):
                path = next(iter(entry)) if isinstance(entry, dict) else str(entry)
                name = re.escape(re.sub(r"\$\{[^}]+\}", "\0", path)).replace("\0", "[a-z0-9_-]+")
                found.append(re.compile(name))
    return found


def tracked(path: Path, patterns: list[re.Pattern]) -> bool:
    """`path` is a dvc.yaml path, or lies in a folder that is one."""
    return any(p.fullmatch(candidate.as_posix()) for p in patterns for candidate in (path, *path.parents))


def test_every_path_paths_names_is_tracked_by_dvc():
    patterns = dvc_paths()
    named = {name: value for name, value in vars(paths).items()
             if isinstance(value, Path) and not name.startswith("_") and name not in NOT_TRACKED}
    named |= {f"{f.__name__}('cifake')": f("cifake")
              for f in (paths.raw_dir, paths.raw_images, paths.source_json, paths.processed_dir, paths.test_set_plots,
                            paths.audit_metrics)}
    assert len(named) > 20
    untracked = sorted(name for name, path in named.items() if not tracked(path, patterns))
    assert not untracked, f"paths.py names paths no dvc.yaml stage has as out or dep: {untracked}"
    assert not tracked(Path("metrics/nothing.json"), patterns)  # the check can fail


def test_project_root_from_dvc_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert paths.project_root() == tmp_path.resolve()
    assert paths.user_root() == tmp_path.resolve()


def test_project_root_found_upwards(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert paths.project_root() == tmp_path.resolve()


def test_temp_experiment_copy_tracks_into_the_users_checkout(monkeypatch, tmp_path):
    # `dvc exp run --temp` and queued experiments run in <repo>/.dvc/tmp/exps/<tmpdir>
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert paths.project_root() == copy.resolve()
    assert paths.user_root() == repo.resolve()
    assert tracking.tracking_uri(Params().mlflow) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    custom = Params.model_validate({"mlflow": {"tracking_uri": "http://mlflow.example:5000"}})
    assert tracking.tracking_uri(custom.mlflow) == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert tracking.tracking_uri(custom.mlflow) == "sqlite:////elsewhere/m.db"


def test_artifacts_sit_next_to_the_sqlite_database(tmp_path):
    loc = tracking.artifact_location(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert loc == (tmp_path / "mlartifacts").resolve().as_uri()
    assert tracking.artifact_location("http://server:5000") is None


def test_experiment_created_with_anchored_artifact_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    import mlflow

    exp_id = tracking.experiment_id(Params.model_validate({"mlflow": {"experiment": "anchored"}}).mlflow)
    exp = mlflow.get_experiment(exp_id)
    assert Path(exp.artifact_location.removeprefix("file://")) == (tmp_path / "mlartifacts").resolve()
    assert tracking.experiment_id(Params.model_validate({"mlflow": {"experiment": "anchored"}}).mlflow) == exp_id


def test_params_changed_after_training_are_tagged_on_the_run(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    trained = Params.model_validate({"mlflow": {"experiment": "tags"}})
    with tracking.start_training_run(trained) as run:
        pass
    tracking.write_run_file(tmp_path / "run.json", run.info.run_id)
    now = Params.model_validate({"mlflow": {"experiment": "tags"}, "evaluate": {"threshold": 0.7}})
    with tracking.model_run(now, tmp_path / "run.json"):
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["evaluated_with.evaluate.threshold"] == "0.7"
    assert not any(k.startswith("evaluated_with.finetune") for k in tags)
