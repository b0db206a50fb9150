"""CIFAKE's content classes: the CIFAR-10 subject its file names carry, and detection accuracy per subject.

CIFAKE file names end in " (k)" with k = 2..10, or no suffix for k = 1. The k appear to follow
CIFAR-10's class order; the dataset's authors do not document it, so reports call it an observation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np

from aigi.classes import DETECTION

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CONTENT_SUFFIX = re.compile(r"^\d+(?: \((\d+)\))?$")


def content_class(file: str) -> str | None:
    """The CIFAR-10 subject a CIFAKE file name suggests (`0 (3).jpg` -> bird), or None if it carries none."""
    match = _CONTENT_SUFFIX.match(PurePosixPath(file).stem)
    if not match:
        return None
    k = int(match.group(1) or 1)
    return CIFAR10_CLASSES[k - 1] if 1 <= k <= len(CIFAR10_CLASSES) else None


def per_content_class(
    files: Sequence[str], y: np.ndarray, p_fake: np.ndarray, threshold: float
) -> dict[str, dict[str, dict[str, float]]] | None:
    """Accuracy per subject and per REAL/FAKE, when every file name carries a subject; else None."""
    subjects = [content_class(f) for f in files]
    if not subjects or None in subjects:
        return None
    subjects_arr = np.array(subjects)
    correct = (p_fake >= threshold).astype(int) == y
    out: dict[str, dict[str, dict[str, float]]] = {}
    for subject in CIFAR10_CLASSES:
        row = {}
        for label, name in enumerate(DETECTION):
            mask = (subjects_arr == subject) & (y == label)
            if mask.any():
                row[name] = {"n": int(mask.sum()), "accuracy": float(correct[mask].mean())}
        if row:
            out[subject] = row
    return out
