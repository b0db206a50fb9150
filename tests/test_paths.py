"""Where outputs and tracking land: the project root, also inside DVC's temporary experiment copies."""

from pathlib import Path

from aigi import paths, tracking
from aigi.params import Params


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
