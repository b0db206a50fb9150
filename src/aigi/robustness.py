"""Robustness: the test split's original images perturbed, then resized and scored like clean ones.

Perturbations act on the images as stored in `data/raw` (32×32 for CIFAKE), before the resize to the
model's input, the way a re-shared or re-compressed image reaches a detector: JPEG re-encoding at a
quality, Gaussian blur of a standard deviation (in original pixels), and shrinking by a factor then
enlarging back (bicubic both ways). Each one then reaches the model's input by `model_input` with the
model's saved transform (JPEG alignment, resize mode), as in preprocess and `aigi predict`, and is
scored by the same inference path.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from aigi import metrics
from aigi.data.images import BadImage, load_rgb, model_input
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


def rescale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        small = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        return img.resize(small, Image.Resampling.BICUBIC).resize(img.size, Image.Resampling.BICUBIC)

    return apply


def perturbations(params: RobustnessParams) -> list[Perturbation]:
    return (
        [Perturbation("jpeg", q, jpeg(q)) for q in params.jpeg_quality]
        + [Perturbation("blur", s, blur(s)) for s in params.blur_sigma]
        + [Perturbation("rescale", f, rescale(f)) for f in params.rescale]
    )


def _load_original(raw_root: Path, file: str, max_pixels: int) -> Image.Image:
    try:
        return Image.fromarray(load_rgb(raw_root / file, max_pixels))
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
    p_fake = {pert.name: np.empty(len(files)) for pert in perts}
    chunk = max(batch_size, 256)
    with progress(total=len(files) * len(perts), desc="robustness", unit="img", leave=False) as bar:
        for start in range(0, len(files), chunk):
            originals = [_load_original(raw_root, f, max_pixels) for f in files[start : start + chunk]]
            for pert in perts:
                pixels = model_input([np.asarray(pert.apply(img), dtype=np.uint8) for img in originals],
                                     detector.image_size, **detector.input_transform)
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
