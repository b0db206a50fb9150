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

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from aigi.calibration import decision_threshold
from aigi.classes import DETECTION, REAL, is_fake, real_first
from aigi.errors import AigiError
from aigi.model import Detector
from aigi.params import ExplainParams

BORDER_FRACTION = 0.125  # the border is the outer 1/8 of each side (a 4 px frame on a 32 px image)


def _last_block(detector: Detector) -> torch.nn.Module:
    blocks = getattr(getattr(detector.clip.visual, "transformer", None), "resblocks", None)
    if not blocks:
        raise AigiError("saliency needs a ViT image tower (open_clip VisionTransformer); this model has none; "
                        "use a ViT architecture (e.g. ViT-B-32, aigi-tiny)")
    return blocks[-1]


def saliency_maps(detector: Detector, images: np.ndarray, batch_size: int = 64, threshold: float = 0.5) -> np.ndarray:
    """Grad-CAM heatmaps for an N×S×S×3 uint8 array: float32 N×S×S, each >= 0 with maximum 1 (all 0 when
    nothing supports the decision, fake iff P(fake) >= threshold). fp32 on any device; weights unchanged."""
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
                called_fake = fake_vs_real >= float(np.log(threshold / (1 - threshold)))
                score = torch.where(called_fake, fake_vs_real, -fake_vs_real)
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
    side = round((tokens - 1) ** 0.5)
    patches, g = acts[:, tokens - side * side :], grads[:, tokens - side * side :]  # drop CLS (and any prefix)
    cam = torch.relu((patches * g.mean(dim=1, keepdim=True)).sum(dim=-1)).view(n, 1, side, side)
    cam = F.interpolate(cam.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(n, 1, 1)
    return torch.nan_to_num(cam / peak).cpu().numpy()


def border_mask(size: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """True on the outer `fraction` of each side (at least one pixel) of a size×size image."""
    width = max(1, round(size * fraction))
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


def class_names(table: pd.DataFrame) -> list[str]:
    """The classes in the table, in the class model's order (REAL first)."""
    names = table["label_name"].astype(str) if "label_name" in table else table["label"].map(dict(enumerate(DETECTION)))
    return real_first(names)


def pick_examples(predictions: pd.DataFrame, threshold: float, count: int) -> dict[str, dict[str, list[int]]]:
    """Per class: the row indices of the `count` most confident correct detections and the `count` most
    confident mistakes (detection: P(fake) >= threshold vs REAL), most confident first."""
    names = predictions["label_name"].astype(str) if "label_name" in predictions else None
    fake_pred = predictions["p_fake"].to_numpy() >= threshold
    confidence = np.where(fake_pred, predictions["p_fake"], 1 - predictions["p_fake"])
    correct = fake_pred == is_fake(predictions["label_name"].astype(str)).astype(bool)
    out: dict[str, dict[str, list[int]]] = {}
    for name in class_names(predictions):
        in_class = (names == name).to_numpy() if names is not None else (
            predictions["label"].to_numpy() == (0 if name == REAL else 1))
        picks = {}
        for kind, ok in (("correct", correct), ("mistakes", ~correct)):
            idx = np.flatnonzero(in_class & ok)
            picks[kind] = idx[np.argsort(-confidence[idx], kind="stable")][:count].tolist()
        out[name] = picks
    return out


def border_summary(maps: np.ndarray, names: list[str] | np.ndarray, fraction: float) -> dict[str, float]:
    """Mean border share of the heatmaps, overall (`all`) and per class name; all-zero maps are left out."""
    share = border_share(maps, fraction)
    names = np.asarray(names)
    out = {"all": _mean(share)}
    for name in class_names(pd.DataFrame({"label_name": names})):
        out[name] = _mean(share[names == name])
    return out


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 4) if len(values) else float("nan")


def grid_figure(panels: dict[str, tuple[Detector, pd.DataFrame]], images: np.ndarray, threshold: float,
                count: int, batch_size: int, path: Path) -> None:
    """One PNG (`threshold`: the decision of a model that saved none of its own): per model (side by side, e.g.
    fine-tuned and zero-shot), one row per class; per row the
    `count` most confident correct images and the `count` most confident mistakes, each as the image the
    model saw and its Grad-CAM overlay, nearest-neighbour (no smoothing of small images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tile = 1.6  # inches, 160 px at 100 dpi: a 32 px image at 5x, a 224 px one at 0.7x
    names = class_names(next(iter(panels.values()))[1])
    cols = 4 * count
    fig = plt.figure(figsize=(len(panels) * cols * tile * 1.05 + 0.5, len(names) * tile * 1.25 + 0.5))
    for sub, (title, (detector, predictions)) in zip(fig.subfigures(1, len(panels), wspace=0.02), panels.items(),
                                                     strict=True):
        decision = decision_threshold(detector.threshold, threshold)  # the model's own, as evaluate scored it
        picks = pick_examples(predictions, decision, count)
        chosen = sorted({i for p in picks.values() for idx in p.values() for i in idx})
        rows = predictions.iloc[chosen]
        maps = dict(zip(chosen, saliency_maps(detector, images[rows["index"].to_numpy()], batch_size, decision),
                        strict=True)) if chosen else {}
        sub.suptitle(f"{title}: most confident correct | most confident mistakes", fontsize=10)
        axes = sub.subplots(len(names), cols, squeeze=False,
                            gridspec_kw={"wspace": 0.05, "hspace": 0.25, "left": 0.04, "right": 0.99, "top": 0.86,
                                         "bottom": 0.02})
        for r, name in enumerate(names):
            slots = [*picks[name]["correct"], *[None] * (count - len(picks[name]["correct"])),
                     *picks[name]["mistakes"], *[None] * (count - len(picks[name]["mistakes"]))]
            for c, i in enumerate(slots):
                for ax in axes[r, 2 * c : 2 * c + 2]:
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for side in ax.spines.values():
                        side.set_visible(False)
                if i is None:
                    if c in (0, count):  # the first empty slot says why it is empty
                        axes[r, 2 * c].text(0.5, 0.5, "no mistakes" if c == count else "none correct",
                                            ha="center", va="center", fontsize=8, color="grey")
                    continue
                image = images[int(predictions.iloc[i]["index"])]
                axes[r, 2 * c].imshow(image, interpolation="nearest")
                axes[r, 2 * c + 1].imshow(overlay(image, maps[i]), interpolation="nearest")
                axes[r, 2 * c].set_title(f"P(fake) {predictions.iloc[i]['p_fake']:.2f}", fontsize=7)
            axes[r, 0].set_ylabel(name, fontsize=9)
            axes[r, 0].spines["left"].set_visible(False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarise(models: dict[str, tuple[Detector, pd.DataFrame]], images: np.ndarray, table: pd.DataFrame,
              cfg: ExplainParams, seed: int, threshold: float = 0.5) -> dict[str, Any]:
    """`metrics/saliency.json`: the mean border share per model and class over a seeded subset of the test split."""
    n = len(images) if cfg.max_images is None else min(cfg.max_images, len(images))
    rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    names = np.asarray(table["label_name"].astype(str) if "label_name" in table else
                       np.where(table["label"].to_numpy() == 0, *DETECTION))[rows]
    result: dict[str, Any] = {
        "border_fraction": cfg.border_fraction,
        "uniform_border_share": round(uniform_border_share(images.shape[1], cfg.border_fraction), 4),
        "n": int(n), "border_share": {},
    }
    for title, (detector, _) in models.items():
        maps = saliency_maps(detector, images[rows], cfg.batch_size, decision_threshold(detector.threshold, threshold))
        result["border_share"][title.replace("-", "")] = border_summary(maps, names, cfg.border_fraction)
    return result


def mlflow_metrics(result: dict[str, Any]) -> dict[str, float]:
    """`test_saliency_border_share[_<CLASS>]` and `zeroshot_saliency_border_share[_<CLASS>]`."""
    prefixes = {"finetuned": "test_", "zeroshot": "zeroshot_"}
    out = {}
    for model, shares in result["border_share"].items():
        for name, value in shares.items():
            suffix = "" if name == "all" else "_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            out[f"{prefixes.get(model, model + '_')}saliency_border_share{suffix}"] = value
    return out
