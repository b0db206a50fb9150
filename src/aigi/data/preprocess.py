"""Raw CIFAKE files -> CLIP-ready arrays: dedupe, subsample, split, decode, upsample, write.

Output in `data/processed/`: `{train,val,test}.npy` (N×S×S×3 uint8, memory-mappable),
`{train,val,test}.csv` (file, label, label_name, sha256) and `manifest.json`. All the work per
image (hash, decode, resize, write) runs in one worker process per core; each worker writes its
rows straight into the `.npy` file at their place, and the main process only keeps the books.
Memory stays flat in N: a worker holds one chunk of small decoded images and one resize batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aigi.data.images import INTERPOLATION, BadImage, is_image_file, load_rgb, to_model_input
from aigi.data.store import ArrayWriter, RowFile, atomic_dir, sha256_file
from aigi.errors import AigiError
from aigi.params import CLASSES, PreprocessParams
from aigi.progress import progress

NATIVE_SIZE = (32, 32)  # CIFAKE's images; others are accepted and counted
RESIZE_BATCH = 16  # images per matrix product in a worker: small enough to stay in the CPU cache
EXAMPLES = 10  # file names listed in the manifest per kind of event


@dataclass
class Candidate:
    file: str  # path relative to the raw root, e.g. "train/FAKE/0001 (3).jpg"
    label: int
    sha256: str


@dataclass
class SplitPlan:
    """Which files go into which output split, and what was dropped on the way."""

    splits: dict[str, list[Candidate]]
    found: dict[str, int] = field(default_factory=dict)  # images per split/class before dedupe
    duplicates: dict[str, Any] = field(default_factory=dict)
    ignored_non_images: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- workers


def worker_count(params: PreprocessParams) -> int:
    """`preprocess.workers`, or every core this process may run on."""
    if params.workers:
        return params.workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core already; more threads only contend


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Any]:
    """A process pool; forkserver (with this module preloaded) starts workers fast and without fork's hazards."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
    else:
        ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield pool


def _chunks(items: list, workers: int, most: int) -> list[tuple[int, list]]:
    """(start index, items) pieces: at most `most` each, and at least ~4 per worker for balance."""
    size = max(1, min(most, math.ceil(len(items) / (4 * workers))))
    return [(i, items[i : i + size]) for i in range(0, len(items), size)]


def _hash_files(paths: list[str]) -> list[str]:
    return [sha256_file(Path(p)) for p in paths]


def _process_chunk(job: tuple[list[str], int, RowFile, int, int]) -> tuple[list[tuple[bool, str]], list[bytes]]:
    """Worker: decode, resize and write one chunk of files, good ones contiguous from row `start`.

    Returns per file (ok, note): note is the size for images that are not 32×32, or why a file was
    skipped; and the SHA-256 of each written row, in order.
    """
    paths, start, rows, image_size, max_pixels = job
    status: list[tuple[bool, str]] = []
    good: list[np.ndarray] = []
    for p in paths:
        try:
            img = load_rgb(p, max_pixels)
        except BadImage as e:
            status.append((False, str(e)))
            continue
        h, w = img.shape[:2]
        status.append((True, "" if (h, w) == NATIVE_SIZE else f"{w}x{h}"))
        if (h, w) != NATIVE_SIZE:  # odd sizes resized now: a chunk of large photos would not fit in RAM
            img = to_model_input([img], image_size)[0]
        good.append(img)
    digests = []
    for i in range(0, len(good), RESIZE_BATCH):
        batch = to_model_input(good[i : i + RESIZE_BATCH], image_size)
        rows.write(start + i, batch)
        digests += [hashlib.sha256(row).digest() for row in batch]
    return status, digests


# ---------------------------------------------------------------- planning


def scan(raw: Path, pool: Any = None) -> tuple[dict[str, list[Candidate]], list[str]]:
    """List the image files of `raw/{train,test}/{REAL,FAKE}` with their content hashes; and what was ignored."""
    listed: list[tuple[str, str, int]] = []  # (split, file, label)
    ignored: list[str] = []
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            folder = raw / split / name
            if not folder.is_dir():
                raise AigiError(f"{folder} is missing; re-run the download stage (dvc repro download)")
            for f in sorted(folder.iterdir()):
                rel = f.relative_to(raw).as_posix()
                if f.is_file() and is_image_file(f):
                    listed.append((split, rel, label))
                else:
                    ignored.append(rel)
    paths = [str(raw / rel) for _, rel, _ in listed]
    pieces = [chunk for _, chunk in _chunks(paths, 4, 2048)]
    hashed = pool.imap(_hash_files, pieces) if pool else map(_hash_files, pieces)
    digests = [d for chunk in progress(hashed, total=len(pieces), desc="hash", unit="chunk") for d in chunk]
    out: dict[str, list[Candidate]] = {"train": [], "test": []}
    for (split, rel, label), digest in zip(listed, digests, strict=True):
        out[split].append(Candidate(rel, label, digest))
    return out, ignored


def dedupe(found: dict[str, list[Candidate]], drop_train_copies_of_test: bool) -> tuple[dict, dict]:
    """Drop exact duplicates within each split, and train copies of test images; report both."""
    report: dict[str, Any] = {}
    kept: dict[str, list[Candidate]] = {}
    for split, items in found.items():
        first: dict[str, Candidate] = {}
        pairs = []
        for c in items:
            if c.sha256 in first:
                pairs.append([first[c.sha256].file, c.file])
            else:
                first[c.sha256] = c
        kept[split] = list(first.values())
        report[f"within_{split}_dropped"] = len(pairs)
        report[f"within_{split}_examples"] = pairs[:EXAMPLES]
    test_hashes = {c.sha256 for c in kept["test"]}
    shared = [c for c in kept["train"] if c.sha256 in test_hashes]
    report["train_test_shared"] = len(shared)
    report["train_copies_of_test_dropped"] = 0
    if drop_train_copies_of_test and shared:
        kept["train"] = [c for c in kept["train"] if c.sha256 not in test_hashes]
        report["train_copies_of_test_dropped"] = len(shared)
    report["train_test_shared_examples"] = [c.file for c in shared[:EXAMPLES]]
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


def plan(raw: Path, params: PreprocessParams, seed: int, pool: Any = None) -> SplitPlan:
    found, ignored = scan(raw, pool)
    counts = {f"{s}/{CLASSES[k]}": n for s, items in found.items() for k, n in
              sorted(Counter(c.label for c in items).items())}
    kept, dup_report = dedupe(found, params.drop_train_duplicates_of_test)
    # One random stream per draw: the test set must not change when only the train params do.
    train = subsample(kept["train"], params.train_per_class, np.random.default_rng([seed, 0]), "train")
    test = subsample(kept["test"], params.test_per_class, np.random.default_rng([seed, 1]), "test")
    rng = np.random.default_rng([seed, 2])
    # Stratified validation split carved from train; the test split is never touched by training.
    val_idx: list[int] = []
    for label in range(len(CLASSES)):
        idx = [i for i, c in enumerate(train) if c.label == label]
        n_val = max(1, round(len(idx) * params.val_fraction))
        if n_val >= len(idx):
            raise AigiError(
                f"train/{CLASSES[label]} has {len(idx)} images: too few to hold out "
                f"preprocess.val_fraction={params.val_fraction} and keep some for training"
            )
        val_idx += list(rng.choice(idx, size=n_val, replace=False))
    val_set = set(val_idx)
    splits = {
        "train": [c for i, c in enumerate(train) if i not in val_set],
        "val": [c for i, c in enumerate(train) if i in val_set],
        "test": test,
    }
    return SplitPlan(splits, counts, dup_report, ignored)


# ---------------------------------------------------------------- the stage


def run(raw: Path, dest: Path, params: PreprocessParams, seed: int, image_size: int) -> dict[str, Any]:
    """The preprocess stage: plan the splits, then decode, resize and write each one."""
    workers = worker_count(params)
    with atomic_dir(dest) as out, worker_pool(workers) as pool:
        split_plan = plan(raw, params, seed, pool)
        sums = raw.parent / "SHA256SUMS"  # the content of the raw data, not where or when it came from
        manifest: dict[str, Any] = {
            "image_size": image_size,
            "interpolation": INTERPOLATION,
            "seed": seed,
            "classes": list(CLASSES),
            "sha256sums_sha256": hashlib.sha256(sums.read_bytes()).hexdigest() if sums.is_file() else None,
            "found": split_plan.found,
            "duplicates": split_plan.duplicates,
            "ignored_non_image_files": len(split_plan.ignored_non_images),
            "ignored_examples": split_plan.ignored_non_images[:EXAMPLES],
            "splits": {},
            "skipped": [],
        }
        for split, items in split_plan.splits.items():
            manifest["splits"][split] = _write_split(
                split, items, raw, out, params, image_size, pool, workers, manifest["skipped"]
            )
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_split(split, items, raw, out, params, image_size, pool, workers, skipped) -> dict[str, Any]:
    writer = ArrayWriter(out / f"{split}.npy", len(items), (image_size, image_size, 3))
    chunks = _chunks(items, workers, params.chunk_size)
    jobs = [([str(raw / c.file) for c in chunk], start, writer.rows, image_size, params.max_image_pixels)
            for start, chunk in chunks]
    rows: list[Candidate] = []
    sizes: Counter[str] = Counter()
    blocks: list[tuple[int, int]] = []
    pixels = hashlib.sha256()  # over the per-row SHA-256s, in row order
    with progress(total=len(items), desc=f"preprocess {split}", unit="img") as bar:
        for (start, chunk), (status, digests) in zip(chunks, pool.imap(_process_chunk, jobs), strict=True):
            for cand, (ok, note) in zip(chunk, status, strict=True):
                if not ok:
                    if params.on_bad_image == "fail":
                        raise AigiError(
                            f"{cand.file}: {note}; fix or remove it, or set preprocess.on_bad_image: skip"
                        )
                    skipped.append({"file": cand.file, "reason": note})
                    continue
                rows.append(cand)
                if note:
                    sizes[note] += 1
            blocks.append((start, len(digests)))
            for d in digests:
                pixels.update(d)
            bar.update(len(chunk))
    writer.close(blocks)
    table = pd.DataFrame({
        "file": [c.file for c in rows],
        "label": [c.label for c in rows],
        "label_name": [CLASSES[c.label] for c in rows],
        "sha256": [c.sha256 for c in rows],
    })
    table.to_csv(out / f"{split}.csv", index=False)
    counts = Counter(CLASSES[c.label] for c in rows)
    return {
        "count": len(rows),
        "per_class": {name: counts.get(name, 0) for name in CLASSES},
        "not_32x32": sum(sizes.values()),
        "other_sizes": dict(sizes.most_common(EXAMPLES)),
        "skipped": len(items) - len(rows),
        "pixels_sha256": pixels.hexdigest(),
        "table_sha256": hashlib.sha256((out / f"{split}.csv").read_bytes()).hexdigest(),
    }
