"""Device, precision and autocast, chosen in one place: bf16 autocast + TF32 on CUDA, fp32 on CPU."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from aigi.errors import AigiError


def resolve(name: str = "auto") -> torch.device:
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        name = "cuda" if torch.cuda.is_available() else "mps" if mps and mps.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise AigiError(f"model.device is '{name}' but no CUDA GPU is visible; use `auto` or `cpu`")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 mixed precision on CUDA; plain fp32 elsewhere (CPU autocast is slower than it saves)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_resident(images: np.ndarray, device: torch.device, share: float = 0.5) -> np.ndarray | torch.Tensor:
    """A whole uint8 split on the GPU when it takes under `share` of the free memory (one copy, then
    batches are gathered on the device); otherwise the memory-mapped array, sliced per batch."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes < free * share:
            resident = torch.empty(images.shape, dtype=torch.uint8, device=device)
            step = max(1, (256 << 20) // max(1, images[0].nbytes))  # 256 MB at a time: no host-side copy of it all
            for i in range(0, len(images), step):
                resident[i : i + step].copy_(torch.from_numpy(np.array(images[i : i + step])))
            return resident
    return images
