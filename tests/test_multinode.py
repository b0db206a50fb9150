"""The finetune stage under torchrun on two "nodes" on 127.0.0.1: two torchrun agents (c10d rendezvous, one gloo
CPU process each) train to exactly the weights of one agent with two processes (same global batch), log one
MLflow run from rank 0, and resume from rank 0's checkpoint after the job dies."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_finetune_stage import STAGE, metric_steps, processed, project, run_stage, tracking, weights  # noqa: F401

from aigi.train import CRASH_AFTER_EPOCH_ENV, CRASH_EXIT_CODE

EPOCHS = 2
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}  # nothing leaves this machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(root: Path, tracking_uri: str, timeout: float = 300, **env: str) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1; both in `root` (a
    shared project folder, as on a cluster's shared file system). Returns both agents' results. When one
    agent fails (a crash), the other is stopped a few seconds later, as a cluster's scheduler would."""
    full_env = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_EPOCH_ENV}
    full_env.update({"PYTHONPATH": str(ROOT / "src"), "MLFLOW_TRACKING_URI": tracking_uri,
                     "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **LOOPBACK, **env})
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint={endpoint}", "--rdzv-id=aigi-test", "--local-addr=127.0.0.1", "--max-restarts=0",
           str(STAGE)]
    logs = [root.parent / f"{root.name}-node{i}.log" for i in range(2)]
    agents = []
    for log in logs:
        with open(log, "w") as out:
            agents.append(subprocess.Popen(cmd, cwd=root, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                           text=True, start_new_session=True))
    deadline = time.monotonic() + timeout
    first_exit = None
    try:
        while any(a.poll() is None for a in agents):
            if first_exit is None and any(a.poll() not in (None, 0) for a in agents):
                first_exit = time.monotonic()
            if time.monotonic() > deadline or (first_exit and time.monotonic() - first_exit > 10):
                break
            time.sleep(0.2)
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGTERM)
                try:
                    a.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(a.pid, signal.SIGKILL)
                    a.wait()
    assert time.monotonic() <= deadline, "two-node run did not finish in time: " + logs[0].read_text()[-2000:]
    return [subprocess.CompletedProcess(cmd, a.returncode, log.read_text(), "")
            for a, log in zip(agents, logs, strict=True)]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, processed, tracking):  # noqa: F811
    """The reference: one torchrun agent with two gloo processes, uninterrupted."""
    root = project(tmp_path_factory.mktemp("one-node") / "p", processed, epochs=EPOCHS, experiment="one-node")
    res = run_stage(root, tracking, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root, res


def test_one_node_two_processes_train_log_and_save_once(one_node, tracking):  # noqa: F811
    import mlflow

    root, res = one_node
    assert (root / "models" / "finetuned" / "detector.json").is_file()
    assert res.stdout.count("finetune: best epoch") == 1  # rank 0 alone saves and reports
    assert not (root / "models" / "checkpoints").exists()
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("one-node").experiment_id])
    assert len(runs) == 1
    assert metric_steps(tracking, runs[0].info.run_id, "accuracy/val") == list(range(1, EPOCHS + 1))


def test_two_nodes_resume_from_rank_0_and_match_one_node(one_node, tmp_path, processed, tracking):  # noqa: F811
    import mlflow

    root = project(tmp_path / "two-nodes", processed, epochs=EPOCHS, experiment="two-nodes")
    crashed = two_nodes(root, tracking, **{CRASH_AFTER_EPOCH_ENV: "1"})  # the job dies after epoch 1's checkpoint
    assert CRASH_EXIT_CODE in {r.returncode for r in crashed} or any(
        f"exitcode  : {CRASH_EXIT_CODE}" in r.stdout for r in crashed), crashed[0].stdout[-3000:]
    state = torch.load(root / "models" / "checkpoints" / "finetune.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not (root / "models" / "finetuned").exists()

    resumed = two_nodes(root, tracking)
    assert [r.returncode for r in resumed] == [0, 0], resumed[0].stdout[-3000:] + resumed[1].stdout[-3000:]
    out = resumed[0].stdout + resumed[1].stdout
    assert out.count(f"resuming after epoch 1 of {EPOCHS}") == 1 and out.count("finetune: best epoch") == 1
    assert not (root / "models" / "checkpoints").exists()

    expected, got = weights(one_node[0]), weights(root)
    assert got.keys() == expected.keys()
    assert [k for k in got if not torch.equal(got[k], expected[k])] == []  # bitwise: the same global batch
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == state["run_id"]  # rank 0 logged, into the same run
    assert metric_steps(tracking, runs[0].info.run_id, "accuracy/val") == list(range(1, EPOCHS + 1))
