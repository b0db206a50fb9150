"""MLflow tracking: the experiment's kind, run names and descriptions, datasets, a missing run's one line."""

import json

import mlflow
import pandas as pd
import pytest

from aigi import tracking
from aigi.errors import AigiError
from aigi.metrics import summary
from aigi.params import ParamsRecord, Recording, parse


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A project root with a processed data folder, tracking into its own SQLite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    processed = tmp_path / "data" / "processed" / "cifake"
    processed.mkdir(parents=True)
    (processed / "manifest.json").write_text("{}\n")
    for split, (real, fake) in (("train", (30, 20)), ("test", (8, 12))):
        pd.DataFrame({"file": [f"f{i}.png" for i in range(real + fake)], "label": [0] * real + [1] * fake,
                      "label_name": ["REAL"] * real + ["FAKE"] * fake}).to_csv(processed / f"{split}.csv")
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(None)


def _params(uri: str, **finetune):
    return parse({"datasets": {"cifake": {"source": "synthetic"}}, "model": {"arch": "aigi-tiny", "pretrained": "none"},
                  "finetune": {"method": "linear_probe", **finetune},
                  "mlflow": {"experiment": "t", "tracking_uri": uri}})


def test_experiment_is_created_as_model_training_and_old_ones_get_the_tag(store):
    p = _params(store)
    exp = mlflow.MlflowClient(store).get_experiment(tracking.experiment_id(p.mlflow))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    old = mlflow.MlflowClient(store).create_experiment("old")
    tracking.experiment_id(p.mlflow.model_copy(update={"experiment": "old"}))
    assert mlflow.MlflowClient(store).get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiment_stores_the_headline_runs_view(store):
    exp = mlflow.MlflowClient(store).get_experiment(tracking.experiment_id(_params(store).mlflow))
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{tracking.HEADLINE_VIEW}"])
    headline = summary(*[{"accuracy": 1, "roc_auc": 1, "f1": 1, "ece": 0, "attribution": {"accuracy": 1}}] * 2)
    assert {f"metrics.`{k}`" for k in headline if k != "acc_attr_zs"} <= set(view["selectedColumns"])
    assert tracking.runs_page("http://h:1", "7") == ("http://h:1/#/experiments/7/runs?workflowType=machine_learning"
                                                     "&viewStateShareKey=aigi-headline")


def test_run_names_tell_runs_apart(store, monkeypatch):
    a, b = tracking.run_name(_params(store)), tracking.run_name(_params(store, lr=0.003))
    assert a.startswith("linear_probe-aigi-tiny-") and b.startswith("linear_probe-aigi-tiny-") and a != b
    assert tracking.run_name(_params("sqlite:////elsewhere.db")) == a  # where a run is stored is not what it is
    monkeypatch.setenv("DVC_EXP_NAME", "sober-bump")
    assert tracking.run_name(_params(store)) == "sober-bump"


def test_training_run_logs_datasets_and_a_description(store):
    with tracking.start_training_run(_params(store)) as run:
        run_id = run.info.run_id
    run = mlflow.MlflowClient(store).get_run(run_id)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "testing"}
    assert inputs["training"].name == "synthetic train" and inputs["testing"].name == "synthetic test"
    assert inputs["training"].digest == run.data.tags["dvc_data_version"].split(":")[1][:32]
    assert json.loads(inputs["training"].profile) == {"num_rows": 50, "class_counts": {"FAKE": 20, "REAL": 30}}
    assert json.loads(inputs["testing"].profile)["class_counts"] == {"FAKE": 12, "REAL": 8}
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("synthetic data (50 train / 20 test images; FAKE, REAL); linear_probe fine-tuning of "
                           "aigi-tiny (none); lr 1e-05"), note
    assert "\n" not in note


def test_a_run_missing_from_the_store_is_one_line_naming_both(store, tmp_path):
    run_file = tmp_path / "models" / "run.json"
    tracking.write_run_file(run_file, "0123456789abcdef0123456789abcdef")
    with pytest.raises(AigiError) as err, tracking.model_run(_params(store), run_file):
        pass
    msg = str(err.value)
    assert "0123456789abcdef0123456789abcdef" in msg and store in msg and "\n" not in msg


def test_reopening_a_run_reads_only_where_the_store_is(store, tmp_path, monkeypatch):
    """evaluate, explain and report log into finetune's run: explain declares only mlflow.tracking_uri."""
    with tracking.start_training_run(_params(store)) as run:
        pass
    tracking.write_run_file(tmp_path / "run.json", run.info.run_id)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set_tracking_uri exports it; a stage starts without
    record = ParamsRecord()
    with tracking.model_run(Recording(_params(store), "", record), tmp_path / "run.json"):
        pass
    assert record.read == {"mlflow.tracking_uri"} and "finetune.lr" in record.logged  # flat(): the changed tags


def test_epoch_metrics_pair_train_and_val_for_the_charts():
    row = {"epoch": 3, "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.8, "val_accuracy": 0.7, "lr": 1e-3}
    assert tracking.epoch_metrics(row) == {"loss/train": 0.5, "loss/val": 0.6, "accuracy/train": 0.8,
                                           "accuracy/val": 0.7, "lr": 1e-3}


def test_summary_has_the_headline_numbers_and_attribution_when_present():
    zs = {"accuracy": 0.61234, "roc_auc": 0.7, "f1": 0.5, "ece": 0.2}
    ft = {"accuracy": 0.9, "roc_auc": 0.95, "f1": 0.88, "ece": 0.05}
    assert summary(zs, ft) == {"acc_zs": 0.6123, "acc_ft": 0.9, "auc_zs": 0.7, "auc_ft": 0.95, "f1_zs": 0.5,
                               "f1_ft": 0.88, "ece_zs": 0.2, "ece_ft": 0.05}
    multi = summary({**zs, "attribution": {"accuracy": 0.4}}, {**ft, "attribution": {"accuracy": 0.8}})
    assert multi["acc_attr_zs"] == 0.4 and multi["acc_attr_ft"] == 0.8
    sets = {"multigen": {"finetuned": {"roc_auc": 0.81234, "tpr_at_fpr_1": 0.2}, "zeroshot": {"roc_auc": 0.6,
                                                                                             "tpr_at_fpr_1": 0.01}}}
    with_sets = summary(zs, ft, sets)
    assert with_sets == {**summary(zs, ft), "auc_ft_multigen": 0.8123, "auc_zs_multigen": 0.6,
                         "tpr1_ft_multigen": 0.2, "tpr1_zs_multigen": 0.01}  # today's keys, then 4 per test set
