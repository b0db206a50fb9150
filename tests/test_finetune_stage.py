"""The finetune stage as a process on the tiny CLIP (CPU): killed right after its first checkpoint and re-run,
it ends exactly where an uninterrupted training ends, in the same MLflow run. Under torchrun (one node and
two nodes): tests/test_multinode.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file

from aigi.data import preprocess
from aigi.data.synthetic import write_synthetic
from aigi.params import PreprocessParams
from aigi.train import CRASH_AFTER_EPOCH_ENV, CRASH_EXIT_CODE

# Whole processes (a crash, a re-run, torchrun), about a minute on 2 cores: `make test-fast` leaves them out;
# tests/test_train.py resumes in-process, bit for bit, in seconds.
pytestmark = pytest.mark.e2e
STAGE = ROOT / "stages" / "finetune.py"
EPOCHS = 3


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """data/processed from a small synthetic CIFAKE tree (64 px, the tiny model's input)."""
    tmp = tmp_path_factory.mktemp("processed")
    write_synthetic(tmp / "raw", 40, 4, seed=0)
    preprocess.run(tmp / "raw", tmp / "processed", PreprocessParams(train_per_class="all", test_per_class="all",
                                                                     val_fraction=0.2, workers=1), 0, 64)
    return tmp / "processed"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """One MLflow store for the module: its tables are created once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def project(root: Path, processed: Path, epochs: int = EPOCHS, experiment: str = "finetune-stage-test") -> Path:
    root.mkdir(parents=True)
    shutil.copytree(processed, root / "data" / "processed" / "cifake")  # the default train_on
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": {"arch": "aigi-tiny", "pretrained": "none", "device": "cpu"},
        "finetune": {"epochs": epochs, "lr": 1e-3, "batch_size": 16, "grad_accum_steps": 2, "warmup_fraction": 0.1,
                     "early_stopping_patience": 0, "eval_batch_size": 64},
        "mlflow": {"experiment": experiment},
    }))
    return root


def run_stage(root: Path, tracking: str, *launcher: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_EPOCH_ENV}
    full_env.update({"PYTHONPATH": str(ROOT / "src"), "MLFLOW_TRACKING_URI": tracking,
                     "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **env})
    return subprocess.run([sys.executable, *launcher, str(STAGE)], cwd=root, env=full_env, capture_output=True,
                          text=True, timeout=300)


def weights(root: Path) -> dict[str, torch.Tensor]:
    model = root / "models" / "finetuned"
    head = {f"head.{k}": v for k, v in load_file(model / "head.safetensors").items()}
    return {**load_file(model / "clip" / "open_clip_model.safetensors"), **head}


def metric_steps(tracking: str, run_id: str, key: str) -> list[int]:
    import mlflow

    return [m.step for m in mlflow.MlflowClient(tracking).get_metric_history(run_id, key)]


def uninterrupted(root: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The same training as the stage, in this process and in one go: its history and final weights."""
    from aigi import params
    from aigi.data.store import load_split
    from aigi.model import create_detector
    from aigi.train import train

    p = params.load(root / "params.yaml")
    data = root / "data" / "processed" / "cifake"
    (train_x, train_t), (val_x, val_t) = (load_split(data, s) for s in ("train", "val"))
    detector = create_detector(p.model.arch, p.model.pretrained, p.zeroshot.prompts, torch.device("cpu"), p.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stage's processes (OMP_NUM_THREADS=1): bitwise the same arithmetic
    try:
        result = train(detector, (train_x, train_t["label"].to_numpy()), (val_x, val_t["label"].to_numpy()),
                       p.finetune, p.zeroshot.prompts, p.seed)
    finally:
        torch.set_num_threads(threads)
    state = {**detector.clip.state_dict(), **{f"head.{k}": v for k, v in detector.head.state_dict().items()}}
    return result.history, state


def test_killed_after_first_checkpoint_resumes_to_the_same_result(tmp_path, processed, tracking):
    root = project(tmp_path / "crashed", processed)
    res = run_stage(root, tracking, **{CRASH_AFTER_EPOCH_ENV: "1"})
    assert res.returncode == CRASH_EXIT_CODE, res.stdout[-2000:] + res.stderr[-2000:]
    checkpoint = root / "models" / "checkpoints" / "finetune.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1 and {"model", "optimizer", "scheduler", "rng", "run_id"} <= set(state)
    assert not (root / "models" / "finetuned").exists()

    res = run_stage(root, tracking)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming after epoch 1 of {EPOCHS}" in res.stdout
    assert not (root / "models" / "checkpoints").exists()  # only the declared outs remain

    history, expected = uninterrupted(root)
    loss = pd.read_csv(root / "plots" / "train" / "loss.csv")
    acc = pd.read_csv(root / "plots" / "train" / "accuracy.csv")
    assert loss["epoch"].tolist() == list(range(1, EPOCHS + 1))
    for key, frame in (("train_loss", loss), ("val_loss", loss), ("train_accuracy", acc), ("val_accuracy", acc)):
        assert frame[key].tolist() == [row[key] for row in history], key
    saved = weights(root)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)

    assert not (root / "models" / "finetuned" / "run_id").exists()  # no per-run value inside the model
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    assert run_id == state["run_id"]  # the resumed run logged into the run the crashed one opened
    assert metric_steps(tracking, run_id, "accuracy/val") == list(range(1, EPOCHS + 1))
