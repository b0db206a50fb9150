"""Fetch CIFAKE from the source named in `data.source` into `data/raw/cifake/{train,test}/{REAL,FAKE}/`.

Every source ends in the same layout plus `data/raw/SOURCE.json` (what, where from, counts, hashes)
and `data/raw/SHA256SUMS` (one line per image, `sha256sum -c` format). The result is built in a
`.partial` folder and moved into place only when complete, so an interrupted or failed download
never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from aigi.data.images import is_image_file
from aigi.data.store import sha256_file
from aigi.data.synthetic import write_synthetic
from aigi.errors import AigiError, one_line
from aigi.params import CLASSES, DataParams
from aigi.progress import progress

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CACHE = Path(os.environ.get("AIGI_CACHE", Path.home() / ".cache" / "aigi"))
OFFLINE_HINT = (
    "without network access, download CIFAKE elsewhere and set `data.source: local` and "
    "`data.path: /path/to/cifake.zip` (or the unpacked folder) in params.yaml"
)


# ---------------------------------------------------------------- entry point

RUN_FACTS = ("cache", "note", "downloaded", "path")  # facts of this run or machine, not of the data


def download(params: DataParams, seed: int, dest: Path) -> dict[str, Any]:
    """Fetch the dataset named by `params` into `dest` (e.g. data/raw); returns SOURCE.json's content."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        fetch = FETCHERS[params.source]
        info = fetch(params, seed, staging / "cifake")
        # Where and how this run got the data (cache path, online or not) is printed, not written:
        # SOURCE.json must be identical for identical data, or DVC would re-run everything downstream.
        for key in RUN_FACTS:
            if key in info:
                print(f"download: {key}: {info.pop(key)}")
        info = {"source": params.source, **info, **summarise(staging / "cifake", staging / "SHA256SUMS")}
        (staging / "SOURCE.json").write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return info


# ---------------------------------------------------------------- sources


def fetch_synthetic(params: DataParams, seed: int, out: Path) -> dict[str, Any]:
    write_synthetic(out, params.synthetic_train_per_class, params.synthetic_test_per_class, seed,
                    params.synthetic_artifact_region)
    return {"id": "aigi-synthetic", "version": f"seed={seed}"}


def fetch_local(params: DataParams, seed: int, out: Path) -> dict[str, Any]:
    path = Path(params.path or "").expanduser()
    if not path.exists():
        raise AigiError(f"data.path '{path}' does not exist; point it at a CIFAKE folder or archive")
    info: dict[str, Any] = {"id": path.name, "path": str(path.resolve())}  # the name: same on every machine
    if path.is_file():
        info["archive_sha256"] = sha256_file(path)
    info.update(import_dataset(path, out, params))
    return info


def fetch_kaggle(params: DataParams, seed: int, out: Path) -> dict[str, Any]:
    import kagglehub  # imported here: it reads its config and env at import

    handle = params.kaggle_dataset
    note = None
    try:
        # kagglehub caches under ~/.cache/kagglehub ($KAGGLEHUB_CACHE): a second run does not download again.
        folder = Path(kagglehub.dataset_download(handle))
    except Exception as e:  # kagglehub raises requests/urllib3/its own errors alike
        # An unpinned handle asks the API for the latest version even when a copy is cached: offline,
        # fall back to the newest complete copy in the cache rather than fail.
        cached = _kaggle_cached(handle)
        if cached is None:
            raise AigiError(
                f"data.source 'kaggle': could not download {handle} ({_short(e)}); {OFFLINE_HINT}"
            ) from None
        folder, note = cached, f"offline ({_short(e)}); used the cached copy"
    version = folder.name if folder.parent.name == "versions" else None
    info = {"id": handle, "version": version, "cache": str(folder), **({"note": note} if note else {})}
    return {**info, **import_dataset(folder, out, params)}


def _kaggle_cached(handle: str) -> Path | None:
    """The newest complete copy of a Kaggle dataset in kagglehub's cache, or None."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_dataset_handle

    try:
        h = parse_dataset_handle(handle)
    except Exception:
        return None
    cache = Cache()
    if h.is_versioned():
        found = cache.load_from_cache(h)
        return Path(found) if found else None
    versions = Path(cache.get_path(h)) / "versions"
    numbers = sorted((int(v.name) for v in versions.iterdir() if v.name.isdigit()), reverse=True) \
        if versions.is_dir() else []
    for n in numbers:
        found = cache.load_from_cache(h.with_version(n))
        if found:
            return Path(found)
    return None


def fetch_huggingface(params: DataParams, seed: int, out: Path) -> dict[str, Any]:
    from huggingface_hub import snapshot_download

    repo = params.huggingface_dataset
    try:
        folder = Path(snapshot_download(repo_id=repo, repo_type="dataset"))
    except Exception as e:
        raise AigiError(f"data.source 'huggingface': could not download {repo} ({_short(e)}); {OFFLINE_HINT}") from None
    info: dict[str, Any] = {"id": repo, "version": folder.name}
    if list(folder.rglob("*.parquet")):
        info.update(import_parquet(folder, out))
    else:
        info.update(import_dataset(folder, out, params))
    return info


def fetch_url(params: DataParams, seed: int, out: Path) -> dict[str, Any]:
    url = params.url or ""
    expected = params.sha256.lower() if params.sha256 else None
    name = Path(urllib.request.url2pathname(url.split("?")[0])).name or "cifake.zip"
    # Cached per URL: a repeated run (or another checkout on this machine) does not download again.
    cached = CACHE / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    digest = sha256_file(cached) if cached.is_file() else None
    fetched = digest is None or (expected is not None and digest != expected)
    if fetched:
        _download_file(url, cached)
        digest = sha256_file(cached)
    if expected and digest != expected:
        cached.unlink()
        raise AigiError(f"data.url: SHA-256 mismatch (expected {params.sha256}, got {digest}); check data.sha256")
    info = {"id": url, "archive_sha256": digest, "cache": str(cached), "downloaded": fetched}
    return {**info, **import_dataset(cached, out, params)}


FETCHERS: dict[str, Callable[[DataParams, int, Path], dict[str, Any]]] = {
    "synthetic": fetch_synthetic,
    "local": fetch_local,
    "kaggle": fetch_kaggle,
    "huggingface": fetch_huggingface,
    "url": fetch_url,
}


def _download_file(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with progress(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise AigiError(f"data.source 'url': could not download {url} ({_short(e)}); {OFFLINE_HINT}") from None
    part.rename(target)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e)}"


# ---------------------------------------------------------------- layout and import


def import_dataset(path: Path, out: Path, params: DataParams, move: bool = False) -> dict[str, Any]:
    """Copy a CIFAKE-layout folder, or the folder inside an archive, into `out` (files moved when `move`)."""
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise AigiError(f"{path}: not a folder or a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            extract_archive(path, Path(tmp), params.max_archive_bytes, params.max_archive_members)
            return import_dataset(Path(tmp), out, params, move=True)  # our own scratch copy: move, not copy
    layout = find_layout(path)
    ignored = 0
    for (split, label), folder in layout.items():
        target = out / split / label
        target.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        for f in progress(files, desc=f"import {split}/{label}", unit="file", leave=False):
            if is_image_file(f):
                (os.replace if move else shutil.copyfile)(f, target / _flat_name(f, folder))
            else:
                ignored += 1
    return {"ignored_non_image_files": ignored}


def _flat_name(f: Path, folder: Path) -> str:
    rel = f.relative_to(folder)
    return "__".join(rel.parts)


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder of `folder` called `name`, matched case-insensitively."""
    found = sorted(c for c in folder.iterdir() if c.is_dir() and not c.is_symlink() and c.name.lower() == name.lower())
    if len(found) > 1:
        raise AigiError(f"{folder}: {' and '.join(c.name for c in found)} differ only in case; merge them into one")
    return found[0] if found else None


def find_layout(root: Path, depth: int = 3) -> dict[tuple[str, str], Path]:
    """Locate `train|test/REAL|FAKE` at or below `root` (folder names in any case)."""
    candidates = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in candidates:
            found = {}
            for split in SPLITS:
                s = _child(folder, split)
                for label in CLASSES:
                    c = _child(s, label) if s else None
                    if c:
                        found[(split, label)] = c
            if len(found) == len(SPLITS) * len(CLASSES):
                return found
            nxt += sorted(c for c in folder.iterdir() if c.is_dir() and not c.is_symlink())
        candidates = nxt
    seen = sorted(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*")
                  if len(p.relative_to(root).parts) <= 2)[:20]
    raise AigiError(
        f"{root}: no CIFAKE layout found (expected train/ and test/, each with REAL/ and FAKE/); "
        f"found: {', '.join(seen) or 'nothing'}"
    )


def import_parquet(folder: Path, out: Path) -> dict[str, Any]:
    """Hugging Face parquet shards (an image column with bytes, a label column) -> image files.

    Read in record batches, so memory stays flat whatever the shard size. A shard's split comes from
    its path (`train-00000-of-00002.parquet`, `data/test/...`); files keep the image's original name
    when the shard stores one.
    """
    import pyarrow.parquet as pq

    names = _hf_label_names(folder)
    written = 0
    for shard in sorted(folder.rglob("*.parquet")):
        tokens = set(re.split(r"[^a-z]+", shard.relative_to(folder).as_posix().lower()))
        split = next((s for s in SPLITS if s in tokens), None)
        if split is None:
            continue
        pf = pq.ParquetFile(shard)
        columns = pf.schema_arrow.names
        if "image" not in columns or "label" not in columns:
            raise AigiError(f"{shard.name}: expected columns 'image' and 'label', found {columns}")
        i = 0
        for batch in pf.iter_batches(columns=["image", "label"], batch_size=1024):
            for image, label in zip(batch.column("image").to_pylist(), batch.column("label").to_pylist(), strict=True):
                label_name = (names[int(label)] if names and not isinstance(label, str) else str(label)).upper()
                if label_name not in CLASSES:
                    raise AigiError(
                        f"{shard.name}: label {label!r} is neither REAL nor FAKE (nor a class index the "
                        f"dataset card's features name)"
                    )
                data = image["bytes"] if isinstance(image, dict) else image
                original = Path((image.get("path") if isinstance(image, dict) else None) or "").name
                stem = f"{shard.stem}-{i:06d}"
                name = original if is_image_file(original) else stem + _image_suffix(data)
                target = out / split / label_name / name
                if target.exists():  # two rows with one original name: keep both
                    target = target.with_name(f"{stem}-{name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                written += 1
                i += 1
    if not written:
        raise AigiError(f"{folder}: no parquet shard named for a train or test split")
    return {"format": "parquet"}


def _image_suffix(data: bytes) -> str:
    """A file suffix from the image's magic bytes (PIL reads any of them regardless)."""
    for magic, suffix in ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp")):
        if data.startswith(magic):
            return suffix
    return ".webp" if data[8:12] == b"WEBP" else ".png"


def _hf_label_names(folder: Path) -> list[str] | None:
    """Class names from the dataset card's `dataset_info.features` (int labels -> names)."""
    card = folder / "README.md"
    if not card.is_file() or not card.read_text().startswith("---"):
        return None
    meta = yaml.safe_load(card.read_text().split("---")[1]) or {}
    infos = meta.get("dataset_info") or {}
    for info in infos if isinstance(infos, list) else [infos]:
        for feat in info.get("features", []):
            names = (feat.get("dtype") or {}).get("class_label", {}).get("names") if isinstance(
                feat.get("dtype"), dict) else None
            if feat.get("name") == "label" and names:
                return [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else names
    return None


# ---------------------------------------------------------------- archives


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_members: int) -> None:
    """Extract a zip or tar, refusing members that escape `dest`, links, devices, fifos, and bombs.

    A zip's whole member list is checked before anything is written; a tar (a stream) is checked
    member by member, so a bad or over-limit member stops extraction before it completes. Either
    way the caller's temporary folder is discarded on error.
    """
    dest = dest.resolve()

    def check(name: str) -> Path:
        target = (dest / name).resolve()
        if os.path.isabs(name) or ".." in Path(name).parts or not target.is_relative_to(dest):
            raise AigiError(f"{archive.name}: refusing member '{name}': its path escapes the extraction folder")
        return target

    def refuse(name: str, what: str) -> AigiError:
        return AigiError(f"{archive.name}: refusing member '{name}': it is {what}, not a regular file or folder")

    def limits(count: int, total: int) -> None:
        if count > max_members:
            raise AigiError(
                f"{archive.name}: over {max_members:,} members; raise data.max_archive_members if expected"
            )
        if total > max_bytes:
            raise AigiError(
                f"{archive.name}: expands to over {max_bytes:,} bytes; raise data.max_archive_bytes if expected"
            )

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                limits(len(infos), sum(i.file_size for i in infos))
                for info in infos:
                    check(info.filename)
                    kind = stat.S_IFMT(info.external_attr >> 16)
                    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                        raise refuse(info.filename, _FILE_KINDS.get(kind, "a special file"))
                written = 0
                for info in progress(infos, desc=f"extract {archive.name}", unit="file", leave=False):
                    target = check(info.filename)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        # Count real bytes: a header's declared size can lie.
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            limits(0, written)
                            dst.write(chunk)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                total = 0
                for count, member in enumerate(
                    progress(tf, desc=f"extract {archive.name}", unit="file", leave=False), start=1
                ):
                    total += max(member.size, 0)
                    limits(count, total)
                    target = check(member.name)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                    elif member.isfile():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with tf.extractfile(member) as src, open(target, "wb") as dst:  # type: ignore[union-attr]
                            shutil.copyfileobj(src, dst)
                    else:
                        raise refuse(member.name, _TAR_KINDS.get(member.type, "a special file"))
        else:
            raise AigiError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise AigiError(f"{archive.name}: could not extract ({_short(e)})") from None
        raise AigiError(f"{archive.name}: corrupt archive ({_short(e)})") from None


_FILE_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket"}
_TAR_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
              tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo"}


# ---------------------------------------------------------------- provenance


def summarise(root: Path, sums_path: Path) -> dict[str, Any]:
    """Count the images per split/class and write their SHA-256 list; return counts and its digest."""
    counts = {}
    lines = []
    for split in SPLITS:
        for label in CLASSES:
            files = sorted((root / split / label).glob("*")) if (root / split / label).is_dir() else []
            counts[f"{split}/{label}"] = len(files)
            lines += [f"{sha256_file(f)}  cifake/{split}/{label}/{f.name}" for f in files]
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise AigiError(f"the dataset has no images in {', '.join(empty)}; check the source's layout")
    text = "\n".join(lines) + "\n"
    sums_path.write_text(text)
    return {"counts": counts, "sha256sums_sha256": hashlib.sha256(text.encode()).hexdigest()}
