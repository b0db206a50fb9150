"""Raw CIFAKE files -> CLIP-ready arrays: dedupe, subsample, split, decode, upsample, write.

Output in `data/processed/`: `{train,val,test}.npy` (N×S×S×3 uint8, memory-mappable),
`{train,val,test}.csv` (file, label, label_name) and `manifest.json`. Decoding runs in worker
processes; the main process resizes each chunk as a batched matrix product and appends it to the
array on disk, so memory stays flat in N.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.data.images import INTERPOLATION, BadImage, is_image_file, load_rgb, to_model_input
from aigi.data.store import ArrayWriter, atomic_dir
from aigi.errors import AigiError
from aigi.params import CLASSES, PreprocessParams
from aigi.progress import progress


@dataclass
class Candidate:
    file: str  # path relative to the raw root, e.g. "train/FAKE/0001 (3).jpg"
    label: int
    sha256: str


@dataclass
class SplitPlan:
    """Which files go into which output split, and what was dropped on the way."""

    splits: dict[str, list[Candidate]]
    duplicates: dict[str, Any] = field(default_factory=dict)
    ignored_non_images: int = 0


def scan(raw: Path) -> tuple[dict[str, list[Candidate]], int]:
    """List the image files of `raw/{train,test}/{REAL,FAKE}`, with their content hashes."""
    out: dict[str, list[Candidate]] = {"train": [], "test": []}
    ignored = 0
    for split in out:
        for label, name in enumerate(CLASSES):
            folder = raw / split / name
            if not folder.is_dir():
                raise AigiError(f"{folder} is missing; re-run the download stage (dvc repro download)")
            for f in sorted(folder.iterdir()):
                if not f.is_file() or not is_image_file(f):
                    ignored += 1
                    continue
                digest = hashlib.sha256(f.read_bytes()).hexdigest()
                out[split].append(Candidate(f.relative_to(raw).as_posix(), label, digest))
    return out, ignored


def dedupe(found: dict[str, list[Candidate]], drop_train_copies_of_test: bool) -> tuple[dict, dict]:
    """Drop exact duplicates within each split, and train copies of test images; report both."""
    report: dict[str, Any] = {}
    kept: dict[str, list[Candidate]] = {}
    for split, items in found.items():
        seen: set[str] = set()
        kept[split] = []
        for c in items:
            if c.sha256 not in seen:
                seen.add(c.sha256)
                kept[split].append(c)
        report[f"within_{split}_dropped"] = len(items) - len(kept[split])
    test_hashes = {c.sha256 for c in kept["test"]}
    shared = [c for c in kept["train"] if c.sha256 in test_hashes]
    report["train_test_shared"] = len(shared)
    report["train_copies_of_test_dropped"] = 0
    if drop_train_copies_of_test and shared:
        kept["train"] = [c for c in kept["train"] if c.sha256 not in test_hashes]
        report["train_copies_of_test_dropped"] = len(shared)
    report["train_test_shared_examples"] = [c.file for c in shared[:10]]
    return kept, report


def subsample(items: list[Candidate], per_class: int | str, rng: np.random.Generator, split: str) -> list[Candidate]:
    out = []
    for label, name in enumerate(CLASSES):
        pool = [c for c in items if c.label == label]
        if per_class == "all":
            out += pool
            continue
        if per_class > len(pool):
            raise AigiError(
                f"preprocess.{split}_per_class is {per_class} but {split}/{name} has only {len(pool)} "
                f"usable images; lower it or use `all`"
            )
        picks = rng.choice(len(pool), size=per_class, replace=False)
        out += [pool[i] for i in sorted(picks)]
    return out


def plan(raw: Path, params: PreprocessParams, seed: int) -> SplitPlan:
    found, ignored = scan(raw)
    kept, dup_report = dedupe(found, params.drop_train_duplicates_of_test)
    rng = np.random.default_rng(seed)
    train = subsample(kept["train"], params.train_per_class, rng, "train")
    test = subsample(kept["test"], params.test_per_class, rng, "test")
    # Stratified validation split carved from train; the test split is never touched by training.
    val_idx: list[int] = []
    for label in range(len(CLASSES)):
        idx = [i for i, c in enumerate(train) if c.label == label]
        n_val = max(1, round(len(idx) * params.val_fraction))
        val_idx += list(rng.choice(idx, size=n_val, replace=False))
    val_set = set(val_idx)
    splits = {
        "train": [c for i, c in enumerate(train) if i not in val_set],
        "val": [c for i, c in enumerate(train) if i in val_set],
        "test": test,
    }
    return SplitPlan(splits, dup_report, ignored)


def _decode(job: tuple[list[str], int]) -> list[tuple[np.ndarray | None, str]]:
    """Worker: decode a chunk of files; (RGB array, note) or (None, reason) per file."""
    paths, max_pixels = job
    out: list[tuple[np.ndarray | None, str]] = []
    for p in paths:
        try:
            img = load_rgb(p, max_pixels)
            out.append((img, "" if img.shape[:2] == (32, 32) else "not 32x32"))
        except BadImage as e:
            out.append((None, str(e)))
    return out


def run(raw: Path, dest: Path, params: PreprocessParams, seed: int, image_size: int) -> dict[str, Any]:
    """The preprocess stage: plan the splits, then decode, resize and write each one."""
    split_plan = plan(raw, params, seed)
    workers = params.workers or os.cpu_count() or 1
    manifest: dict[str, Any] = {
        "image_size": image_size,
        "interpolation": INTERPOLATION,
        "seed": seed,
        "classes": list(CLASSES),
        "duplicates": split_plan.duplicates,
        "ignored_non_image_files": split_plan.ignored_non_images,
        "splits": {},
        "skipped": [],
    }
    ctx = mp.get_context("spawn" if os.name == "nt" else "forkserver")
    with atomic_dir(dest) as out, ctx.Pool(workers) as pool:
        for split, items in split_plan.splits.items():
            manifest["splits"][split] = _write_split(
                split, items, raw, out, params, image_size, pool, manifest["skipped"]
            )
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_split(split, items, raw, out, params, image_size, pool, skipped) -> dict[str, Any]:
    writer = ArrayWriter(out / f"{split}.npy", len(items), (image_size, image_size, 3))
    rows: list[Candidate] = []
    notes: Counter[str] = Counter()
    chunks = [items[i : i + params.chunk_size] for i in range(0, len(items), params.chunk_size)]
    jobs = [([str(raw / c.file) for c in chunk], params.max_image_pixels) for chunk in chunks]
    with progress(total=len(items), desc=f"preprocess {split}", unit="img") as bar:
        for chunk, decoded in zip(chunks, pool.imap(_decode, jobs), strict=True):
            good = []
            for cand, (img, note) in zip(chunk, decoded, strict=True):
                if img is None:
                    if params.on_bad_image == "fail":
                        raise AigiError(
                            f"{cand.file}: {note}; fix or remove it, or set preprocess.on_bad_image: skip"
                        )
                    skipped.append({"file": cand.file, "reason": note})
                    continue
                if note:
                    notes[note] += 1
                good.append(img)
                rows.append(cand)
            if good:
                writer.append(to_model_input(good, image_size))
            bar.update(len(chunk))
    digest = writer.close()
    pd.DataFrame(
        {"file": [c.file for c in rows], "label": [c.label for c in rows],
         "label_name": [CLASSES[c.label] for c in rows]}
    ).to_csv(out / f"{split}.csv", index=False)
    counts = Counter(CLASSES[c.label] for c in rows)
    return {
        "count": len(rows),
        "per_class": {name: counts.get(name, 0) for name in CLASSES},
        "not_32x32": notes.get("not 32x32", 0),
        "skipped": len(items) - len(rows),
        "pixels_sha256": digest,
    }
