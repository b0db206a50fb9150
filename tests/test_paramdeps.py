"""Params deps checked like code deps (issue 17.1): the recording view over Params, and the check of what each
stage read against its dvc.yaml `params:`. The real pipeline is checked in tests/test_pipeline_e2e.py."""

import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import ROOT

from aigi import paramdeps, params
from aigi.params import EvaluateParams, Params, ParamsRecord, Recording


def _view() -> tuple[Params, ParamsRecord]:
    record = ParamsRecord()
    return Recording(params.parse({"finetune": {"lr": 0.001}}), "", record), record


def _threshold_of(evaluate: EvaluateParams) -> float:  # a library function handed one section
    return evaluate.threshold


def test_the_view_notes_each_leaf_read_with_its_dotted_key():
    p, record = _view()
    assert p.finetune.lr == 0.001 and p.seed == 42
    assert _threshold_of(p.evaluate) == 0.5
    assert p.evaluate.robustness.jpeg_quality == [90, 70, 50, 30]
    assert p.zeroshot.prompts["REAL"]  # a dict of values is one key
    assert record.read == {"finetune.lr", "seed", "evaluate.threshold", "evaluate.robustness.jpeg_quality",
                           "zeroshot.prompts"}
    assert not record.logged


def test_dumps_are_reads_and_flat_is_logged():
    p, record = _view()
    assert p.zeroshot.model_dump(exclude={"batch_size"}) == Params().zeroshot.model_dump(exclude={"batch_size"})
    assert record.read == {"zeroshot.prompts", "zeroshot.generator_templates"}
    assert p.flat()["finetune.lr"] == 0.001
    assert "mlflow.experiment" in record.logged and "evaluate.robustness.rescale" in record.logged
    assert "mlflow.experiment" not in record.read
    json.loads(p.report.model_dump_json())
    assert "report.mistakes_shown" in record.read


def test_the_view_is_read_only_equal_to_its_params_and_pickles_as_them():
    p, _ = _view()
    plain = params.parse({"finetune": {"lr": 0.001}})
    assert p == plain and p.finetune == plain.finetune and hash(p.model) == hash(plain.model)
    with pytest.raises(TypeError, match="read-only"):
        p.seed = 1
    assert type(pickle.loads(pickle.dumps(p.evaluate))) is EvaluateParams  # a worker process gets the section


def test_load_returns_plain_params_unless_recording_is_asked_for(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    monkeypatch.delenv(params.RECORD_ENV, raising=False)
    assert type(params.load(tmp_path / "params.yaml")) is Params


def _fake_project(tmp_path, reads: str) -> tuple:
    """A dvc.yaml and its dvc.lock (as DVC writes them) with a stage `train` whose script reads `reads`."""
    (tmp_path / "params.yaml").write_text("seed: 3\nfinetune: {lr: 0.01, epochs: 2}\nmlflow: {experiment: x}\n")
    (tmp_path / "train.py").write_text(textwrap.dedent(f"""
        from aigi import params
        p = params.load()
        f = p.finetune
        print({reads})
        p.flat()  # as MLflow logging does
    """))
    stages = {"train": {"cmd": "python train.py", "params": ["seed", "finetune.lr"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    lock = {"schema": "2.0", "stages": {"train": {"cmd": "python train.py", "params": {
        "params.yaml": {"seed": 3, "finetune.lr": 0.01}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    folder = tmp_path / "record"
    env = {"PATH": "/usr/bin:/bin", "AIGI_RECORD_PARAMS": str(folder), "DVC_STAGE": "train"}
    res = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return paramdeps.declared(tmp_path / "dvc.lock"), paramdeps.recorded(folder), tmp_path


def test_a_stage_reading_what_it_declares_passes(tmp_path):
    declared, seen, root = _fake_project(tmp_path, "p.seed, f.lr")
    assert declared == {"train": ["finetune.lr", "seed"]} == paramdeps.declared(root / "dvc.yaml")
    assert seen["train"]["read"] == {"seed", "finetune.lr"} and "mlflow.experiment" in seen["train"]["logged"]
    assert paramdeps.problems(declared, seen, {}, {}) == []


def test_the_check_fails_on_an_undeclared_read_and_on_an_unread_declaration(tmp_path):
    declared, seen, _ = _fake_project(tmp_path, "f.lr, f.epochs, p.mlflow.experiment")
    assert paramdeps.problems(declared, seen, {}, {}) == [
        "train: reads finetune.epochs, which its dvc.yaml params do not list",
        "train: reads mlflow.experiment, which its dvc.yaml params do not list",
        "train: lists seed in its params but never reads it",
    ]
    # An exemption names the stage and the key (a pattern covers sub-keys), with its reason.
    exempt = {"train": {"mlflow": "where it is logged", "finetune.epochs": "speed only"}}
    assert paramdeps.problems(declared, seen, exempt, {"train": {"seed": "read in other configurations"}}) == []
    assert paramdeps.problems(declared, {"other": seen["train"]}, {}, {}) == [
        "other: read params but is no stage of dvc.lock (ran outside `dvc repro`?)"]


def test_the_stage_name_is_dvcs_or_the_script_and_its_arguments(monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "preprocess@cifake")
    assert params.stage_name() == "preprocess@cifake"
    monkeypatch.delenv("DVC_STAGE")
    monkeypatch.setattr(sys, "argv", ["stages/test.py", "multigen"])
    assert params.stage_name() == "test@multigen"


def test_each_exemption_names_a_stage_of_dvc_yaml_and_a_key_it_does_not_declare():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for table in (paramdeps.NOT_DEPS, paramdeps.UNREAD_DEPS):
        for stage, keys in table.items():
            assert stage in stages, stage
            declared = [str(k) for k in stages[stage].get("do", stages[stage]).get("params", [])]
            for key, why in keys.items():
                assert why.strip(), (stage, key)
                if table is paramdeps.NOT_DEPS:
                    assert not paramdeps.covered(key, declared), f"{stage}: {key} is declared; drop the exemption"
                else:
                    assert paramdeps.covered(key, declared), f"{stage}: {key} is not declared; drop the exemption"
