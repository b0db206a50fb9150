"""Robustness: the test split's original images perturbed, then resized and scored like clean ones.

Perturbations act on the images as stored in `data/raw` (32×32 for CIFAKE), before the resize to the
model's input, the way a re-shared or re-compressed image reaches a detector: JPEG re-encoding at a
quality, Gaussian blur of a standard deviation (in original pixels), and shrinking by a factor then
enlarging back (bicubic both ways). Each one then reaches the model's input by `model_input` with the
model's saved transform (JPEG alignment, resize mode), as in preprocess and `aigi predict`, on the
detector's device, and is scored by the same inference path.

Where each runs: rescale is the shared PIL-exact resize matrices (`images.resample`), batched on the
detector's device (GPU or CPU alike). JPEG and blur stay PIL on the CPU: nvJPEG's encoder
(torchvision `encode_jpeg` on CUDA) is not libjpeg, so its q50 is another perturbation, and PIL's
GaussianBlur is three passes of an extended box blur, from which a true Gaussian convolution differs
by up to 23 grey levels at sigma 2 (4 at 0.5): far beyond the pixel path's tolerance of 2.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter

from aigi import metrics
from aigi.data.images import BadImage, load_rgb, model_input, resample
from aigi.errors import AigiError
from aigi.inference import predict_proba
from aigi.model import Detector
from aigi.params import MAX_IMAGE_PIXELS, RobustnessParams
from aigi.progress import progress


@dataclass(frozen=True)
class Perturbation:
    kind: str  # jpeg | blur | rescale
    level: float
    apply: Callable[[Image.Image], Image.Image]
    batch: Callable[[torch.Tensor], torch.Tensor] | None = None  # N×H×W×3 uint8 on any device, if it has one

    @property
    def name(self) -> str:
        """Metric key: `jpeg_q50`, `blur_sigma1`, `rescale_0.5`."""
        prefix = {"jpeg": "jpeg_q", "blur": "blur_sigma", "rescale": "rescale_"}[self.kind]
        return f"{prefix}{self.level:g}"


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return apply


def blur(sigma: float) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img.filter(ImageFilter.GaussianBlur(radius=sigma))  # PIL's radius is the std. dev.


def rescale_batch(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Shrink by `factor`, then back to the original size, bicubic both ways, as PIL's resize does
    (the shared resize matrices), on the batch's device."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        return resample(resample(x, max(1, round(h * factor)), max(1, round(w * factor))), h, w)

    return apply


def rescale(factor: float) -> Callable[[Image.Image], Image.Image]:
    on_batch = rescale_batch(factor)
    return lambda img: Image.fromarray(on_batch(torch.from_numpy(np.array(img.convert("RGB")))[None])[0].numpy())


def perturbations(params: RobustnessParams) -> list[Perturbation]:
    return (
        [Perturbation("jpeg", q, jpeg(q)) for q in params.jpeg_quality]
        + [Perturbation("blur", s, blur(s)) for s in params.blur_sigma]
        + [Perturbation("rescale", f, rescale(f), rescale_batch(f)) for f in params.rescale]
    )


def perturbed(pert: Perturbation, originals: Sequence[np.ndarray], device: torch.device) -> list:
    """`pert` applied to each H×W×3 uint8 original: batched on `device` (equal sizes together) when it
    has a batch form, else through PIL; arrays or tensors, for `to_model_tensor`."""
    if pert.batch is None:
        return [np.asarray(pert.apply(Image.fromarray(img)), dtype=np.uint8) for img in originals]
    out: list = [None] * len(originals)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(originals):
        by_shape.setdefault(img.shape, []).append(i)
    for idx in by_shape.values():
        result = pert.batch(torch.from_numpy(np.stack([originals[i] for i in idx])).to(device))
        for k, i in enumerate(idx):
            out[i] = result[k]
    return out


def _load_original(raw_root: Path, file: str, max_pixels: int) -> np.ndarray:
    try:
        return load_rgb(raw_root / file, max_pixels)
    except BadImage as e:
        raise AigiError(f"{raw_root / file}: {e}; data/raw no longer matches data/processed, "
                        f"re-run download and preprocess (dvc repro)") from None


def evaluate_robustness(
    detector: Detector, raw_root: Path, files: Sequence[str], y: np.ndarray, params: RobustnessParams,
    threshold: float, seed: int, batch_size: int, max_pixels: int = MAX_IMAGE_PIXELS,
) -> dict[str, dict[str, Any]]:
    """Metrics (as `metrics.evaluate`, plus kind and level) per perturbation, keyed by its name.

    `files` are the test split's originals relative to `raw_root` (the `file` column of test.csv).
    Each chunk is decoded once and perturbed every way, so memory stays flat in the split's size.
    """
    perts = perturbations(params)
    device = detector.mean.device
    p_fake = {pert.name: np.empty(len(files)) for pert in perts}
    chunk = max(batch_size, 256)
    with progress(total=len(files) * len(perts), desc="robustness", unit="img", leave=False) as bar:
        for start in range(0, len(files), chunk):
            originals = [_load_original(raw_root, f, max_pixels) for f in files[start : start + chunk]]
            for pert in perts:
                pixels = model_input(perturbed(pert, originals, device), detector.image_size,
                                     **detector.input_transform, device=device)
                p_fake[pert.name][start : start + len(originals)] = predict_proba(detector, pixels, batch_size)
                bar.update(len(originals))
    return {
        pert.name: {"kind": pert.kind, "level": pert.level,
                    **metrics.evaluate(y, p_fake[pert.name], threshold, params.bootstrap_samples, seed)}
        for pert in perts
    }


def summary_table(clean: dict[str, Any], results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per condition (clean first): perturbation, kind, level, accuracy, ROC-AUC, ... and the drop."""
    rows = [{"perturbation": "clean", "kind": "clean", "level": np.nan,
             **{k: clean[k] for k in metrics.SCALARS}}]
    rows += [{"perturbation": name, "kind": r["kind"], "level": r["level"], **{k: r[k] for k in metrics.SCALARS}}
             for name, r in results.items()]
    frame = pd.DataFrame(rows)
    frame["accuracy_drop"] = clean["accuracy"] - frame["accuracy"]
    return frame
