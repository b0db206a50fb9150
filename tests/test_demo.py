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
    assert params["mlflow"]["experiment"] == "aigi-demo" and params["datasets"] == {"cifake": {"source": "synthetic"}}
    assert "MLFLOW_TRACKING_URI" not in demo.stage_env()


def test_store_uri_anchors_relative_sqlite_paths_to_the_project():
    assert demo.store_uri(ROOT, "sqlite:///stores/mlflow.db") == f"sqlite:///{ROOT / 'stores' / 'mlflow.db'}"
    assert demo.store_uri(ROOT, "sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert demo.store_uri(ROOT, "http://mlflow.internal:5000") == "http://mlflow.internal:5000"


def test_an_override_file_names_every_dataset_of_its_run(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("train_on: a\ndatasets:\n  a: {source: local, path: rel/a.zip}\n  b: {source: synthetic}\n")
    merged = demo.merge({"train_on": "cifake", "datasets": {"cifake": {"source": "kaggle"}}, "seed": 1},
                        demo.file_overrides(ROOT, over))
    assert list(merged["datasets"]) == ["a", "b"] and merged["seed"] == 1
    assert merged["datasets"]["a"]["path"] == str((ROOT / "rel" / "a.zip").resolve())  # the copy is elsewhere


def test_generator_demo_keeps_the_demo_dataset_synthetic():
    over = demo.generator_overrides(ROOT, ["GAN", "VAE"], ["VAE"])
    assert over["datasets"]["cifake"]["source"] == "synthetic"
    assert over["datasets"]["cifake"]["synthetic_generators"] == ["GAN", "VAE"]
