"""Where the detector looks: Grad-CAM on the CLIP image tower's patch tokens, batched, any device.

Method: Grad-CAM (Selvaraju et al. 2017) in its usual ViT form: the activations are the patch tokens
entering the last transformer block (the output of its first LayerNorm, `ln_1`; the block's own
output patch tokens never reach the CLS token, so their gradient is zero). Each token's channels are
weighted by the mean gradient of the decision score over all patch tokens; the positive part of the
weighted sum, one value per patch, is resized bilinearly to the input's size.

The decision score is the detector's own decision, in log-odds: log P(fake) - log P(REAL) for an image
it calls fake, the opposite for one it calls REAL. So a heatmap shows what pushed the model towards
the answer it gave. With several generators P(fake) = 1 - P(REAL), as everywhere in the project.

Written here rather than taken from the `grad-cam` package: that package needs OpenCV
(opencv-python-headless, ~50 MB), ttach and a ViT reshape hook of our own anyway, and works on
normalised float tensors, while this module is ~40 lines on the Detector's uint8 input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aigi.errors import AigiError
from aigi.model import Detector

BORDER_FRACTION = 0.125  # the border is the outer 1/8 of each side (a 4 px frame on a 32 px image)


def _last_block(detector: Detector) -> torch.nn.Module:
    blocks = getattr(getattr(detector.clip.visual, "transformer", None), "resblocks", None)
    if not blocks:
        raise AigiError("saliency needs a ViT image tower (open_clip VisionTransformer); this model has none; "
                        "use a ViT architecture (e.g. ViT-B-32, aigi-tiny)")
    return blocks[-1]


def saliency_maps(detector: Detector, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Grad-CAM heatmaps for an N×S×S×3 uint8 array: float32 N×S×S, each >= 0 with maximum 1 (all 0 when
    nothing supports the decision). fp32 on any device; the model's weights are not changed."""
    detector.eval()
    block = _last_block(detector)
    batch_first = getattr(detector.clip.visual.transformer, "batch_first", True)
    captured: list[torch.Tensor] = []
    hook = block.ln_1.register_forward_hook(lambda _m, _i, out: captured.append(out))
    out = np.empty(images.shape[:3], dtype=np.float32)
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            captured.clear()
            with torch.enable_grad():
                x = detector.normalise(batch).requires_grad_(True)  # the graph exists even with frozen weights
                logits = detector.logits(detector.clip.encode_image(x, normalize=True)).float()
                log_p = logits.log_softmax(dim=1)
                fake_vs_real = torch.logsumexp(log_p[:, 1:], dim=1) - log_p[:, 0]
                score = torch.where(fake_vs_real >= 0, fake_vs_real, -fake_vs_real)
                acts = captured[0]
                (grads,) = torch.autograd.grad(score.sum(), acts)
            if not batch_first:  # older open_clip: tokens × batch × width
                acts, grads = acts.transpose(0, 1), grads.transpose(0, 1)
            out[start : start + len(batch)] = _cam(acts.detach(), grads, detector.image_size)
    finally:
        hook.remove()
    return out


def _cam(acts: torch.Tensor, grads: torch.Tensor, size: int) -> np.ndarray:
    n, tokens = acts.shape[0], acts.shape[1]
    side = int(round((tokens - 1) ** 0.5))
    patches, g = acts[:, tokens - side * side :], grads[:, tokens - side * side :]  # drop CLS (and any prefix)
    cam = torch.relu((patches * g.mean(dim=1, keepdim=True)).sum(dim=-1)).view(n, 1, side, side)
    cam = F.interpolate(cam.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(n, 1, 1)
    return torch.nan_to_num(cam / peak).cpu().numpy()


def border_mask(size: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """True on the outer `fraction` of each side (at least one pixel) of a size×size image."""
    width = max(1, int(round(size * fraction)))
    mask = np.ones((size, size), dtype=bool)
    mask[width:-width, width:-width] = False
    return mask


def border_share(maps: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Share of each heatmap's mass in the border (see `border_mask`); NaN for an all-zero map."""
    mask = border_mask(maps.shape[-1], fraction)
    total = maps.sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, maps[:, mask].sum(axis=1, dtype=np.float64) / total, np.nan)


def uniform_border_share(size: int, fraction: float = BORDER_FRACTION) -> float:
    """The border's share of the area: what a model that looks everywhere equally would score."""
    return float(border_mask(size, fraction).mean())


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, scale: int = 1) -> np.ndarray:
    """An H×W×3 uint8 image blended with its heatmap (jet colour map), upscaled `scale`× by nearest neighbour."""
    from matplotlib import colormaps

    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour
    out = np.clip(blended, 0, 255).round().astype(np.uint8)
    return out.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else out
