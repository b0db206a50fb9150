"""A detector's classes: REAL (always index 0) then one class per trained generator, as preprocess
recorded them in the manifest; and the zero-shot prompt ensemble of each class.

Detection truth is `label_name != REAL` everywhere; P(fake) = 1 − P(REAL); the most likely generator
is the argmax over classes 1..N-1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aigi.errors import AigiError

REAL = "REAL"
DETECTION = (REAL, "FAKE")  # the two answers of detection, whatever the generators are


def from_manifest(manifest: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(classes, display names) recorded by preprocess in `manifest.json`."""
    classes = list(manifest.get("classes") or [])
    if len(classes) < 2 or classes[0] != REAL:
        raise AigiError(f"data/processed/manifest.json: classes {classes} must be {REAL} followed by at least one "
                        f"generator; re-run preprocess (dvc repro preprocess)")
    return classes, dict(manifest.get("display_names") or {})


def display(name: str, display_names: Mapping[str, str]) -> str:
    return display_names.get(name) or name


def is_fake(label_names: Sequence[str] | np.ndarray) -> np.ndarray:
    """Detection truth (1 = made by a generator) from class names."""
    return (np.asarray(label_names, dtype=object) != REAL).astype(int)


def class_prompts(
    classes: Sequence[str], display_names: Mapping[str, str], prompts: Mapping[str, list[str]], templates: Sequence[str]
) -> dict[str, list[str]]:
    """The prompt ensemble of each class, in class order: its own prompts from `zeroshot.prompts`, else
    `zeroshot.generator_templates` filled with the generator's display name."""
    unknown = sorted(set(prompts) - set(classes))
    if unknown:
        raise AigiError(f"zeroshot.prompts names {', '.join(unknown)}, not a class of this data (classes: "
                        f"{', '.join(classes)}); rename or remove it in params.yaml")
    out = {}
    for name in classes:
        if prompts.get(name):
            out[name] = list(prompts[name])
        elif name == REAL:
            raise AigiError(f"zeroshot.prompts needs prompts for {REAL}")
        else:
            out[name] = [t.format(name=display(name, display_names)) for t in templates]
    return out


def manifest_prompts(manifest: Mapping[str, Any], zeroshot: Any) -> dict[str, list[str]]:
    """`class_prompts` for the classes of `manifest` and the `zeroshot` params section."""
    classes, display_names = from_manifest(manifest)
    return class_prompts(classes, display_names, zeroshot.prompts, zeroshot.generator_templates)
