"""The demo copy names the project's MLflow store itself, so `dvc repro` inside it needs no environment."""

import yaml
from conftest import ROOT

from aigi import demo


def test_copy_params_name_the_projects_store_by_absolute_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dest = tmp_path / "demo"
    demo.prepare(ROOT, dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    assert params["mlflow"]["tracking_uri"] == f"sqlite:///{ROOT / 'mlflow.db'}"
    assert params["mlflow"]["experiment"] == "aigi-demo" and params["data"]["source"] == "synthetic"
    assert "MLFLOW_TRACKING_URI" not in demo.stage_env()


def test_store_uri_anchors_relative_sqlite_paths_to_the_project():
    assert demo.store_uri(ROOT, "sqlite:///stores/mlflow.db") == f"sqlite:///{ROOT / 'stores' / 'mlflow.db'}"
    assert demo.store_uri(ROOT, "sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert demo.store_uri(ROOT, "http://mlflow.internal:5000") == "http://mlflow.internal:5000"
