"""Throughput of `aigi predict` (decode + shared resize + model, batched), in images/s.

    python bench/predict.py --images 1000                     # aigi-tiny, CPU
    python bench/predict.py --images 1000 --arch ViT-B-32     # the real architecture (random weights; a GPU helps)

Writes N random 32×32 JPEGs (CIFAKE-sized) to a temporary folder, saves a detector with random
weights (the speed does not depend on the weights), then times, on the same files: decoding and
resizing alone, and the whole `predict_paths` path that `aigi predict` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aigi import device
from aigi.data.images import load_rgb, to_model_input
from aigi.model import create_detector, load_detector, save_detector
from aigi.predict import predict_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--arch", default="aigi-tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=32, help="side of the input images in pixels")
    args = ap.parse_args()
    dev = device.resolve(args.device)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        files = []
        for i in range(args.images):
            path = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(path, quality=90)
            files.append(path)
        prompts = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}
        save_detector(create_detector(args.arch, "none", prompts, torch.device("cpu")), Path(tmp) / "model", {})
        detector, _ = load_detector(Path(tmp) / "model", dev)

        start = time.perf_counter()
        for i in range(0, len(files), args.batch_size):
            to_model_input([load_rgb(f) for f in files[i : i + args.batch_size]], detector.image_size)
        decode_s = time.perf_counter() - start

        list(predict_paths(detector, files[: args.batch_size], args.batch_size))  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        rows = list(predict_paths(detector, files, args.batch_size))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        total_s = time.perf_counter() - start
    assert len(rows) == len(files) and all("p_fake" in r for r in rows)
    print(f"predict bench: {args.images} images {args.size}px -> {detector.image_size}px, {args.arch}, {dev}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"  decode + resize only : {args.images / decode_s:8.1f} img/s")
    print(f"  aigi predict (total) : {args.images / total_s:8.1f} img/s")


if __name__ == "__main__":
    main()
