"""Fetch a dataset from its `source` into `data/raw/<dataset>/images/{train,test}/<CLASS>/`.

Every source ends in the same layout plus `data/raw/<dataset>/SOURCE.json` (what, where from, counts,
hashes) and `SHA256SUMS` beside it (one line per image, `sha256sum -c` format). A test-only dataset
(`<CLASS>/` folders without splits) has `test/` alone. The result is built in a
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
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

from aigi.classes import REAL, real_first
from aigi.data.images import is_image_file
from aigi.data.store import atomic_dir, sha256_file
from aigi.data.synthetic import write_synthetic
from aigi.errors import AigiError, one_line
from aigi.params import MAX_COMPRESSION_RATIO, DatasetParams
from aigi.paths import IMAGES, SHA256SUMS, SOURCE
from aigi.progress import progress

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CACHE = Path(os.environ.get("AIGI_CACHE", Path.home() / ".cache" / "aigi"))
OFFLINE_HINT = (
    "without network access, download the dataset elsewhere and set `datasets.<name>.source: local` and "
    "`datasets.<name>.path: /path/to/dataset.zip` (or the unpacked folder) in params.yaml"
)


# ---------------------------------------------------------------- entry point

RUN_FACTS = ("cache", "note", "downloaded", "path")  # facts of this run or machine, not of the data


def download(params: DatasetParams, seed: int, dest: Path) -> dict[str, Any]:
    """Fetch the dataset `params` describes into `dest` (data/raw/<dataset>); returns SOURCE.json's content."""
    with atomic_dir(dest) as staging:
        fetch = FETCHERS[params.source]
        info = fetch(params, seed, staging / IMAGES)
        # Where and how this run got the data (cache path, online or not) is printed, not written:
        # SOURCE.json must be identical for identical data, or DVC would re-run everything downstream.
        for key in RUN_FACTS:
            if key in info:
                print(f"download: {key}: {info.pop(key)}")
        info = {"source": params.source, **info,
                **summarise(staging / IMAGES, staging / SHA256SUMS, params.display_names)}
        (staging / SOURCE).write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---------------------------------------------------------------- sources


def fetch_synthetic(params: DatasetParams, seed: int, out: Path) -> dict[str, Any]:
    seed = seed if params.synthetic_seed is None else params.synthetic_seed
    write_synthetic(out, params.synthetic_train_per_class, params.synthetic_test_per_class, seed,
                    params.synthetic_generators, params.synthetic_artifact_region)
    return {"id": "aigi-synthetic", "version": f"seed={seed}"}


def fetch_local(params: DatasetParams, seed: int, out: Path) -> dict[str, Any]:
    path = Path(params.path or "").expanduser()
    if not path.exists():
        raise AigiError(f"datasets.<name>.path '{path}' does not exist; point it at a dataset folder or archive")
    info: dict[str, Any] = {"id": path.name, "path": str(path.resolve())}  # the name: same on every machine
    if path.is_file():
        info["archive_sha256"] = sha256_file(path)
    info.update(import_dataset(path, out, params))
    return info


def fetch_kaggle(params: DatasetParams, seed: int, out: Path) -> dict[str, Any]:
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
                f"datasets.<name>.source 'kaggle': could not download {handle} ({_short(e)}); {OFFLINE_HINT}"
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


def fetch_huggingface(params: DatasetParams, seed: int, out: Path) -> dict[str, Any]:
    from huggingface_hub import snapshot_download

    repo = params.huggingface_dataset
    try:
        folder = Path(snapshot_download(repo_id=repo, repo_type="dataset"))
    except Exception as e:
        raise AigiError(f"datasets.<name>.source 'huggingface': could not download {repo} ({_short(e)}); "
                        f"{OFFLINE_HINT}") from None
    info: dict[str, Any] = {"id": repo, "version": folder.name}
    info.update(import_dataset(folder, out, params))
    return info


def fetch_url(params: DatasetParams, seed: int, out: Path) -> dict[str, Any]:
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
        raise AigiError(f"datasets.<name>.url: SHA-256 mismatch (expected {params.sha256}, got {digest}); "
                        f"check datasets.<name>.sha256")
    info = {"id": url, "archive_sha256": digest, "cache": str(cached), "downloaded": fetched}
    return {**info, **import_dataset(cached, out, params)}


FETCHERS: dict[str, Callable[[DatasetParams, int, Path], dict[str, Any]]] = {
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
        raise AigiError(f"datasets.<name>.source 'url': could not download {url} ({_short(e)}); "
                        f"{OFFLINE_HINT}") from None
    part.rename(target)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e)}"


# ---------------------------------------------------------------- layout and import

GENIMAGE_SPLITS = {"train": "train", "val": "test"}  # GenImage's `val` is the test split
GENIMAGE_KINDS = ("ai", "nature")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")  # Hugging Face imagefolder: file_name + label columns
REAL_LABEL_HINT = ("set datasets.<name>.real_class (folders) or datasets.<name>.real_labels (a label column) to "
                   "the name real images carry")


def class_name(raw: str, real_names: Sequence[str] = (REAL,)) -> str:
    """A folder or label value -> its class name: REAL for the real class, else upper case, safe as a folder name."""
    if raw.strip().lower() in {r.strip().lower() for r in real_names}:
        return REAL
    name = re.sub(r"[^A-Z0-9_.+-]+", "_", raw.strip().upper()).strip("._")
    if not name:
        raise AigiError(f"class {raw!r}: no usable characters for a folder name; rename it")
    if name == REAL:
        raise AigiError(f"class {raw!r} is named like the real class but the real images are "
                        f"{', '.join(real_names) or 'nature'}; {REAL_LABEL_HINT}")
    return name


def import_dataset(path: Path, out: Path, params: DatasetParams, move: bool = False) -> dict[str, Any]:
    """Normalise a dataset folder, or the folder inside an archive, into `out/{train,test}/<CLASS>/`.

    Layouts (`datasets.<name>.layout`, or detected): `folder` = `{train,test}/<CLASS>/`; `genimage` =
    `<Generator>/{train,val}/{ai,nature}/`; `label_column` = Hugging Face parquet shards. Files
    keep their original names (moved rather than copied when `move`: our own scratch copy).
    """
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise AigiError(f"{path}: not a folder or a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            extract_archive(path, Path(tmp), params.max_archive_bytes, params.max_archive_members,
                            params.max_compression_ratio)
            token = _EXTRACTED.set((Path(tmp), path.name))
            try:
                return import_dataset(Path(tmp), out, params, move=True)
            finally:
                _EXTRACTED.reset(token)
    layout = params.layout
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "label_column":
        if next(path.rglob("*.parquet"), None) is not None:
            return {"layout": layout, **import_parquet(path, out, params)}
        return {"layout": layout, **import_metadata(path, out, params, move)}
    folders = find_genimage(path) if layout == "genimage" else find_layout(path, params.real_class)
    ignored = 0
    for (split, label), sources_ in folders.items():
        target = out / split / label
        target.mkdir(parents=True, exist_ok=True)
        for tag, folder in sources_:
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
            for f in progress(files, desc=f"import {split}/{label}", unit="file", leave=False):
                if not is_image_file(f):
                    ignored += 1
                    continue
                name = _flat_name(f, folder)
                if (target / name).exists():  # pooled folders (GenImage's `nature`) may share names
                    name = f"{tag}__{name}"
                (os.replace if move else shutil.copyfile)(f, target / name)
    return {"layout": layout, "ignored_non_image_files": ignored}


_EXTRACTED: ContextVar[tuple[Path, str] | None] = ContextVar("extracted", default=None)  # (tmp folder, archive)


def _shown(p: Path) -> str:
    """A path as messages name it: inside an extracted archive, the archive and the path in it
    (`cifake.zip`, `cifake.zip:train/`), never the temporary folder; elsewhere the path itself."""
    extracted = _EXTRACTED.get()
    if extracted is None or not p.is_relative_to(extracted[0]):
        return str(p)
    rel = p.relative_to(extracted[0]).as_posix()
    return extracted[1] if rel == "." else f"{extracted[1]}:{rel}{'/' if p.is_dir() else ''}"


def _flat_name(f: Path, folder: Path) -> str:
    rel = f.relative_to(folder)
    return "__".join(rel.parts)


def _dirs(folder: Path) -> list[Path]:
    return sorted(c for c in folder.iterdir() if c.is_dir() and not c.is_symlink())


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder of `folder` called `name`, matched case-insensitively."""
    found = [c for c in _dirs(folder) if c.name.lower() == name.lower()]
    if len(found) > 1:
        raise AigiError(f"{_shown(folder)}: {' and '.join(c.name for c in found)} differ only in case; "
                        f"merge them into one")
    return found[0] if found else None


def _walk(root: Path, depth: int) -> Iterator[Path]:
    """`root` and its sub-folders down to `depth` levels, breadth first, sorted."""
    level = [root]
    for _ in range(depth + 1):
        yield from level
        level = [c for f in level for c in _dirs(f)]


def _seen(root: Path) -> str:
    seen = sorted(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*")
                  if len(p.relative_to(root).parts) <= 2)[:20]
    return ", ".join(seen) or "nothing"


def detect_layout(root: Path) -> str:
    """`label_column` for parquet shards or metadata files, `genimage` for `{train,val}/{ai,nature}`, else `folder`."""
    if any(next(root.rglob(pattern), None) is not None for pattern in ("*.parquet", *METADATA_FILES)):
        return "label_column"
    for folder in _walk(root, 4):
        split = _child(folder, "val") or _child(folder, "train")
        if split and any(_child(split, k) for k in GENIMAGE_KINDS):
            return "genimage"
    return "folder"


def find_layout(root: Path, real_class: str = REAL, depth: int = 3) -> dict[tuple[str, str], list[tuple[str, Path]]]:
    """Locate `{train,test}/<CLASS>/` at or below `root`; class folders in any case, `real_class` -> REAL.

    A folder of `<CLASS>/` folders with no splits (one of them `real_class`) is a test-only dataset: all test.
    """
    for folder in _walk(root, depth):
        splits = {s: _child(folder, s) for s in SPLITS}
        if all(splits.values()):
            return _class_folders(splits, real_class)  # type: ignore[arg-type]
    for folder in _walk(root, depth):
        if _child(folder, real_class) and not any(_child(folder, s) for s in (*SPLITS, "val")):
            return _class_folders({"test": folder}, real_class)
    raise AigiError(
        f"{_shown(root)}: no dataset layout found (expected train/ and test/, each with one folder per class: "
        f"{real_class}/ and one per generator, e.g. FAKE/; or those class folders alone, all test; or GenImage's "
        f"<Generator>/{{train,val}}/{{ai,nature}}/; or parquet shards); found: {_seen(root)}"
    )


def _class_folders(splits: dict[str, Path], real_class: str) -> dict[tuple[str, str], list[tuple[str, Path]]]:
    """(split, class) -> [(folder name, folder)] for the class folders of each split folder."""
    found: dict[tuple[str, str], list[tuple[str, Path]]] = {}
    for split, s in splits.items():
        for c in _dirs(s):
            label = class_name(c.name, (real_class,))
            if (split, label) in found:
                raise AigiError(f"{_shown(s)}: {found[(split, label)][0][1].name} and {c.name} are both class {label}; "
                                f"merge or rename one")
            found[(split, label)] = [(c.name, c)]
    return found


def find_genimage(root: Path) -> dict[tuple[str, str], list[tuple[str, Path]]]:
    """GenImage: `<Generator>/[...]/{train,val}/{ai,nature}`; every generator's `nature` pooled as REAL."""
    parents = [f for f in _walk(root, 4) if any(
        (s := _child(f, split)) and any(_child(s, k) for k in GENIMAGE_KINDS) for split in GENIMAGE_SPLITS)]
    if not parents:
        raise AigiError(f"{_shown(root)}: no GenImage layout found (<Generator>/{{train,val}}/{{ai,nature}}/); "
                        f"found: {_seen(root)}")
    base = Path(os.path.commonpath(parents)) if len(parents) > 1 else parents[0].parent
    found: dict[tuple[str, str], list[tuple[str, Path]]] = {}
    owners: dict[str, str] = {}
    for parent in parents:
        gen_folder = parent.relative_to(base).parts[0]
        gen = class_name(gen_folder, ())
        if owners.setdefault(gen, gen_folder) != gen_folder:
            raise AigiError(f"{_shown(base)}: generator folders {owners[gen]} and {gen_folder} are both class {gen}; "
                            f"rename one")
        for split, ours in GENIMAGE_SPLITS.items():
            s = _child(parent, split)
            for kind, label in (("ai", gen), ("nature", REAL)):
                c = _child(s, kind) if s else None
                if c:
                    found.setdefault((ours, label), []).append((gen, c))
    # A generator of real images only would be dropped without a word: name it (as summarise names an
    # empty generator folder of the folder layout).
    fakes = {folder for key, folders in found.items() if key[1] != REAL for _, folder in folders}
    for gen_folder in owners.values():
        if not any(is_image_file(f) for c in fakes if c.is_relative_to(base / gen_folder) for f in c.rglob("*")):
            raise AigiError(f"GenImage generator {gen_folder} has nature/ but no ai/ images; add its ai/ images "
                            f"or remove the {gen_folder}/ folder")
    return found


def import_parquet(folder: Path, out: Path, params: DatasetParams | None = None) -> dict[str, Any]:
    """Hugging Face parquet shards (an image column with bytes, a label column) -> image files.

    The label comes from `datasets.<name>.label_column`; its values in `datasets.<name>.real_labels` are REAL, any other
    value is a generator class (class-index labels are named by the dataset card's features). Read
    in record batches, so memory stays flat whatever the shard size. A shard's split comes from its
    path (`train-00000-of-00002.parquet`, `data/test/...`; `validation` is the test split when
    there is no test shard); files keep the image's original name when the shard stores one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    params = params or DatasetParams()
    column = params.label_column
    names = _hf_label_names(folder, column)
    shards = sorted(folder.rglob("*.parquet"))
    written = 0
    skipped: list[dict[str, Any]] = []  # rows without an image: shard (relative to the dataset), row, reason
    for shard, split in _split_files(shards, folder):
        try:
            pf = pq.ParquetFile(shard)
        except (pa.ArrowException, OSError) as e:
            raise _not_parquet(shard, e) from None
        columns = pf.schema_arrow.names
        image_col = next((c for c in ("image", "img", "jpg", "png") if c in columns), None)
        _has_label_column(shard.name, column, columns)
        if image_col is None:
            raise AigiError(f"{shard.name}: no image column (expected 'image'; columns found: {', '.join(columns)})")
        i = 0
        for batch in _batches(pf, shard, [image_col, column]):
            for image, label in zip(batch.column(image_col).to_pylist(), batch.column(column).to_pylist(),
                                    strict=True):
                data = image.get("bytes") if isinstance(image, dict) else image
                empty = "image" if not isinstance(data, bytes) or not data else "label" if label is None else None
                if empty:  # no image to write: listed (SOURCE.json), then skipped or failed by preprocess.on_bad_image
                    skipped.append({"shard": shard.relative_to(folder).as_posix(), "row": i,
                                    "reason": f"{empty} cell is null"})
                    i += 1
                    continue
                raw = names[int(label)] if names and not isinstance(label, str) else str(label)
                label_name = class_name(raw, params.real_labels)
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
        raise AigiError(f"{_shown(folder)}: no parquet shard named for a train or test split")
    return {"format": "parquet", **({"skipped_rows": skipped} if skipped else {})}


def _batches(pf: Any, shard: Path, columns: list[str]) -> Iterator[Any]:
    """The shard's record batches; a damaged one (truncated, corrupt pages) is one line naming it."""
    import pyarrow as pa

    try:
        yield from pf.iter_batches(columns=columns, batch_size=1024)
    except (pa.ArrowException, OSError) as e:
        raise _not_parquet(shard, e) from None


def _not_parquet(shard: Path, e: BaseException) -> AigiError:
    return AigiError(f"{_shown(shard)}: not a readable parquet file ({_short(e)}); download it again or remove it")


def import_metadata(folder: Path, out: Path, params: DatasetParams, move: bool = False) -> dict[str, Any]:
    """Hugging Face image folders: `metadata.csv` / `metadata.jsonl` rows name a `file_name` and its label column.

    The split comes from the metadata file's path, as for parquet shards; files keep their names.
    """
    import pandas as pd

    tables = sorted(p for pattern in METADATA_FILES for p in folder.rglob(pattern))
    written = 0
    for meta, split in _split_files(tables, folder):
        table = pd.read_csv(meta) if meta.suffix == ".csv" else pd.read_json(meta, lines=True)
        _has_label_column(meta.relative_to(folder).as_posix(), params.label_column, list(table.columns))
        if "file_name" not in table.columns:
            raise AigiError(f"{_shown(meta)}: no file_name column (columns found: {', '.join(table.columns)})")
        for rel, label in zip(table["file_name"], table[params.label_column], strict=True):
            src = (meta.parent / str(rel)).resolve()
            if not src.is_relative_to(meta.parent.resolve()) or not src.is_file():
                raise AigiError(f"{_shown(meta)}: file_name {rel!r} is not a file under {meta.parent.name}/")
            if not is_image_file(src):
                continue
            target = out / split / class_name(str(label), params.real_labels) / src.name
            if target.exists():  # one name in two sub-folders: keep both
                target = target.with_name("__".join(Path(str(rel)).parts))
            target.parent.mkdir(parents=True, exist_ok=True)
            (os.replace if move else shutil.copyfile)(src, target)
            written += 1
    if not written:
        raise AigiError(f"{_shown(folder)}: no metadata file named for a train or test split")
    return {"format": "metadata"}


def _split_files(files: list[Path], root: Path) -> list[tuple[Path, str]]:
    """(file, split) for the files of a train or test split, the split read from the words of the file's path;
    `val`/`validation` is the test split when no file is `test`; files of no split are left out."""
    split_of: dict[Path, str | None] = {}
    for f in files:
        tokens = set(re.split(r"[^a-z]+", f.relative_to(root).as_posix().lower()))
        split_of[f] = next((s for s in SPLITS if s in tokens), "val" if tokens & {"val", "validation"} else None)
    if "test" not in split_of.values():
        split_of = {k: "test" if v == "val" else v for k, v in split_of.items()}
    return [(f, split) for f, split in split_of.items() if split in SPLITS]


def _has_label_column(where: str, column: str, columns: list[str]) -> None:
    if column not in columns:
        raise AigiError(f"{where}: no label column '{column}' (columns found: {', '.join(columns)}); "
                        f"set datasets.<name>.label_column")


def _image_suffix(data: bytes) -> str:
    """A file suffix from the image's magic bytes (PIL reads any of them regardless)."""
    for magic, suffix in ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp")):
        if data.startswith(magic):
            return suffix
    return ".webp" if data[8:12] == b"WEBP" else ".png"


def _hf_label_names(folder: Path, column: str = "label") -> list[str] | None:
    """Class names from the dataset card's `dataset_info.features` (int labels of `column` -> names)."""
    card = folder / "README.md"
    if not card.is_file() or not card.read_text().startswith("---"):
        return None
    meta = yaml.safe_load(card.read_text().split("---")[1]) or {}
    infos = meta.get("dataset_info") or {}
    for info in infos if isinstance(infos, list) else [infos]:
        for feat in info.get("features", []):
            names = (feat.get("dtype") or {}).get("class_label", {}).get("names") if isinstance(
                feat.get("dtype"), dict) else None
            if feat.get("name") == column and names:
                return [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else names
    return None


# ---------------------------------------------------------------- archives


# Zip bombs (OWASP ASVS 12.1.2: check uploads for "small input files that decompress into huge files"):
# the total size limit alone lets a 1 GB member of zeros (1 MB compressed) be written first. OWASP's
# reasoning, as the rules built on it (e.g. Sonar's RSPEC-5042) put it: limit the member count, the
# total expanded size AND the ratio of expanded to compressed size, which is 1 to 3 for most legitimate
# archives, and never trust the declared sizes. Images are compressed already (JPEG, PNG, WebP: a ratio
# of about 1); raw BMP/TIFF or CSV may reach 10 or so; DEFLATE on zeros reaches about 1000. Members
# smaller than RATIO_MIN_BYTES are never refused by ratio (a black BMP thumbnail compresses 100x, and
# small members cannot bomb: the total limit bounds them all together).
RATIO_MIN_BYTES = 1 << 20


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_members: int,
                    max_ratio: float = MAX_COMPRESSION_RATIO) -> None:
    """Extract a zip or tar, refusing members that escape `dest`, links, devices, fifos, and bombs.

    A zip's whole member list is checked before anything is written, its members' expanded/compressed
    ratio included (and again on the bytes really written); a tar (a stream) is checked member by
    member, its expanded size against the archive's own, so a bad or over-limit member stops
    extraction before it completes. Either way the caller's temporary folder is discarded on error.
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
                f"{archive.name}: over {max_members:,} members; raise datasets.<name>.max_archive_members if expected"
            )
        if total > max_bytes:
            raise AigiError(
                f"{archive.name}: expands to over {max_bytes:,} bytes; raise datasets.<name>.max_archive_bytes "
                f"if expected"
            )

    def ratio(name: str | None, expanded: int, compressed: int) -> None:
        compressed = max(min(compressed, packed), 1)
        if expanded > RATIO_MIN_BYTES and expanded > max_ratio * compressed:
            what = f"refusing member '{name}': it expands" if name else "expands"
            raise AigiError(
                f"{archive.name}: {what} {expanded:,} bytes from {compressed:,} (ratio {expanded / compressed:.0f} > "
                f"{max_ratio:g}), a decompression bomb's shape; raise datasets.<name>.max_compression_ratio if expected"
            )

    try:
        packed = archive.stat().st_size  # no member holds more compressed bytes than the archive: caps the header's
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                limits(len(infos), sum(i.file_size for i in infos))
                for info in infos:
                    check(info.filename)
                    kind = stat.S_IFMT(info.external_attr >> 16)
                    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                        raise refuse(info.filename, _FILE_KINDS.get(kind, "a special file"))
                    ratio(info.filename, info.file_size, info.compress_size)
                written = 0
                for info in progress(infos, desc=f"extract {archive.name}", unit="file", leave=False):
                    target = check(info.filename)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        # Count real bytes: a header's declared size can lie (this does not rely on zipfile
                        # stopping at the declared size).
                        member = 0
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            member += len(chunk)
                            limits(0, written)
                            ratio(info.filename, member, info.compress_size)
                            dst.write(chunk)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                total = 0  # a tar.gz compresses as one stream: its ratio is the archive's
                for count, member in enumerate(
                    progress(tf, desc=f"extract {archive.name}", unit="file", leave=False), start=1
                ):
                    total += max(member.size, 0)
                    limits(count, total)
                    ratio(None, total, packed)
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


def classes_in(root: Path) -> list[str]:
    """The classes under `root/{train,test}/`: REAL first, then the generators sorted case-insensitively."""
    return real_first(c.name for split in SPLITS if (root / split).is_dir() for c in _dirs(root / split))


def summarise(root: Path, sums_path: Path, display_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Check the normalised layout, count images per split/class and write their SHA-256 list.

    Returns the classes (REAL first), their display names, the counts and the list's digest.
    """
    classes = classes_in(root)
    if REAL not in classes:
        raise AigiError(f"the dataset has no REAL class (classes found: {', '.join(classes) or 'none'}); "
                        f"{REAL_LABEL_HINT}")
    if len(classes) < 2:
        raise AigiError("the dataset has only REAL images: it needs at least one generator's images")
    counts = {}
    lines = []
    splits = [s for s in SPLITS if (root / s).is_dir()]  # a test-only dataset has test/ alone
    if "test" not in splits:
        raise AigiError("the dataset has no test split (only train/); check the source's layout")
    for split in splits:
        for label in classes:
            files = sorted((root / split / label).glob("*")) if (root / split / label).is_dir() else []
            counts[f"{split}/{label}"] = len(files)
            lines += [f"{sha256_file(f)}  {IMAGES}/{split}/{label}/{f.name}" for f in files]
    empty = [k for k, v in counts.items() if v == 0 and k.startswith("test/")]
    if empty:
        raise AigiError(f"the dataset has no test images for class {', '.join(k[5:] for k in empty)}; "
                        f"check the source's layout (every class needs test images)")
    empty = [k for k, v in counts.items() if v == 0 and k.split("/")[1] == REAL]
    if empty:
        raise AigiError(f"the dataset has no images in {', '.join(empty)}; check the source's layout")
    empty = [k for k, v in counts.items() if v == 0 and (root / k).is_dir()]
    if empty:
        raise AigiError(f"generator folder {', '.join(empty)} is empty; fill or remove it")
    text = "\n".join(lines) + "\n"
    sums_path.write_text(text)
    display = {c: (display_names or {}).get(c, c) for c in classes}
    return {"classes": classes, "display_names": display, "counts": counts,
            "sha256sums_sha256": hashlib.sha256(text.encode()).hexdigest()}
