"""Benchmark: images/s of the fine-tuning step and of zero-shot inference, the engine vs a naive reference.

Same images (real CIFAKE JPEGs from the shared sample when present, else synthetic ones), same model,
same process. The engine: uint8 arrays at the model's resolution (what preprocess writes), memory-mapped
or resident on the GPU, normalised and flipped on the device, bf16 autocast on CUDA (aigi.train.train
and aigi.inference.predict_proba themselves). The naive reference: PIL-decoded files, torchvision
transforms (bicubic Resize, ToTensor, Normalize), a DataLoader, fp32.

    python bench/finetune.py                      # CPU: aigi-tiny, 1,024 images
    python bench/finetune.py --n 20000            # on a GPU the defaults are ViT-B-32 at 224 px
    python bench/finetune.py --model ViT-B-32 --batch-size 256 --method full --compile

Prints images/s, the speed-up over the reference, peak GPU memory, and the model FLOP utilisation
(forward FLOPs counted with torch's FlopCounterMode; training counted as 3x forward).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aigi.data.images import load_rgb, to_model_input
from aigi.data.synthetic import write_synthetic
from aigi.device import resolve
from aigi.inference import predict_proba
from aigi.methods import METHODS
from aigi.model import create_detector
from aigi.params import FinetuneParams, ZeroshotParams
from aigi.train import train, trainable_parameters

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake-sample" / "cifake-sample.zip"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense


def image_files(n: int, folder: Path) -> tuple[list[Path], np.ndarray]:
    """n JPEGs on disk, half REAL, half FAKE: from the CIFAKE sample if present, else synthetic."""
    per_class = n // 2
    if SAMPLE.is_file():
        with zipfile.ZipFile(SAMPLE) as z:
            names = [m for m in z.namelist() if m.endswith(".jpg")]
            chosen = [m for c in ("REAL", "FAKE") for m in [x for x in names if f"/{c}/" in x][:per_class]]
            z.extractall(folder, chosen)
        source = "CIFAKE sample"
    else:
        write_synthetic(folder, per_class, 1, seed=0)
        chosen = [str(p.relative_to(folder)) for c in ("REAL", "FAKE") for p in sorted(folder.glob(f"train/{c}/*"))]
        source = "synthetic"
    files = [folder / m for m in chosen]
    labels = np.array([int("/FAKE/" in f.as_posix()) for f in files])
    print(f"data: {len(files)} {source} JPEGs")
    return files, labels


class NaiveFiles(Dataset):
    """The reference input pipeline: one PIL decode and torchvision transform per image, per epoch."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


def naive_loader(files, labels, detector, batch_size, workers, shuffle, device) -> DataLoader:
    from torchvision import transforms as T

    pp = {"mean": detector.mean.flatten().tolist(), "std": detector.std.flatten().tolist()}
    if detector.fused_normalisation:  # the image tower takes 0..255 pixels (normalisation folded into its conv1)
        pp = {"mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3}  # the same per-pixel work as Normalize
    transform = T.Compose([T.Resize(detector.image_size, interpolation=T.InterpolationMode.BICUBIC),
                           T.CenterCrop(detector.image_size), T.ToTensor(), T.Normalize(pp["mean"], pp["std"])])
    return DataLoader(NaiveFiles(files, labels, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_train(detector, loader, cfg: FinetuneParams, device) -> float:
    """fp32 training steps on normalised NCHW floats from the DataLoader; images/s of the second epoch."""
    params = trainable_parameters(detector, cfg)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    detector.train()
    speed = 0.0
    for _ in range(2):  # the first epoch warms up workers and kernels
        seen, t0 = 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = detector.head(detector.clip.encode_image(x, normalize=True))
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(y)
        sync(device)
        speed = seen / (time.perf_counter() - t0)
    return speed


@torch.no_grad()
def naive_predict(detector, loader, device) -> float:
    detector.eval()
    for x, _ in loader:  # warm-up pass
        detector.head(detector.clip.encode_image(x.to(device), normalize=True)).softmax(1)[:, 1].cpu()
        break
    seen, t0 = 0, time.perf_counter()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        detector.head(detector.clip.encode_image(x, normalize=True)).softmax(1)[:, 1].cpu()
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def forward_flops(detector, device) -> float:
    """FLOPs of one image through the image tower and head (the part both paths run per image)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, detector.image_size, detector.image_size, 3), dtype=torch.uint8, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        detector(x)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return None


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000 if cuda else 1024, help="number of images")
    ap.add_argument("--model", default="ViT-B-32" if cuda else "aigi-tiny")
    ap.add_argument("--pretrained", default="none", help="weights do not change the speed")
    ap.add_argument("--method", default="full", choices=list(METHODS))
    ap.add_argument("--batch-size", type=int, default=256 if cuda else 64)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1) if cuda else 2,
                    help="DataLoader workers of the naive reference")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the engine's training forward")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (bf16 dense on GPUs)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    device = resolve(args.device)
    prompts = ZeroshotParams().prompts
    detector = create_detector(args.model, args.pretrained, prompts, device)
    size = detector.image_size
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads); model {args.model} at {size} px; batch {args.batch_size}")
    cfg = FinetuneParams(method=args.method, epochs=2, lr=1e-5, batch_size=args.batch_size, warmup_fraction=0.0,
                         early_stopping_patience=0, eval_batch_size=args.batch_size * 2, compile=args.compile)
    rows: dict[str, dict] = {}

    with tempfile.TemporaryDirectory() as tmp:
        files, labels = image_files(args.n, Path(tmp) / "jpeg")
        # The engine's input: what the preprocess stage writes (not timed here; see bench/preprocess.py).
        array = np.lib.format.open_memmap(Path(tmp) / "train.npy", "w+", np.uint8, (len(files), size, size, 3))
        for start in range(0, len(files), 1024):
            array[start : start + 1024] = to_model_input([load_rgb(f) for f in files[start : start + 1024]], size)
        array.flush()
        array = np.load(Path(tmp) / "train.npy", mmap_mode="r")
        val = (array[:64], labels[:64])

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = train(detector, (array, labels), val, cfg, prompts, seed=0)
        rows["train_engine"] = {"img_s": result.history[-1]["images_per_second"], **peak_memory(device)}

        engine = create_detector(args.model, args.pretrained, prompts, device)
        predict_proba(engine, array[: args.batch_size * 2], args.batch_size * 2)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        predict_proba(engine, array, args.batch_size * 2)
        rows["zeroshot_engine"] = {"img_s": len(array) / (time.perf_counter() - t0), **peak_memory(device)}

        if not args.skip_naive:
            naive = create_detector(args.model, args.pretrained, prompts, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loader = naive_loader(files, labels, naive, args.batch_size, args.workers, True, device)
            rows["train_naive"] = {"img_s": naive_train(naive, loader, cfg, device), **peak_memory(device)}
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loader = naive_loader(files, labels, naive, args.batch_size * 2, args.workers, False, device)
            rows["zeroshot_naive"] = {"img_s": naive_predict(naive, loader, device), **peak_memory(device)}

    flops = forward_flops(engine, device)
    peak = peak_tflops(device, args.peak_tflops)
    print(f"\nforward: {flops / 1e9:.3f} GFLOPs/image (image tower + head); training counted as 3x")
    print(f"{'step':<18}{'images/s':>12}{'vs naive':>10}{'TFLOP/s':>10}{'MFU':>8}{'peak GPU mem':>14}")
    for name, row in rows.items():
        kind, path = name.split("_")
        achieved = row["img_s"] * flops * (3 if kind == "train" else 1) / 1e12
        row.update(tflops=achieved, mfu=achieved / peak if peak else None)
        naive_row = rows.get(f"{kind}_naive")
        speedup = f"{row['img_s'] / naive_row['img_s']:.1f}x" if naive_row and path == "engine" else ""
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        mem = f"{row['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in row else "-"
        print(f"{kind + ' ' + path:<18}{row['img_s']:>12,.0f}{speedup:>10}{achieved:>10.2f}{mfu:>8}{mem:>14}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "gflops_forward": flops / 1e9, "rows": rows}, indent=2))


def peak_memory(device: torch.device) -> dict[str, float]:
    return {"peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}


if __name__ == "__main__":
    main()
