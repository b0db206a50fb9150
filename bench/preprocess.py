"""Benchmark: the preprocess stage vs a naive reference, on the same files, side by side.

    python bench/preprocess.py                    # 5,000 and 20,000 images of the shared CIFAKE sample, 224 px
    python bench/preprocess.py --n 2000 --size 64 --workers 2

Each path runs in its own child process, so neither inherits the other's memory:
- ours: `aigi.data.preprocess.run` (hash + dedupe scan, decode, shared bicubic resize, write .npy,
  in one worker per core), with `train_per_class=test_per_class=all` on a raw tree of exactly N images;
- naive: per image PIL open -> RGB -> resize(size, BICUBIC) -> numpy, appended to a list, stacked at
  the end, then `np.save` (timed separately: a stage has to put its output on disk).

Timing starts after each path's library imports (torch; numpy and PIL) and ends with its output on
disk; ours includes starting its worker processes. Peak memory: `ru_maxrss` of the child (its largest
process), and the peak of the summed PSS of the child's whole process tree (workers included),
sampled every 20 ms from /proc (Linux). The files come
from the shared sample zip (../shared/data/cifake-sample/cifake-sample.zip) when present, else from
the synthetic generator (PNG, not JPEG: say so when you quote figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "cifake-sample" / "cifake-sample.zip"
GROUPS = ("train/REAL", "train/FAKE", "test/REAL", "test/FAKE")


def build_raw(n: int, dest: Path, pool: Path | None) -> str:
    """A raw tree of exactly n images (n/4 per split and class), from the sample or synthetic."""
    per_group = n // 4
    if pool is None:
        from aigi.data.synthetic import write_synthetic

        write_synthetic(dest, per_group, per_group, seed=0)
        return "synthetic PNG"
    for group in GROUPS:
        files = sorted((pool / group).iterdir())
        if len(files) < per_group:
            raise SystemExit(f"--n {n} needs {per_group} images per split/class; the sample has {len(files)}")
        (dest / group).mkdir(parents=True)
        for f in files[:per_group]:
            os.link(f, dest / group / f.name)
    return "CIFAKE sample JPEG"


def run_ours(raw: Path, out: Path, size: int, workers: int) -> None:
    from aigi.data import preprocess
    from aigi.params import PreprocessParams

    params = PreprocessParams(train_per_class="all", test_per_class="all", workers=workers)
    preprocess.run(raw, out, params, seed=0, image_size=size)


def run_naive(raw: Path, out: Path, size: int, workers: int) -> dict[str, float]:
    import numpy as np
    from PIL import Image

    files = sorted(p for group in GROUPS for p in (raw / group).iterdir())
    t0 = time.perf_counter()
    arrays = []
    for f in files:
        with Image.open(f) as img:
            arrays.append(np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC)))
    stacked = np.stack(arrays)
    t1 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "all.npy", stacked)
    return {"compute_s": t1 - t0, "save_s": time.perf_counter() - t1}


def child(path: str, raw: Path, out: Path, size: int, workers: int) -> None:
    # Library imports are not timed for either path (torch for ours, numpy and PIL for naive);
    # everything after them is: for ours, also starting the worker processes.
    if path == "ours":
        import aigi.data.preprocess  # noqa: F401
    else:
        import numpy  # noqa: F401
        import PIL.Image  # noqa: F401
    t0 = time.perf_counter()
    extra = (run_ours if path == "ours" else run_naive)(raw, out, size, workers) or {}
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "maxrss_mb": rss, **extra}))


def _tree_pss_mb(root: int) -> float:
    """Summed PSS of `root` and all its descendants (Linux /proc); 0 where unreadable."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measure(path: str, raw: Path, out: Path, size: int, workers: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", path, "--raw", str(raw), "--out", str(out),
           "--size", str(size), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    while proc.poll() is None:
        if os.path.isdir("/proc"):
            peak = max(peak, _tree_pss_mb(proc.pid))
        time.sleep(0.02)
    result = json.loads(proc.stdout.read().strip().splitlines()[-1])
    if proc.returncode:
        raise SystemExit(f"{path} failed with exit code {proc.returncode}")
    return {**result, "tree_pss_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[5000, 20000], help="images per run (multiple of 4)")
    ap.add_argument("--size", type=int, default=224, help="output resolution (ViT-B-32: 224)")
    ap.add_argument("--workers", type=int, default=0, help="preprocess workers (0 = all cores)")
    ap.add_argument("--synthetic", action="store_true", help="use generated images even if the sample is present")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (needs ~N x size² x 3 x 2 bytes)")
    ap.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.raw, args.out, args.size, args.workers)
        return

    sys.path.insert(0, str(ROOT / "src"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"preprocess benchmark: {args.size} px, {cores} cores, workers={args.workers or cores}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'N':>7} {'path':<6} {'img/s':>8} {'wall s':>8} {'maxrss MB':>10} {'tree PSS MB':>12}  notes")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        pool = None
        if SAMPLE.is_file() and not args.synthetic:
            pool = tmp / "sample"
            with zipfile.ZipFile(SAMPLE) as zf:
                zf.extractall(pool)  # our own trusted sample
        for n in args.n:
            raw = tmp / f"raw-{n}" / "images"
            kind = build_raw(n, raw, pool)
            n_real = 4 * (n // 4)
            rows = {}
            for path in ("ours", "naive"):
                out = tmp / f"out-{n}-{path}"
                rows[path] = r = measure(path, raw, out, args.size, args.workers)
                shutil.rmtree(out, ignore_errors=True)
                if path == "ours":
                    rate, note = n_real / r["wall_s"], "whole stage: hash, dedupe, decode, resize, write .npy"
                else:
                    rate = n_real / r["compute_s"]
                    note = f"open..stack; + np.save {r['save_s']:.1f} s -> {n_real / r['wall_s']:.0f} img/s"
                print(f"{n_real:>7} {path:<6} {rate:>8.0f} {r['wall_s']:>8.1f} {r['maxrss_mb']:>10.0f} "
                      f"{r['tree_pss_mb']:>12.0f}  {note}")
            speedup = (n_real / rows["ours"]["wall_s"]) / (n_real / rows["naive"]["compute_s"])
            print(f"{n_real:>7} ours/naive speed: {speedup:.2f}x (naive without its save), "
                  f"{rows['naive']['wall_s'] / rows['ours']['wall_s']:.2f}x (with it); images: {kind}")


if __name__ == "__main__":
    main()
