"""Wall time of the finetune stage on two torchrun "nodes" (two agents, c10d rendezvous on 127.0.0.1) against
one node (one agent), with the same two gloo CPU processes and global batch.

    python bench/multinode.py                      # aigi-tiny, 200 synthetic images per class, 2 epochs

Builds a throw-away project (synthetic CIFAKE-like images, preprocessed at 64 px), then runs
`stages/finetune.py` under `torchrun --standalone --nproc-per-node 2` and under two
`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d` agents, and prints each wall time (process
start to exit, so Python and torch start-up and the rendezvous are included) and whether both saved the
same weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from aigi.data import preprocess
from aigi.data.synthetic import write_synthetic
from aigi.params import PreprocessParams

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "stages" / "finetune.py"


def project(root: Path, processed: Path, epochs: int) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(processed, root / "data" / "processed")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": {"arch": "aigi-tiny", "pretrained": "none", "device": "cpu"},
        "finetune": {"epochs": epochs, "lr": 1e-3, "batch_size": 16, "grad_accum_steps": 2, "warmup_fraction": 0.1,
                     "early_stopping_patience": 0, "eval_batch_size": 64},
        "mlflow": {"experiment": root.name, "tracking_uri": f"sqlite:///{root.parent / 'mlflow.db'}"},
    }))
    return root


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_node(root: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(STAGE)],
                   cwd=root, env=env(), check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def two_nodes(root: Path) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=bench", "--local-addr=127.0.0.1", str(STAGE)]
    start = time.perf_counter()
    agents = [subprocess.Popen(cmd, cwd=root, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for _ in range(2)]
    codes = [a.wait(timeout=1800) for a in agents]
    if codes != [0, 0]:
        sys.exit(f"two-node run failed: exit codes {codes}")
    return time.perf_counter() - start


def weights(root: Path) -> dict[str, torch.Tensor]:
    model = root / "models" / "finetuned"
    return {**load_file(model / "clip" / "open_clip_model.safetensors"), **load_file(model / "head.safetensors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_synthetic(tmp / "raw", args.images_per_class, 4, seed=0)
        preprocess.run(tmp / "raw", tmp / "processed", PreprocessParams(
            train_per_class="all", test_per_class="all", val_fraction=0.2, workers=1), 0, 64)
        load = os.getloadavg()
        t1 = one_node(project(tmp / "one", tmp / "processed", args.epochs))
        t2 = two_nodes(project(tmp / "two", tmp / "processed", args.epochs))
        a, b = weights(tmp / "one"), weights(tmp / "two")
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        after = os.getloadavg()
    print(f"bench/multinode: aigi-tiny, {2 * args.images_per_class} images ({args.images_per_class} a class, 80% "
          f"train), {args.epochs} epochs, 2 gloo CPU processes, global batch 64")
    print(f"  one node (1 agent x 2 processes): {t1:.1f} s; two nodes (2 agents x 1 process, c10d): {t2:.1f} s; "
          f"same weights: {same}")
    print(f"  load average before {load[0]:.2f}, after {after[0]:.2f}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
