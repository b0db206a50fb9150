"""A dataset whose classes differ only in their container: REAL saved as JPEG, FAKE as PNG, the same scenes.

The pixels of both classes come from one generator of scenes (aigi.data.synthetic.scene, no fingerprint),
so the only difference a detector can learn is what the container did to them: JPEG's 8×8 block artefacts
on REAL. It is GenImage's leak in miniature (Grommelt et al. 2024): the audit must flag it, a detector
trained on it learns it, and `preprocess.jpeg_align` at REAL's quality must take it away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aigi.data.synthetic import scene

REAL_QUALITY = 75
NOISE = 40.0  # grey levels of sensor noise on top of the scene's own: what JPEG smooths away and PNG keeps


def write_container_leak(dest: Path, train_per_class: int, test_per_class: int, seed: int = 0,
                         quality: int = REAL_QUALITY, noise: float = NOISE) -> Path:
    """`dest/{train,test}/{REAL,FAKE}/`: REAL as JPEG at `quality`, FAKE as PNG; returns `dest`."""
    for split_index, (split, n) in enumerate((("train", train_per_class), ("test", test_per_class))):
        for label_index, label in enumerate(("REAL", "FAKE")):
            folder = dest / split / label
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, split_index, label_index])
            for i in range(n):
                pixels = scene(rng) + rng.normal(0, noise, (32, 32, 3))
                img = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
                if label == "REAL":
                    img.save(folder / f"{i:04d}.jpg", quality=quality)
                else:
                    img.save(folder / f"{i:04d}.png")
    return dest
