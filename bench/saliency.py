"""Time per image of Grad-CAM saliency (src/aigi/saliency.py) against plain inference, per architecture.

    python bench/saliency.py                                             # aigi-tiny and the small ViT, CPU
    python bench/saliency.py --arch ViT-B-32 --device cuda --images 512  # the real architecture on a GPU

`aigi-vit-small32` (src/aigi/model_configs/) is a small ViT for CIFAKE at its native 32 px: 4 layers,
width 128, patch 4.
Random weights and random pixels: the time does not depend on either.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aigi import device
from aigi.inference import predict_proba
from aigi.model import create_detector
from aigi.saliency import saliency_maps

PROMPTS = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["aigi-tiny", "aigi-vit-small32"])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = device.resolve(args.device)
    print(f"device {dev}, {torch.get_num_threads()} CPU threads, {args.images} images, batch {args.batch_size}")
    for arch in args.arch:
        detector = create_detector(arch, "none", PROMPTS, dev, seed=0)
        images = np.random.default_rng(0).integers(0, 256, (args.images, detector.image_size, detector.image_size, 3),
                                                   dtype=np.uint8)
        sal = _time(lambda d=detector, x=images: saliency_maps(d, x, args.batch_size))
        inf = _time(lambda d=detector, x=images: predict_proba(d, x, args.batch_size))
        print(f"{arch:28s} {detector.image_size:4d} px  saliency {1000 * sal / args.images:7.2f} ms/img  "
              f"inference {1000 * inf / args.images:7.2f} ms/img  ({sal / inf:.1f}x)")


if __name__ == "__main__":
    main()
