"""Batched inference over memory-mapped uint8 images: class probabilities and P(fake) per image."""

from __future__ import annotations

import numpy as np
import torch

from aigi.classes import p_fake
from aigi.device import autocast, maybe_resident
from aigi.model import Detector
from aigi.progress import progress


@torch.no_grad()
def class_probs(detector: Detector, images: np.ndarray, batch_size: int, desc: str = "predict") -> np.ndarray:
    """Softmax over the detector's classes for each row of an N×S×S×3 uint8 array (memory-mapped is
    fine); float64 N×C, columns in `detector.classes` order (REAL first)."""
    detector.eval()
    device = detector.mean.device
    out = np.empty((len(images), len(detector.classes)), dtype=np.float64)
    source = maybe_resident(images, device)  # on a GPU with room: one upload, then slices on the device
    with progress(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), batch_size):
            if isinstance(source, torch.Tensor):
                batch = source[start : start + batch_size]
            else:
                batch = torch.from_numpy(np.array(source[start : start + batch_size]))  # copy out of the memmap
                if device.type == "cuda":
                    batch = batch.pin_memory()
            with autocast(device):
                logits = detector(batch.to(device, non_blocking=True))
            out[start : start + len(batch)] = logits.float().softmax(dim=1).cpu().numpy()
            bar.update(len(batch))
    return out


def predict_proba(detector: Detector, images: np.ndarray, batch_size: int, desc: str = "predict") -> np.ndarray:
    """P(fake) for each row of an N×S×S×3 uint8 array; float64 N."""
    return p_fake(class_probs(detector, images, batch_size, desc))
