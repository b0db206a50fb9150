"""A bounded load against `mlflow models serve` on 127.0.0.1: requests/s, latency p50/p99, server memory.

    python bench/serve.py                                  # aigi-tiny, 30 s, 8 images a request, 1 in 8 broken
    python bench/serve.py --seconds 60 --clients 2 --images-per-request 32 --arch ViT-B-32

Saves a detector with random weights (the speed does not depend on the weights), logs and registers it
in a throw-away SQLite MLflow store, starts `mlflow models serve --env-manager local` on 127.0.0.1 and
sends `dataframe_split` requests of base64 images, valid PNG/JPEG and broken ones mixed, for at most
`--seconds` or `--requests`, whichever comes first. Every answer must be 200 with one row per image and
the broken ones marked in their row; the script fails otherwise. The server's memory is the resident set
(RSS) of its whole process tree, read from /proc, after start-up and at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # never anything else: the load stays on this machine


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and all its descendants (Linux /proc), in MiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            children.setdefault(int(fields["PPid"]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1024


def images(count: int, seed: int = 0) -> list[str]:
    """`count` base64 cells: CIFAKE-sized PNGs and JPEGs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG" if i % 2 else "JPEG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


BROKEN = [
    base64.b64encode(b"not an image at all").decode(),  # bytes, no image format
    base64.b64encode(base64.b64decode(images(1)[0])[:40]).decode(),  # a truncated JPEG
    "definitely not base64!",
]


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def register(tmp: Path, arch: str) -> str:
    """A random-weight detector logged and registered in a SQLite store under `tmp`; returns the store URI."""
    import mlflow
    import torch

    from aigi import params, serving
    from aigi.model import create_detector, save_detector

    prompts = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}
    folder = tmp / "finetuned"
    save_detector(create_detector(arch, "none", prompts, torch.device("cpu"), seed=0), folder,
                  {"arch": arch, "pretrained": "none", "method": "contrastive", "prompts": prompts})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench-serve", artifact_location=(tmp / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        serving.log_and_register(folder, params.parse({"mlflow": {"registered_model": "bench", "model_alias": "b"}}))
    return uri


def wait_ready(server: subprocess.Popen, base: str, log: Path, limit: float = 180) -> float:
    start = time.monotonic()
    while True:
        if server.poll() is not None:
            sys.exit(f"server exited: {log.read_text()[-3000:]}")
        if time.monotonic() - start > limit:
            sys.exit(f"server not ready in {limit:.0f} s: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
            if resp.status == 200:
                return time.monotonic() - start
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30, help="stop sending after this long")
    ap.add_argument("--requests", type=int, default=5000, help="stop after this many requests")
    ap.add_argument("--images-per-request", type=int, default=8)
    ap.add_argument("--broken-every", type=int, default=8, help="one image in this many is broken (0: none)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent client threads")
    ap.add_argument("--arch", default="aigi-tiny")
    args = ap.parse_args()

    pool = images(64)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        uri = register(tmp, args.arch)
        port = free_port()
        base = f"http://{HOST}:{port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        log = tmp / "serve.log"
        with open(log, "w") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bench@b", "--env-manager", "local",
                 "--host", HOST, "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready_s = wait_ready(server, base, log)
            rss_before = tree_rss_mib(server.pid)
            latencies: list[float] = []
            failures: list[str] = []
            counts = {"images": 0, "broken": 0}
            lock = threading.Lock()
            issued = iter(range(args.requests))
            deadline = time.monotonic() + args.seconds

            def client(seed: int) -> None:
                rng = np.random.default_rng(seed)
                while time.monotonic() < deadline and failures == []:
                    with lock:
                        if next(issued, None) is None:
                            return
                    n = args.images_per_request
                    broken = (rng.random(n) < 1 / args.broken_every) if args.broken_every else np.zeros(n, bool)
                    cells = [BROKEN[rng.integers(len(BROKEN))] if b else pool[rng.integers(len(pool))] for b in broken]
                    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}})
                    start = time.perf_counter()
                    status, answer = post(f"{base}/invocations", body.encode())
                    took = time.perf_counter() - start
                    problem = ""
                    if status != 200:
                        problem = f"HTTP {status}: {answer[:300]!r}"
                    else:
                        rows = json.loads(answer, parse_constant=lambda c: None)["predictions"]
                        marked = [bool(r.get("error")) and r["p_fake"] is None for r in rows]
                        if marked != list(broken):
                            problem = f"rows do not match the request: {rows[:3]}"
                    with lock:
                        (failures.append(problem) if problem else latencies.append(took))
                        counts["images"] += n
                        counts["broken"] += int(broken.sum())

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            rss_after = tree_rss_mib(server.pid)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    if failures:
        sys.exit(f"bench/serve: {len(failures)} bad answers, first: {failures[0]}")
    lat = np.array(latencies) * 1000
    load = os.getloadavg()
    print(f"bench/serve: {args.arch}, {args.clients} client(s), {args.images_per_request} images a request, "
          f"1 in {args.broken_every or 'no'} broken; server ready in {ready_s:.1f} s")
    print(f"  {len(lat)} requests ({counts['images']} images, {counts['broken']} broken, every answer 200 and "
          f"row-for-row) in {wall:.1f} s: {len(lat) / wall:.1f} requests/s, {counts['images'] / wall:.0f} images/s")
    print(f"  latency p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms")
    print(f"  server RSS (process tree) {rss_before:.0f} MiB after start-up, {rss_after:.0f} MiB after the load")
    print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
