"""Every speed path of issue 19 in one run: the table (img/s, TFLOP/s, share of peak, peak GPU memory)
and where the time goes, per path. Installs nothing, downloads nothing, writes only under --out.

    python bench/gpu.py --out $OUT             # on the GPU: ViT-B-32 at 224 px, random weights, ~6 minutes
    python bench/gpu.py --out /tmp/b --tiny    # on the CPU: aigi-tiny, a few images, well under a minute

Paths (the rows of the issue's table): train `full`; train `contrastive` (text tower every step);
zero-shot / evaluate forward; explain (Grad-CAM forward + backward); `aigi predict` from 32 px JPEG
files and from 12-MP JPEG photos (generated here); the evaluate stage's work (clean scoring + metrics
+ robustness) on N images. Each runs the project's own functions (aigi.train.train,
aigi.inference.class_probs, aigi.saliency.saliency_maps, aigi.predict.predict_paths,
aigi.robustness.evaluate_robustness), so it measures what the pipeline runs.

Each path has a time budget (--budget-s, seconds) that sizes its timed loop, and the run stops
starting new paths once --total-s is spent; every path's row is written to DIR/gpu.json (or
DIR/cpu-tiny.json) as soon as it is done, so a run cut short still leaves what it measured. A path
that fails records its one-line error and the run goes on.

FLOPs per image are counted with torch's FlopCounterMode on the path's own callable (training:
forward + backward of one step at the run's batch size, divided by it; explain: the Grad-CAM forward
and backward). "Where the time goes" profiles one further stretch of each path with torch.profiler:
GPU kernels, host-to-device and device-to-host copies, and the rest of the wall time (host-side
preparation, Python and launch overhead, GPU idle); the predict paths also time decode and resize
on their own. On the CPU, "kernels" is the operators' own CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own start/stop chatter
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aigi.classes import p_fake  # noqa: E402
from aigi.data.images import decode_images, to_model_tensor  # noqa: E402
from aigi.device import inference_dtype, resolve, use_compile  # noqa: E402
from aigi.inference import class_probs  # noqa: E402
from aigi.methods import METHODS  # noqa: E402
from aigi.model import create_detector, load_detector, save_detector  # noqa: E402
from aigi.params import FinetuneParams, RobustnessParams  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16
PROMPTS = {"REAL": ["a real photo.", "a photograph."], "FAKE": ["an AI-generated image.", "a synthetic image."]}


# ---- sizes ----------------------------------------------------------------------------------------------------

GPU = {"model": "ViT-B-32", "train_n": 16384, "batch": 512, "infer_n": 65536, "explain_n": 4096, "files_32": 8192,
       "photos": 64, "photo_side": (3000, 4000), "eval_n": 20000, "budget_s": 45.0, "total_s": 330.0}
TINY = {"model": "aigi-tiny", "train_n": 96, "batch": 32, "infer_n": 512, "explain_n": 64, "files_32": 128,
        "photos": 2, "photo_side": (750, 1000), "eval_n": 32, "budget_s": 2.0, "total_s": 240.0}  # "12 MP": 0.75 MP


# ---- measuring ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def count_flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@contextlib.contextmanager
def profiled(device: torch.device, out: dict[str, Any]):
    """Profile the block; fill `out` with the wall time and its split (seconds and shares)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        yield
        sync(device)
    wall = time.perf_counter() - t0
    out.update(split_time(prof, wall, device))


def split_time(prof, wall: float, device: torch.device) -> dict[str, Any]:
    """Kernels, copies and the rest, from the profiler's events (microseconds summed, as seconds)."""
    from torch.autograd import DeviceType

    kernels = h2d = d2h = 0.0
    if device.type == "cuda":
        for e in prof.events():
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.time_range.elapsed_us()
            if "HtoD" in e.name:
                h2d += us
            elif "DtoH" in e.name:
                d2h += us
            else:
                kernels += us  # kernels, device-to-device copies and memsets
    else:
        kernels = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::"))
    kernels, h2d, d2h = kernels / 1e6, h2d / 1e6, d2h / 1e6
    rest = max(0.0, wall - kernels - h2d - d2h)
    parts = {"kernels_s": kernels, "h2d_s": h2d, "d2h_s": d2h, "host_python_idle_s": rest}
    return {"profiled_wall_s": wall, **parts,
            **{k.replace("_s", "_share"): (v / wall if wall > 0 else None) for k, v in parts.items()}}


def timed_loop(fn: Callable[[int], int], device: torch.device, budget_s: float, max_steps: int) -> tuple[float, int]:
    """Run fn(step) -> images until the budget or max_steps; (seconds, images)."""
    sync(device)
    t0, seen, step = time.perf_counter(), 0, 0
    while step < max_steps and (step == 0 or time.perf_counter() - t0 < budget_s):
        seen += fn(step)
        step += 1
    sync(device)
    return time.perf_counter() - t0, seen


# ---- the paths ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: dict[str, Any], device: torch.device):
        self.args, self.sizes, self.device = args, sizes, device
        self.batch = args.batch_size or sizes["batch"]
        self.budget = args.budget_s or sizes["budget_s"]
        self.model = args.model or sizes["model"]
        self.compile: bool | str = {"auto": "auto", "true": True, "false": False}[args.compile]
        self.tmp = Path(tempfile.mkdtemp(prefix="aigi-bench-"))
        self.size = create_detector(self.model, "none", PROMPTS, torch.device("cpu")).image_size
        self.rng = np.random.default_rng(0)

    def detector(self):
        return create_detector(self.model, "none", PROMPTS, self.device, seed=0)

    def images(self, n: int, size: int | None = None) -> np.ndarray:
        size = size or self.size
        return self.rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    # -- training: aigi.train.train; epoch 1 warms up (compiles), epoch 2 is timed, epoch 3 profiled
    def train(self, method: str) -> dict[str, Any]:
        from aigi.train import ClassLogits, train, trainable_parameters

        n = self.sizes["train_n"]
        images, labels = self.images(n), np.arange(n) % 2
        val = (images[: self.batch], labels[: self.batch])
        cfg = FinetuneParams(method=method, epochs=3, lr=1e-5, batch_size=self.batch, warmup_fraction=0.0,
                             early_stopping_patience=0, eval_batch_size=self.batch, compile=self.compile,
                             augment_flip=True)
        det = self.detector()
        where: dict[str, Any] = {}
        prof_cm = profiled(self.device, where)

        entered = []

        def on_epoch(row):
            if row["epoch"] == 2:
                prof_cm.__enter__()
                entered.append(True)

        reset_memory(self.device)
        try:
            result = train(det, (images, labels), val, cfg, PROMPTS, seed=0, on_epoch=on_epoch)
        finally:
            if entered:  # also when training failed: a profiler left running would break the next path
                prof_cm.__exit__(None, None, None)
        img_s = result.history[1]["images_per_second"]
        # FLOPs of one training step (forward, loss, backward) at this batch size, per image.
        flop_det = self.detector()
        trainable_parameters(flop_det, cfg)
        forward = ClassLogits(flop_det, METHODS[method], PROMPTS, text_trainable=True)
        x = torch.from_numpy(images[: self.batch]).to(self.device)
        y = torch.from_numpy(labels[: self.batch]).to(self.device)
        flops = count_flops(lambda: torch.nn.functional.cross_entropy(forward(x).float(), y).backward()) / self.batch
        where["note"] = "epoch 3 of 3 (training + validation pass), profiled"
        return {"img_s": img_s, "flops_per_image": flops, "peak_gpu_gib": peak_memory_gib(self.device),
                "images": n, "batch": self.batch, "compile": use_compile(self.compile, self.device),
                "where": where}

    # -- zero-shot / evaluate forward: class_probs on a resident uint8 split (bf16 weights on CUDA)
    def forward(self) -> dict[str, Any]:
        det = self.detector().eval()
        n = self.sizes["infer_n"]
        data = torch.randint(0, 256, (n, self.size, self.size, 3), dtype=torch.uint8, device=self.device)  # resident
        bs = self.batch * 2
        class_probs(det, data[: bs * 2], bs, compile=self.compile)  # warm-up (and compile)
        reset_memory(self.device)
        chunk = bs * 8
        seconds, seen = timed_loop(lambda s: len(class_probs(det, data[(s * chunk) % n:][:chunk], bs,
                                                             compile=self.compile)),
                                   self.device, self.budget / 2, max(1, n // chunk))
        where: dict[str, Any] = {}
        with profiled(self.device, where):
            class_probs(det, data[:chunk], bs, compile=self.compile)
        model = det.inference_model(inference_dtype(self.device))
        flops = count_flops(lambda: model(data[:1]))
        return {"img_s": seen / seconds, "flops_per_image": flops, "peak_gpu_gib": peak_memory_gib(self.device),
                "images": seen, "batch": bs, "dtype": str(inference_dtype(self.device)),
                "compile": self.compile is True, "where": where}

    # -- explain: Grad-CAM forward + backward, as the report and `aigi predict --explain` run it
    def explain(self) -> dict[str, Any]:
        from aigi.saliency import saliency_maps

        det = self.detector().eval()
        n = self.sizes["explain_n"]
        data = self.images(n)
        bs = self.batch // 2
        saliency_maps(det, data[:bs], bs)  # warm-up
        reset_memory(self.device)
        seconds, seen = timed_loop(lambda s: len(saliency_maps(det, data[(s * bs) % n:][:bs], bs)),
                                   self.device, self.budget / 2, max(1, n // bs))
        where: dict[str, Any] = {}
        with profiled(self.device, where):
            saliency_maps(det, data[: bs * 2], bs)
        flops = count_flops(lambda: saliency_maps(det, data[:1], 1))
        return {"img_s": seen / seconds, "flops_per_image": flops, "peak_gpu_gib": peak_memory_gib(self.device),
                "images": seen, "batch": bs, "where": where}

    # -- aigi predict on a folder of JPEG files: predict_paths, as the CLI runs it
    def predict_files(self, kind: str) -> dict[str, Any]:
        from PIL import Image

        from aigi.predict import predict_paths

        folder = self.tmp / f"files-{kind}"
        folder.mkdir()
        if kind == "32px":
            file_px, files = "32x32", []
            for i in range(self.sizes["files_32"]):
                files.append(folder / f"{i:06d}.jpg")
                Image.fromarray(self.rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(files[-1], quality=90)
        else:  # one 12-MP photo-like JPEG, copied: decoding does not depend on which one
            h, w = self.sizes["photo_side"]
            file_px = f"{w}x{h}"
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            base = np.stack([128 + 90 * np.sin(xx / (40 + 9 * c)) * np.cos(yy / (55 - 7 * c)) for c in range(3)], -1)
            photo = np.clip(base + self.rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(photo).save(folder / "000000.jpg", quality=92)
            data = (folder / "000000.jpg").read_bytes()
            files = [folder / f"{i:06d}.jpg" for i in range(self.sizes["photos"])]
            for f in files[1:]:
                f.write_bytes(data)
            files[0] = folder / "000000.jpg"
        model_dir = self.tmp / f"model-{kind}"
        save_detector(create_detector(self.model, "none", PROMPTS, torch.device("cpu"), seed=0), model_dir, {})
        det, _ = load_detector(model_dir, self.device)
        bs = 64
        list(predict_paths(det, files[:bs], bs))  # warm-up
        reset_memory(self.device)
        n = len(files)
        seconds, seen = timed_loop(lambda s: len(list(predict_paths(det, files[(s * bs) % n:][:bs], bs))),
                                   self.device, self.budget / 2, max(1, n // bs))
        # Decode and resize on their own, on the same files.
        part = files[: min(n, bs * 4)]
        sync(self.device)
        t0 = time.perf_counter()
        decoded = [decode_images(part[i : i + bs], self.device) for i in range(0, len(part), bs)]
        sync(self.device)
        t1 = time.perf_counter()
        for d in decoded:
            to_model_tensor(d, det.image_size, self.device)
        sync(self.device)
        t2 = time.perf_counter()
        where: dict[str, Any] = {"decode_img_s": len(part) / (t1 - t0), "resize_img_s": len(part) / (t2 - t1),
                                 "decoded_on": "gpu (nvJPEG)" if isinstance(decoded[0][0], torch.Tensor)
                                 and decoded[0][0].is_cuda else "cpu (PIL)"}
        with profiled(self.device, where):
            list(predict_paths(det, part, bs))
        model = det.inference_model(inference_dtype(self.device))
        x = torch.zeros((1, det.image_size, det.image_size, 3), dtype=torch.uint8, device=self.device)
        flops = count_flops(lambda: model(x))
        return {"img_s": seen / seconds, "flops_per_image": flops, "peak_gpu_gib": peak_memory_gib(self.device),
                "images": seen, "batch": bs, "file_px": file_px, "where": where}

    # -- the evaluate stage's work: clean scoring + metrics (bootstrap) + robustness on N raw images
    def evaluate(self) -> dict[str, Any]:
        from PIL import Image

        from aigi import metrics
        from aigi.robustness import evaluate_robustness

        n = self.sizes["eval_n"]
        raw = self.tmp / "raw"
        raw.mkdir()
        names = []
        for i in range(n):
            names.append(f"{i:06d}.jpg")
            Image.fromarray(self.rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(raw / names[-1], quality=90)
        y = np.arange(n) % 2
        det = self.detector().eval()
        test = to_model_tensor([np.asarray(Image.open(raw / f).convert("RGB")) for f in names], det.image_size,
                               torch.device("cpu")).numpy()
        bs = 256
        class_probs(det, test[:bs], bs)  # warm-up
        reset_memory(self.device)
        where: dict[str, Any] = {}
        sync(self.device)
        t0 = time.perf_counter()
        clean = metrics.evaluate(y, p_fake(class_probs(det, test, bs)), 0.5, 1000, 0)
        t1 = time.perf_counter()
        with profiled(self.device, where):
            evaluate_robustness(det, raw, names, y, RobustnessParams(), 0.5, 0, bs)
        t2 = time.perf_counter()
        where.update(clean_scoring_and_metrics_s=t1 - t0, robustness_s=t2 - t1)
        return {"seconds": t2 - t0, "img_s": n / (t2 - t0), "images": n, "clean_accuracy": clean["accuracy"],
                "peak_gpu_gib": peak_memory_gib(self.device), "where": where,
                "note": "robustness: 9 perturbations (params defaults), metrics with their bootstrap intervals"}


# ---- the run --------------------------------------------------------------------------------------------------


def environment(device: torch.device, tiny: bool) -> dict[str, Any]:
    import open_clip
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"label": ("CPU, aigi-tiny: proves the script runs; NOT a GPU figure" if tiny or device.type != "cuda"
                      else f"GPU: {gpu}"),
            "device": gpu or f"cpu ({torch.get_num_threads()} threads)", "machine": platform.platform(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "open_clip": getattr(open_clip, "__version__", "unknown"),
            "cuda": torch.version.cuda, "commit": commit,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def finish_row(row: dict[str, Any], peak: float | None) -> dict[str, Any]:
    if "flops_per_image" in row and row.get("img_s"):
        row["tflops"] = row["img_s"] * row["flops_per_image"] / 1e12
        row["share_of_peak"] = row["tflops"] / peak if peak else None
    return row


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| path | img/s | TFLOP/s | share of peak | peak GPU memory | kernels / H2D / rest of wall |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {r.get('error') or r.get('skipped')} | | | | |")
            continue
        w = r.get("where", {})
        split = (f"{w['kernels_share']:.0%} / {w['h2d_share']:.0%} / {w['host_python_idle_share']:.0%}"
                 if w.get("kernels_share") is not None else "")
        tf = f"{r['tflops']:.3g}" if r.get("tflops") is not None else ""
        share = f"{r['share_of_peak']:.1%}" if r.get("share_of_peak") is not None else "-"
        mem = f"{r['peak_gpu_gib']:.1f} GiB" if r.get("peak_gpu_gib") is not None else "-"
        img_s = f"{r['img_s']:,.0f}" + (f" ({r['seconds']:.1f} s)" if "seconds" in r else "")
        lines.append(f"| {name} | {img_s} | {tf} | {share} | {mem} | {split} |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON and the Markdown table")
    ap.add_argument("--tiny", action="store_true", help="CPU, aigi-tiny, a few images: checks the script runs")
    ap.add_argument("--model", default=None, help="open_clip architecture (default ViT-B-32; aigi-tiny with --tiny)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (inference uses twice it)")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                    help="torch.compile for training and inference: auto = on for CUDA")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds per path's timed loop")
    ap.add_argument("--total-s", type=float, default=None, help="start no new path after this many seconds")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: bf16 dense by name)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these paths")
    args = ap.parse_args(argv)

    device = torch.device("cpu") if args.tiny else resolve("auto")
    sizes = TINY if args.tiny or device.type != "cuda" else GPU
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / ("gpu.json" if device.type == "cuda" and not args.tiny else "cpu-tiny.json")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)
    bench = Bench(args, sizes, device)
    paths: dict[str, Callable[[], dict[str, Any]]] = {
        "train_full": lambda: bench.train("full"),
        "train_contrastive": lambda: bench.train("contrastive"),
        "zeroshot_forward": bench.forward,
        "explain_gradcam": bench.explain,
        "predict_files_32px": lambda: bench.predict_files("32px"),
        "predict_files_12mp": lambda: bench.predict_files("12mp"),
        "evaluate_with_robustness": bench.evaluate,
    }
    env = environment(device, args.tiny)
    payload: dict[str, Any] = {**env, "model": bench.model, "image_size": bench.size, "peak_tflops": peak,
                               "args": {k: str(v) for k, v in vars(args).items()}, "rows": {},
                               "not_run": {"dvc_repro_after_download": "needs the CIFAKE download and a pipeline "
                                           "workspace; time `dvc repro` after `dvc repro download@cifake` by hand"}}
    print(f"{env['label']}; model {bench.model} at {bench.size} px; torch {torch.__version__}; writing {out_file}")
    total = args.total_s or sizes["total_s"]
    t_start = time.perf_counter()
    for name, fn in paths.items():
        if args.only is not None and name not in args.only:
            continue
        elapsed = time.perf_counter() - t_start
        if elapsed > total:
            payload["rows"][name] = {"skipped": f"not started: {elapsed:.0f} s of the {total:.0f} s budget spent"}
            continue
        t0 = time.perf_counter()
        try:
            row = finish_row(fn(), peak)
        except Exception as e:  # one path failing must not lose the others
            msg = " ".join(str(e).split())[:300]
            row = {"error": f"{type(e).__name__}: {msg}"}
        row["path_seconds"] = time.perf_counter() - t0
        payload["rows"][name] = row
        print(f"  {name}: " + (f"{row['img_s']:,.1f} img/s" if "img_s" in row else row.get("error", "")) +
              f" ({row['path_seconds']:.1f} s)", flush=True)
        write_json(out_file, payload)
    payload["total_seconds"] = time.perf_counter() - t_start
    write_json(out_file, payload)
    md = table(payload["rows"])
    (args.out / out_file.with_suffix(".md").name).write_text(f"{env['label']}\n\n{md}\n")
    print(md)
    return 1 if any("error" in r for r in payload["rows"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
