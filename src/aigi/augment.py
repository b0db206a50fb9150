"""Robustness augmentation (`finetune.augment`): Gaussian blur and JPEG re-compression of a random share of
each training batch, as Wang et al. (2020) trained CNN-image detectors to survive re-shared images.

Each image of a batch is blurred with probability `p` (sigma uniform in `blur_sigma`) and then,
independently, JPEG re-encoded with probability `p` (quality uniform over the integers of
`jpeg_quality`). Both act on the uint8 batch as the model receives it (S×S, after preprocess), so
sigma is in model-input pixels. Every draw comes from the generator the training loop seeds per
epoch and rank, a fixed number per batch, so a resumed run draws exactly the same numbers.

Where it runs: the blur is a separable depthwise convolution on the batch's device (one kernel per
image); JPEG goes through torchvision.io, on the GPU (nvJPEG) when the batch is there and this build of
torchvision can, else a round-trip through the CPU (libjpeg), image by image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from aigi.params import AugmentParams

DRAWS = 4  # per image and batch: blur?, sigma, jpeg?, quality


def apply(x: torch.Tensor, cfg: AugmentParams | None, generator: torch.Generator) -> torch.Tensor:
    """An N×H×W×3 uint8 batch with `cfg`'s blur and JPEG applied to a random share of its images, on its device.

    `cfg` None: the batch as it is, and nothing drawn from `generator`.
    """
    if cfg is None:
        return x
    u = torch.rand(len(x), DRAWS, generator=generator, device=x.device)
    if cfg.blur_sigma is not None:
        lo, hi = cfg.blur_sigma
        picked = torch.nonzero(u[:, 0] < cfg.p).flatten()
        if len(picked):
            x = x.clone()
            x[picked] = gaussian_blur(x[picked], lo + (hi - lo) * u[picked, 1])
    if cfg.jpeg_quality is not None:
        lo, hi = cfg.jpeg_quality
        picked = torch.nonzero(u[:, 2] < cfg.p).flatten()
        if len(picked):
            qualities = (lo + (u[picked, 3] * (hi - lo + 1)).floor()).clamp(max=hi).long()
            x = x.clone()
            x[picked] = jpeg(x[picked], qualities.tolist())
    return x


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """N×(2r+1) normalised 1-D Gaussian kernels, one per sigma (sigma near 0: the identity)."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp(min=1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """N×H×W×3 uint8, each image blurred with its own sigma (pixels), edges reflected; uint8 out."""
    n, h, w, c = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, h - 1, w - 1)  # reflect padding needs fewer than the image's side
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # one per (image, channel)
    planes = x.permute(0, 3, 1, 2).float().reshape(1, n * c, h, w)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
    return planes.reshape(n, c, h, w).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def jpeg(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """N×H×W×3 uint8, image i JPEG-encoded at `qualities[i]` and decoded, on x's device."""
    chw = x.permute(0, 3, 1, 2).contiguous()
    out = torch.empty_like(chw)
    on_device = chw.is_cuda
    for i, q in enumerate(qualities):
        if on_device:
            try:
                data = encode_jpeg(chw[i], quality=q).cpu()  # nvJPEG encodes on the GPU; decode reads host bytes
                out[i] = decode_jpeg(data, mode=ImageReadMode.RGB, device=chw.device)
                continue
            except (RuntimeError, TypeError):  # this torchvision build has no GPU JPEG: the CPU from here on
                on_device = False
        out[i] = decode_jpeg(encode_jpeg(chw[i].cpu(), quality=q), mode=ImageReadMode.RGB).to(chw.device)
    return out.permute(0, 2, 3, 1)
