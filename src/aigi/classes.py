"""A detector's classes: REAL (always index 0) then one class per trained generator, as preprocess
recorded them in the manifest; and the zero-shot prompt ensemble of each class.

The one home of class logic: detection truth is `label_name != REAL` (`is_fake`); P(fake) =
1 − P(REAL) (`p_fake`); classes are ordered REAL first (`real_first`); the most likely generator is
the argmax over classes 1..N-1. Across datasets, a test set's classes (after its `class_aliases`)
are matched to a detector's by name (`detector_labels`): REAL is REAL, a generator the detector knows
is seen, any other is unseen (label -1, detection only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aigi.errors import AigiError

REAL = "REAL"
DETECTION = (REAL, "FAKE")  # the two answers of detection, whatever the generators are


def real_first(names: Iterable[str]) -> list[str]:
    """Distinct class names, REAL first, then the generators sorted case-insensitively: the order of a
    detector's classes, fixed at preprocess."""
    return sorted(set(names), key=lambda n: (n != REAL, n.lower(), n))


def from_manifest(manifest: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(classes, display names) recorded by preprocess in `manifest.json`."""
    classes = list(manifest.get("classes") or [])
    if len(classes) < 2 or classes[0] != REAL:
        raise AigiError(f"{manifest.get('dataset', 'the')} manifest.json: classes {classes} must be {REAL} followed "
                        f"by at least one generator; re-run preprocess (dvc repro)")
    return classes, dict(manifest.get("display_names") or {})


def alias(name: str, class_aliases: Mapping[str, str]) -> str:
    """A dataset's class name as the detector names it (`datasets.<name>.class_aliases`)."""
    return class_aliases.get(name, name)


def detector_labels(test_classes: Sequence[str], detector_classes: Sequence[str]) -> dict[str, int]:
    """Each class of a test set (after aliases) -> the detector's label index: REAL is 0, a generator the
    detector knows is its index (seen: detection and attribution), any other is -1 (unseen: detection
    only, as `evaluate.unseen_generators`)."""
    index = {c: i for i, c in enumerate(detector_classes)}
    return {c: index.get(c, -1) for c in test_classes}


def display(name: str, display_names: Mapping[str, str]) -> str:
    return display_names.get(name) or name


def is_fake(label_names: Sequence[str] | np.ndarray) -> np.ndarray:
    """Detection truth (1 = made by a generator) from class names."""
    return (np.asarray(label_names, dtype=object) != REAL).astype(int)


def p_fake(probs: np.ndarray) -> np.ndarray:
    """P(fake) = 1 − P(REAL) from class probabilities (REAL first): any generator counts as fake.
    Rows of an N×C array give N values; one image's C values give a 0-d array."""
    return 1.0 - np.asarray(probs)[..., 0]


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
