"""Device, precision and autocast, chosen in one place: bf16 autocast + TF32 on CUDA, fp32 on CPU."""

from __future__ import annotations

import contextlib

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
