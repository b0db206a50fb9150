"""Use a trained detector on anyone's images: the same decode and resize path as preprocess."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aigi.data.images import BadImage, is_image_file, load_rgb, to_model_input
from aigi.errors import AigiError
from aigi.inference import predict_proba
from aigi.model import Detector
from aigi.params import CLASSES


def expand(inputs: Iterable[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> a sorted list of files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            files.append(path)
        elif matches := sorted(glob.glob(item, recursive=True)):
            files += [Path(m) for m in matches if Path(m).is_file()]
        else:
            files.append(path)  # reported as not found, in order
    if not files:
        raise AigiError("no input images; give files, folders or glob patterns")
    return files


def predict_paths(
    detector: Detector, files: list[Path], batch_size: int = 64, threshold: float = 0.5,
    max_pixels: int = 50_000_000,
) -> Iterator[dict[str, Any]]:
    """One row per file: path, p_fake, label, or path and error when the file cannot be read."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        decoded: list[tuple[Path, np.ndarray | None, str]] = []
        for f in chunk:
            try:
                decoded.append((f, load_rgb(f, max_pixels), ""))
            except BadImage as e:
                decoded.append((f, None, str(e)))
        good = [img for _, img, _ in decoded if img is not None]
        pixels = to_model_input(good, detector.image_size)
        probs = iter(predict_proba(detector, pixels, batch_size)) if good else iter(())
        for f, img, err in decoded:
            if img is None:
                yield {"path": str(f), "error": err}
            else:
                p = float(next(probs))
                yield {"path": str(f), "p_fake": round(p, 6), "label": CLASSES[int(p >= threshold)]}
