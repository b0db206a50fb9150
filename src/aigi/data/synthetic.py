"""A synthetic stand-in for CIFAKE (or a multi-generator dataset), for the offline demo and the tests.

REAL and FAKE images share one generator of smooth, colourful "scenes"; FAKE images then carry the
fingerprints that real generators leave: a faint period-2 interleaving pattern (the periodic
artefacts of transposed-convolution upsampling) and over-saturated colour. The difference is genuine
and learnable, but not visible to a model that has not been trained on it, so fine-tuning must beat
zero-shot. The artefact alternates along rows only, so it survives the horizontal flips that training
uses as augmentation (a checkerboard would change phase under a flip of an even-width image).
More generators (`datasets.<name>.synthetic_generators`) each get their own stripe period, phase, colour
cast and saturation (`generator_fingerprint`), so attribution is learnable too.
Deterministic by seed; written as PNG files in the CIFAKE layout so every later stage treats it
exactly like the real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
CONTENT_CLASSES = 10  # file names carry a CIFAKE-style "(k)" suffix, k = 1..10


def scene(rng: np.random.Generator) -> np.ndarray:
    """A smooth random RGB scene: a few coloured Gaussian blobs over a gradient, plus sensor noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    img = rng.uniform(40, 200, 3)[None, None, :] + rng.normal(0, 40, 3) * yy[..., None]
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0, 1, 2)
        r = rng.uniform(0.1, 0.35)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = img + blob[..., None] * rng.normal(0, 60, 3)[None, None, :]
    img = img + rng.normal(0, 4, img.shape)
    return img.astype(np.float32)


def fake_fingerprint(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first generator's fingerprints: period-2 row interleaving and boosted saturation."""
    rows = np.where(np.arange(SIZE) % 2 == 0, 1.0, -1.0)[:, None, None]
    img = img + rows * rng.uniform(14, 22)
    return saturate(img, rng.uniform(1.7, 2.2))


def saturate(img: np.ndarray, factor: float) -> np.ndarray:
    grey = img.mean(axis=2, keepdims=True)
    return grey + (img - grey) * factor


def row_pattern(img: np.ndarray, period: int, phase: float, amplitude: float) -> np.ndarray:
    """A row-periodic stripe (upsampling artefact of a given stride): rows only, so it survives horizontal flips."""
    rows = np.cos(2 * np.pi * (np.arange(SIZE) + phase) / period)[:, None, None]
    return img + rows * amplitude


def colour_cast(img: np.ndarray, channel: int, amount: float) -> np.ndarray:
    """A generator's colour bias: one channel shifted up, the others down."""
    shift = np.full(3, -amount / 2)
    shift[channel] = amount
    return img + shift[None, None, :]


def generator_fingerprint(index: int, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generator `index`'s fingerprints; index 0 is the CIFAKE-like demo's FAKE, unchanged.

    Others differ in stripe period (3..7) and phase, colour cast channel and sign, and saturation:
    distinct for the first 30 generators, each learnable from 32-pixel crops.
    """
    if index == 0:
        return fake_fingerprint(img, rng)
    k = index - 1
    img = row_pattern(img, 3 + k % 5, (k // 5) % 2 * 0.5, rng.uniform(12, 18))
    img = colour_cast(img, (k // 10) % 3, (1 if k % 2 == 0 else -1) * rng.uniform(18, 26))
    return saturate(img, rng.uniform(1.3, 1.6) if k % 3 else rng.uniform(0.5, 0.7))


REGIONS = ("full", "center", "corner")


def region_mask(region: str) -> np.ndarray:
    """Where FAKE images carry their fingerprint: the whole image, the central half of each side
    (16×16 of 32), or the top-left quarter (16×16); lets a test check where saliency points."""
    mask = np.zeros((SIZE, SIZE, 1), dtype=np.float32)
    half = SIZE // 2
    if region == "full":
        mask[:] = 1
    elif region == "center":
        mask[half // 2 : half // 2 + half, half // 2 : half // 2 + half] = 1
    elif region == "corner":
        mask[:half, :half] = 1
    else:
        raise ValueError(f"artifact region must be one of {', '.join(REGIONS)}, got {region!r}")
    return mask


def file_name(index: int, content_class: int) -> str:
    """CIFAKE's naming (as PNG): `0007.png` for content class 1, `0007 (k).png` for k = 2..10."""
    return f"{index:04d}.png" if content_class == 1 else f"{index:04d} ({content_class}).png"


def write_synthetic(
    dest: Path, train_per_class: int, test_per_class: int, seed: int, generators: Sequence[str] = ("FAKE",),
    artifact_region: str = "full",
) -> dict[str, int]:
    """Write `dest/{train,test}/{REAL,<generator>...}/*.png`; returns the count per `split/CLASS`.
    `train_per_class` 0 writes `test/` alone: a test-only dataset.

    Each generator (in the given order) gets its own fingerprint; the default one generator, FAKE,
    makes the same images as the 2-class demo always has. `artifact_region` confines every
    generator's fingerprint to part of the image (see `region_mask`).
    """
    mask = region_mask(artifact_region)
    counts: dict[str, int] = {}
    labels = ["REAL", *generators]
    for split_index, (split, n) in enumerate((("train", train_per_class), ("test", test_per_class))):
        if n == 0:
            continue
        for label_index, label in enumerate(labels):
            folder = dest / split / label
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, split_index, label_index])
            for i in range(n):
                img = scene(rng)
                if label_index:
                    img = img + mask * (generator_fingerprint(label_index - 1, img, rng) - img)
                pixels = np.clip(img, 0, 255).round().astype(np.uint8)
                name = file_name(i // CONTENT_CLASSES, i % CONTENT_CLASSES + 1)
                Image.fromarray(pixels).save(folder / name, optimize=False)
            counts[f"{split}/{label}"] = n
    return counts
