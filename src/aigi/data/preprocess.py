"""Raw images -> CLIP-ready arrays: dedupe, subsample per class, split, decode, resize, write.

Input: `data/raw/<dataset>/images/{train,test}/<CLASS>/` (REAL and one folder per generator). Output
in `data/processed/<dataset>/`: `{train,val,test}.npy` (N×S×S×3 uint8, memory-mappable),
`{train,val,test}.csv` (file, label, label_name, sha256, width, height) and `manifest.json` (dataset,
role, classes, class aliases, display names, unseen generators, counts, duplicates, skipped files and
original sizes per class). The training dataset (role `train`) gets all three splits; a test set
(role `test`) gets `test` alone, and needs no `train/` folder. `label_name` is the class after the
dataset's `class_aliases`; `label` indexes the manifest's `classes` (-1: a held-out generator).

All the work per image (hash, decode, resize, write) runs in one worker process per core; each worker writes its
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aigi.classes import REAL, alias, real_first
from aigi.data.images import (
    CROP,
    INTERPOLATION,
    BadImage,
    is_image_file,
    jpeg_align,
    load_rgb,
    model_input,
)
from aigi.data.store import ArrayWriter, RowFile, atomic_dir, sha256_file
from aigi.errors import AigiError
from aigi.params import PreprocessParams
from aigi.paths import MANIFEST, SHA256SUMS, SOURCE
from aigi.progress import progress

SPLITS = ("train", "test")  # the raw splits; val is carved from train
ROLES = ("train", "test")  # the training dataset (train_on), or a test set (test only)
NATIVE_SIZE = (32, 32)  # CIFAKE's images: kept as decoded until the batched resize; others resized at once
TOP_SIZES = 5  # most common original sizes listed per class in the manifest
RESIZE_BATCH = 16  # images per matrix product in a worker: small enough to stay in the CPU cache
EXAMPLES = 10  # file names listed in the manifest per kind of event


@dataclass(slots=True)
class Candidate:
    """One image of the plan: ~210 bytes in all (object, path and hash strings; measured by a test)."""

    file: str  # path relative to the raw root, e.g. "train/FAKE/0001 (3).jpg"
    label: int  # index into the classes found in data/raw (not yet the model's)
    sha256: str


@dataclass
class SplitPlan:
    """Which files go into which output split, and what was dropped on the way."""

    splits: dict[str, list[Candidate]]
    found_classes: list[str] = field(default_factory=list)  # every class in the raw data (after aliases), REAL first
    classes: list[str] = field(default_factory=list)  # the model's: found_classes less the unseen generators
    unseen: list[str] = field(default_factory=list)
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


def _process_chunk(job: tuple[list[str], int, RowFile, int, int, str, int | None]
                   ) -> tuple[list[tuple[str, int, int]], list[bytes]]:
    """Worker: decode, align, resize and write one chunk of files, good ones contiguous from row `start`.

    Returns per file (why it was skipped or "", original width, height); and the SHA-256 of each
    written row, in order.
    """
    paths, start, rows, image_size, max_pixels, resize, jpeg_quality = job
    status: list[tuple[str, int, int]] = []
    good: list[np.ndarray] = []
    for p in paths:
        try:
            img = load_rgb(p, max_pixels)
        except BadImage as e:
            status.append((str(e), 0, 0))
            continue
        h, w = img.shape[:2]
        status.append(("", w, h))
        if jpeg_quality is not None:  # preprocess.jpeg_align: every image re-encoded alike, before the resize
            img = jpeg_align(img, jpeg_quality)
        if (h, w) != NATIVE_SIZE:  # odd sizes resized now: a chunk of large photos would not fit in RAM
            img = model_input([img], image_size, resize)[0]
        good.append(img)
    digests = []
    for i in range(0, len(good), RESIZE_BATCH):
        batch = model_input(good[i : i + RESIZE_BATCH], image_size, resize)
        rows.write(start + i, batch)
        digests += [hashlib.sha256(row).digest() for row in batch]
    return status, digests


# ---------------------------------------------------------------- planning


def find_classes(raw: Path, splits: Sequence[str] = SPLITS) -> list[str]:
    """The class folders in `raw/<split>/` for each of `splits`: REAL first, then the generators sorted."""
    for split in splits:
        if not (raw / split).is_dir():
            raise AigiError(f"{raw / split} is missing; re-run the download stage "
                            f"(dvc repro download@{raw.parent.name})")
    names = {c.name for split in splits for c in (raw / split).iterdir() if c.is_dir()}
    if REAL not in names:
        raise AigiError(f"{raw}: no {REAL} class (classes found: {', '.join(sorted(names)) or 'none'}); "
                        f"re-run the download stage (dvc repro download@{raw.parent.name})")
    return real_first(names)


def aliased_classes(folders: list[str], class_aliases: dict[str, str], dataset: str) -> list[str]:
    """The dataset's classes as the detector names them (`datasets.<dataset>.class_aliases`), REAL first."""
    unknown = sorted(set(class_aliases) - set(folders))
    if unknown:
        raise AigiError(f"datasets.{dataset}.class_aliases: {', '.join(unknown)} is not a class of {dataset} "
                        f"(classes: {', '.join(folders)}); fix or remove it")
    return real_first(alias(f, class_aliases) for f in folders)


def scan(raw: Path, label_of: dict[str, int], pool: Any = None, splits: Sequence[str] = SPLITS
         ) -> tuple[dict[str, list[Candidate]], list[str]]:
    """List the image files of `raw/<split>/<folder>` (label `label_of[folder]`) with their content hashes;
    and what was ignored."""
    listed: list[tuple[str, str, int]] = []  # (split, file, label)
    ignored: list[str] = []
    for split in splits:
        for name, label in label_of.items():
            folder = raw / split / name
            if not folder.is_dir():
                continue  # a class with no images in this split: reported by the counts
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
    out: dict[str, list[Candidate]] = {split: [] for split in splits}
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
        report[f"within_{split}_dropped_per_class"] = dict(Counter(pair[1].split("/")[1] for pair in pairs))
        report[f"within_{split}_examples"] = pairs[:EXAMPLES]
    test_hashes = {c.sha256 for c in kept["test"]}
    shared = [c for c in kept.get("train", []) if c.sha256 in test_hashes]  # a test set has no train
    report["train_test_shared"] = len(shared)
    report["train_copies_of_test_dropped"] = 0
    report["train_copies_of_test_dropped_per_class"] = {}
    if drop_train_copies_of_test and shared:
        kept["train"] = [c for c in kept["train"] if c.sha256 not in test_hashes]
        report["train_copies_of_test_dropped"] = len(shared)
        report["train_copies_of_test_dropped_per_class"] = dict(Counter(c.file.split("/")[1] for c in shared))
    report["train_test_shared_examples"] = [c.file for c in shared[:EXAMPLES]]
    return kept, report


def subsample(items: list[Candidate], classes: list[str], per_class: int | str, rng: np.random.Generator,
              split: str, skip: set[int] | frozenset[int] = frozenset()) -> list[Candidate]:
    """`per_class` images of each class (index into `classes`) but those in `skip`, without replacement; or all."""
    by_class: dict[int, list[Candidate]] = {}
    for c in items:
        by_class.setdefault(c.label, []).append(c)
    out = []
    for label, name in enumerate(classes):
        if label in skip:
            continue
        pool = by_class.get(label, [])
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


def plan(raw: Path, params: PreprocessParams, seed: int, pool: Any = None, unseen: Sequence[str] = (),
         class_aliases: dict[str, str] | None = None, role: str = "train", dataset: str = "") -> SplitPlan:
    """Dedupe, subsample per class and split; `unseen` generators stay out of train and val entirely.
    A test set (`role` test) is only deduped and subsampled: its test split alone."""
    aliases = class_aliases or {}
    splits = SPLITS if role == "train" else ("test",)
    folders = find_classes(raw, splits)
    found_classes = aliased_classes(folders, aliases, dataset or raw.parent.name)
    label_of = {f: found_classes.index(alias(f, aliases)) for f in folders}  # raw folder -> class index
    unknown = [u for u in unseen if u not in found_classes[1:]]
    if unknown:
        raise AigiError(f"evaluate.unseen_generators: {', '.join(unknown)} is not a generator in the data "
                        f"(classes found: {', '.join(found_classes)})")
    classes = [c for c in found_classes if c not in unseen]
    if len(classes) < 2:
        raise AigiError(f"evaluate.unseen_generators holds out every generator ({', '.join(unseen)}); "
                        f"keep at least one to train on")
    found, ignored = scan(raw, label_of, pool, splits)
    counts = {f"{s}/{found_classes[k]}": n for s, items in found.items() for k, n in
              sorted(Counter(c.label for c in items).items())}
    if role == "test":
        kept, dup_report = dedupe(found, False)
        test = subsample(kept["test"], found_classes, params.test_per_class, np.random.default_rng([seed, 1]), "test")
        return SplitPlan({"test": test}, found_classes, classes, [], counts, dup_report, ignored)
    # Held-out generators never reach train or val: dropped before anything is drawn from train.
    held = {found_classes.index(u) for u in unseen}
    found["train"] = [c for c in found["train"] if c.label not in held]
    kept, dup_report = dedupe(found, params.drop_train_duplicates_of_test)
    # One random stream per draw: the test set must not change when only the train params do.
    train = subsample(kept["train"], found_classes, params.train_per_class, np.random.default_rng([seed, 0]),
                      "train", skip=held)
    test = subsample(kept["test"], found_classes, params.test_per_class, np.random.default_rng([seed, 1]), "test")
    rng = np.random.default_rng([seed, 2])
    # Stratified validation split carved from train; the test split is never touched by training.
    val_idx: list[int] = []
    by_class: dict[int, list[int]] = {}  # one pass, not one per class: ~50 classes x 1 M images
    for i, c in enumerate(train):
        by_class.setdefault(c.label, []).append(i)
    for label, name in enumerate(found_classes):
        if label in held:
            continue
        idx = by_class.get(label, [])
        n_val = max(1, round(len(idx) * params.val_fraction))
        if n_val >= len(idx):
            raise AigiError(
                f"train/{name} has {len(idx)} images: too few to hold out "
                f"preprocess.val_fraction={params.val_fraction} and keep some for training"
            )
        val_idx += list(rng.choice(idx, size=n_val, replace=False))
    val_set = set(val_idx)
    splits = {
        "train": [c for i, c in enumerate(train) if i not in val_set],
        "val": [c for i, c in enumerate(train) if i in val_set],
        "test": test,
    }
    return SplitPlan(splits, found_classes, classes, list(unseen), counts, dup_report, ignored)


# ---------------------------------------------------------------- the stage


def run(raw: Path, dest: Path, params: PreprocessParams, seed: int, image_size: int, *, dataset: str | None = None,
        role: str = "train", class_aliases: dict[str, str] | None = None, unseen: Sequence[str] = ()
        ) -> dict[str, Any]:
    """The preprocess stage for `dataset`: plan the splits, then decode, resize and write each one.

    `dataset` (default: `dest`'s name) is recorded in the manifest and names the dataset in errors.
    `role` train writes train, val and test; `role` test (a test set) writes test alone.
    `unseen` generators (evaluate.unseen_generators) are kept out of train and val; their test
    images get label -1 and their generator's name as label_name.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    dataset = dataset or dest.name
    class_aliases = dict(class_aliases or {})
    workers = worker_count(params)
    skipped_rows = _source_skipped_rows(raw.parent / SOURCE, params.on_bad_image)
    with atomic_dir(dest) as out, worker_pool(workers) as pool:
        split_plan = plan(raw, params, seed, pool, unseen, class_aliases, role, dataset)
        sums = raw.parent / SHA256SUMS  # the content of the raw data, not where or when it came from
        manifest: dict[str, Any] = {
            "dataset": dataset,
            "role": role,
            "image_size": image_size,
            "interpolation": INTERPOLATION if params.resize == "shorter_side" else CROP,
            "resize": params.resize,  # preprocess.resize and .jpeg_align: saved with the model, so predict
            "jpeg_align": params.jpeg_align,  # and serving bring images to the input exactly the same way
            "seed": seed,
            "classes": split_plan.classes,
            "class_aliases": class_aliases,
            "display_names": _display_names(raw.parent / SOURCE, split_plan.found_classes, class_aliases),
            "unseen_generators": split_plan.unseen,
            "sha256sums_sha256": hashlib.sha256(sums.read_bytes()).hexdigest() if sums.is_file() else None,
            "found": split_plan.found,
            "duplicates": split_plan.duplicates,
            "ignored_non_image_files": len(split_plan.ignored_non_images),
            "ignored_examples": split_plan.ignored_non_images[:EXAMPLES],
            "splits": {},
            "skipped": skipped_rows,
            "original_sizes": {},
        }
        sizes = {name: SizeTally() for name in split_plan.found_classes}
        for split, items in split_plan.splits.items():
            manifest["splits"][split] = _write_split(
                split, items, raw, out, params, image_size, pool, workers, manifest["skipped"], split_plan, sizes
            )
        manifest["original_sizes"] = {name: t.summary() for name, t in sizes.items() if t.sizes}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _source_skipped_rows(source_json: Path, on_bad_image: str) -> list[dict[str, Any]]:
    """Rows of a parquet source that held no image (the download lists them in SOURCE.json): listed as
    skipped like an unreadable file, or one line with `preprocess.on_bad_image: fail`."""
    rows = json.loads(source_json.read_text()).get("skipped_rows", []) if source_json.is_file() else []
    if rows and on_bad_image == "fail":
        r = rows[0]
        raise AigiError(f"{r['shard']} row {r['row']}: {r['reason']}; fix or remove it, or set "
                        f"preprocess.on_bad_image: skip")
    return [{"file": r["shard"], "row": r["row"], "reason": r["reason"]} for r in rows]


def _display_names(source_json: Path, classes: list[str], class_aliases: dict[str, str]) -> dict[str, str]:
    """Each class's display name, as the download stage recorded it for its folder (default: the class name)."""
    recorded = json.loads(source_json.read_text()).get("display_names", {}) if source_json.is_file() else {}
    shown = {alias(folder, class_aliases): name for folder, name in recorded.items() if folder != name}
    return {c: shown.get(c, c) for c in classes}


class SizeTally:
    """Original image sizes of one class: counts per distinct size, width and height (flat in N images)."""

    def __init__(self) -> None:
        self.sizes: Counter[str] = Counter()
        self.widths: Counter[int] = Counter()
        self.heights: Counter[int] = Counter()

    def add(self, w: int, h: int) -> None:
        self.sizes[f"{w}x{h}"] += 1
        self.widths[w] += 1
        self.heights[h] += 1

    def summary(self) -> dict[str, Any]:
        return {"top": dict(self.sizes.most_common(TOP_SIZES)), "distinct": len(self.sizes),
                "width": _spread(self.widths), "height": _spread(self.heights)}


def _spread(values: Counter[int]) -> dict[str, int]:
    """min, median (lower) and max of a tally of integers."""
    keys = sorted(values)
    half, seen = (sum(values.values()) - 1) // 2, 0
    median = keys[-1]
    for k in keys:
        seen += values[k]
        if seen > half:
            median = k
            break
    return {"min": keys[0], "median": median, "max": keys[-1]}


def _write_split(split, items, raw, out, params, image_size, pool, workers, skipped, split_plan, sizes):
    found, classes = split_plan.found_classes, split_plan.classes
    writer = ArrayWriter(out / f"{split}.npy", len(items), (image_size, image_size, 3))
    chunks = _chunks(items, workers, params.chunk_size)
    jobs = [([str(raw / c.file) for c in chunk], start, writer.rows, image_size, params.max_image_pixels,
             params.resize, params.jpeg_align) for start, chunk in chunks]
    rows: list[Candidate] = []
    dims = np.zeros((len(items), 2), dtype=np.int32)  # original width, height of each written row
    skipped_per_class: Counter[str] = Counter()
    blocks: list[tuple[int, int]] = []
    pixels = hashlib.sha256()  # over the per-row SHA-256s, in row order
    with progress(total=len(items), desc=f"preprocess {split}", unit="img") as bar:
        for (start, chunk), (status, digests) in zip(chunks, pool.imap(_process_chunk, jobs), strict=True):
            for cand, (why, w, h) in zip(chunk, status, strict=True):
                if why:
                    if params.on_bad_image == "fail":
                        raise AigiError(
                            f"{cand.file}: {why}; fix or remove it, or set preprocess.on_bad_image: skip"
                        )
                    skipped.append({"file": cand.file, "reason": why})
                    skipped_per_class[found[cand.label]] += 1
                    continue
                dims[len(rows)] = w, h
                rows.append(cand)
                sizes[found[cand.label]].add(w, h)
            blocks.append((start, len(digests)))
            for d in digests:
                pixels.update(d)
            bar.update(len(chunk))
    writer.close(blocks)
    index = {name: i for i, name in enumerate(classes)}  # unseen generators: -1
    table = pd.DataFrame({
        "file": [c.file for c in rows],
        "label": np.array([index.get(found[c.label], -1) for c in rows], dtype=np.int64),
        "label_name": [found[c.label] for c in rows],
        "sha256": [c.sha256 for c in rows],
        "width": dims[: len(rows), 0],
        "height": dims[: len(rows), 1],
    })
    table.to_csv(out / f"{split}.csv", index=False)
    counts = Counter(table["label_name"])
    return {
        "count": len(rows),
        "per_class": {name: counts.get(name, 0) for name in found if name in counts or name in index},
        "skipped": len(items) - len(rows),
        "skipped_per_class": dict(skipped_per_class),
        "pixels_sha256": pixels.hexdigest(),
        "table_sha256": hashlib.sha256((out / f"{split}.csv").read_bytes()).hexdigest(),
    }
