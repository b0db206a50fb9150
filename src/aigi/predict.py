"""Use a trained detector on anyone's images: the same decode and resize path as preprocess."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from aigi.classes import DETECTION, p_fake
from aigi.data.images import BadImage, decode_images, is_image_file, model_input
from aigi.errors import AigiError
from aigi.inference import class_probs
from aigi.model import Detector
from aigi.params import MAX_IMAGE_PIXELS

T = TypeVar("T")


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


def predict_images(
    detector: Detector, items: Sequence[T], decode: Callable[[T], np.ndarray] | None = None, batch_size: int = 64,
    explain: Callable[[list[T], np.ndarray], list[Any]] | None = None,
    decode_batch: Callable[[Sequence[T]], list[Any]] | None = None,
) -> Iterator[tuple]:
    """(item, class probabilities, "") per item in order, or (item, None, reason) when `decode` raises `BadImage`.

    Decodes, resizes and scores one batch at a time, so memory is bounded by the batch, not the input.
    `decode_batch`, instead of `decode`, decodes a whole batch (e.g. `decode_images` on the GPU): one
    array, tensor or `BadImage` per item. The resize runs on the detector's device.
    `explain(items, model_inputs)`, when given, is called once per batch with its readable items and
    returns one value per item, yielded as a fourth element (None for an unreadable item).
    """
    device = detector.mean.device
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        results = decode_batch(chunk) if decode_batch is not None else [_decode_one(decode, item) for item in chunk]
        decoded = [(item, None, str(r)) if isinstance(r, BadImage) else (item, r, "")
                   for item, r in zip(chunk, results, strict=True)]
        good = [img for _, img, _ in decoded if img is not None]
        pixels = model_input(good, detector.image_size, **detector.input_transform, device=device)  # as in training
        probs = iter(class_probs(detector, pixels, batch_size) if good else ())
        if explain is None:
            for item, img, err in decoded:
                yield (item, None, err) if img is None else (item, next(probs), "")
            continue
        readable = [item for item, img, _ in decoded if img is not None]
        extra = iter(explain(readable, pixels.cpu().numpy()) if good else ())
        for item, img, err in decoded:
            yield (item, None, err, None) if img is None else (item, next(probs), "", next(extra))


def _decode_one(decode: Callable[[T], np.ndarray], item: T) -> np.ndarray | BadImage:
    try:
        return decode(item)
    except BadImage as e:
        return e


def output_columns(classes: Sequence[str]) -> list[str]:
    """What a prediction answers: `p_fake` and `label`; with several generators also the most likely
    `generator` and `p_<CLASS>` per class."""
    return ["p_fake", "label"] + (["generator", *(f"p_{c}" for c in classes)] if len(classes) > 2 else [])


def answer(classes: Sequence[str], probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """One prediction's `output_columns`: P(fake) = 1 − P(REAL); the generator is the argmax over the generators."""
    p = float(p_fake(probs))
    row: dict[str, Any] = {"p_fake": p, "label": DETECTION[int(p >= threshold)]}
    if len(classes) > 2:
        row["generator"] = classes[1 + int(np.argmax(probs[1:]))]
        row |= {f"p_{c}": float(v) for c, v in zip(classes, probs, strict=True)}
    return row


def predict_paths(
    detector: Detector, files: list[Path], batch_size: int = 64, threshold: float = 0.5,
    max_pixels: int = MAX_IMAGE_PIXELS, explain_dir: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One row per file: path and `output_columns`, or path and error when the file cannot be read.

    With `explain_dir`, each readable file also gets a Grad-CAM PNG there, named in the row's `explain`."""
    explain = overlay_writer(detector, explain_dir, threshold) if explain_dir is not None else None
    device = detector.mean.device
    for f, probs, err, *png in predict_images(detector, files, None, batch_size, explain,
                                              decode_batch=lambda fs: decode_images(fs, device, max_pixels)):
        if probs is None:
            yield {"path": str(f), "error": err}
        else:
            row = answer(detector.classes, probs, threshold)
            yield {"path": str(f), **{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()},
                   **({"explain": png[0]} if png else {})}


def overlay_writer(
    detector: Detector, folder: Path, threshold: float = 0.5, min_side: int = 256,
) -> Callable[[list[Path], np.ndarray], list[str]]:
    """For `predict_images(explain=...)`: writes `<stem>.saliency.png` (the image the model saw beside its
    Grad-CAM overlay, upscaled by nearest neighbour to at least `min_side` px) per file; returns the paths.
    Names that repeat (same stem in two folders) get -2, -3, ... in input order."""
    from PIL import Image

    from aigi.saliency import overlay, saliency_maps

    folder.mkdir(parents=True, exist_ok=True)
    used: dict[str, int] = {}

    def write(files: list[Path], pixels: np.ndarray) -> list[str]:
        maps = saliency_maps(detector, pixels, len(pixels), threshold)
        scale = -(-min_side // pixels.shape[1])
        paths = []
        for f, img, heat in zip(files, pixels, maps, strict=True):
            used[f.stem] = used.get(f.stem, 0) + 1
            name = f.stem + (f"-{used[f.stem]}" if used[f.stem] > 1 else "") + ".saliency.png"
            side_by_side = np.concatenate([img.repeat(scale, 0).repeat(scale, 1), overlay(img, heat, scale=scale)], 1)
            partial = folder / (name + ".partial")
            Image.fromarray(side_by_side).save(partial, format="PNG")
            partial.replace(folder / name)  # never a half-written PNG under the final name
            paths.append(str(folder / name))
        return paths

    return write
