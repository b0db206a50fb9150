"""Batched inference over memory-mapped uint8 images: class probabilities and P(fake) per image."""

from __future__ import annotations

import numpy as np
import torch

from aigi.classes import p_fake
from aigi.device import inference_dtype, maybe_resident, use_compile
from aigi.model import Detector
from aigi.progress import progress

# `compile="auto"` compiles only calls at least this large: compiling a ViT-B takes tens of seconds,
# which pays off over a large split, not over one batch of `aigi predict`.
AUTO_COMPILE_MIN_IMAGES = 50_000


@torch.no_grad()
def class_probs(
    detector: Detector, images: np.ndarray | torch.Tensor, batch_size: int, desc: str = "predict",
    compile: bool | str = "auto",
) -> np.ndarray:
    """Softmax over the detector's classes for each row of an N×S×S×3 uint8 array (memory-mapped is
    fine, or a uint8 tensor already on the device); float64 N×C, columns in `detector.classes` order (REAL first).

    On CUDA the image tower runs in bf16 weights (logits in fp32); `compile` (auto/true/false, see
    `device.use_compile`; `auto` also needs `AUTO_COMPILE_MIN_IMAGES` images) torch.compiles it, with
    the last batch padded to the batch size so one compiled graph serves every batch.
    """
    detector.eval()
    device = detector.mean.device
    compiled = use_compile(compile, device) and (compile is True or len(images) >= AUTO_COMPILE_MIN_IMAGES)
    model = detector.inference_model(inference_dtype(device), compiled)
    out = torch.empty((len(images), len(detector.classes)), dtype=torch.float32, device=device)
    # On a GPU with room: one upload, then slices on the device. A tensor is used where it is.
    source = images.to(device) if isinstance(images, torch.Tensor) else maybe_resident(images, device)
    with progress(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), batch_size):
            if isinstance(source, torch.Tensor):
                batch = source[start : start + batch_size]
            else:
                batch = torch.from_numpy(np.array(source[start : start + batch_size]))  # copy out of the memmap
                if device.type == "cuda":
                    batch = batch.pin_memory()
            n = len(batch)
            batch = batch.to(device, non_blocking=True)
            if compiled and n < batch_size:
                batch = torch.cat([batch, batch.new_zeros((batch_size - n, *batch.shape[1:]))])
            out[start : start + n] = model(batch)[:n].softmax(dim=1)  # stays on the device: no sync per batch
            bar.update(n)
    return out.cpu().double().numpy()


def predict_proba(
    detector: Detector, images: np.ndarray | torch.Tensor, batch_size: int, desc: str = "predict",
    compile: bool | str = "auto",
) -> np.ndarray:
    """P(fake) for each row of an N×S×S×3 uint8 array; float64 N."""
    return p_fake(class_probs(detector, images, batch_size, desc, compile))
