"""Device, precision, autocast and compilation, chosen in one place: on CUDA bf16 autocast for training,
bf16 weights for inference, TF32, torch.compile by default; on CPU fp32 and eager."""

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


def inference_dtype(device: torch.device) -> torch.dtype:
    """The weights' dtype for scoring: bf16 on CUDA (the image tower cast once, see
    `Detector.inference_model`), fp32 elsewhere (CPU bf16 matrix products are slower, not faster)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """`auto`: torch.compile on CUDA, eager on CPU and MPS (compiling costs more there than it saves on
    short runs, and needs a C++ compiler); true/false force it."""
    if setting == "auto":
        return device.type == "cuda"
    if not isinstance(setting, bool):
        raise AigiError(f"compile must be auto, true or false; got {setting!r}")
    return setting


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
