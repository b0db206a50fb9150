"""On-disk formats: folders that appear only when complete, and memory-mappable arrays written by row range."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.errors import AigiError, one_line


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a `<dest>.partial` folder to fill; it replaces `dest` only if the block succeeds."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


@dataclass(frozen=True)
class RowFile:
    """Where row `i` of an `.npy` array lives on disk; picklable, so worker processes write rows directly."""

    path: Path
    offset: int  # bytes of the .npy header
    row_bytes: int

    def write(self, start_row: int, batch: np.ndarray) -> None:
        """Write `batch` (uint8, C-contiguous) as rows `start_row`, `start_row + 1`, ...: one positioned write."""
        data = memoryview(np.ascontiguousarray(batch, dtype=np.uint8)).cast("B")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            pos = self.offset + start_row * self.row_bytes
            while data:
                n = os.pwrite(fd, data, pos)
                data, pos = data[n:], pos + n
        finally:
            os.close(fd)


class ArrayWriter:
    """An `.npy` file of uint8 rows, written by row range from any process without holding the array in RAM.

    The file is created for `capacity` rows (sparse, so unwritten space costs nothing). Writers fill
    blocks of rows through `rows` (a `RowFile`), each block starting where it was assigned and
    possibly shorter than its slot (skipped images). `close()` moves the blocks together, in order,
    rewrites the header with the rows actually written and truncates the file, so the result is a
    plain `.npy` that `np.load(..., mmap_mode="r")` opens. Plain positioned writes, not a writable
    memmap: written pages do not stay mapped in the process, so its memory stays flat in N.
    """

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, ...]):
        self.row_shape = row_shape
        header = _npy_header((capacity, *row_shape))
        self.rows = RowFile(path, len(header), int(np.prod(row_shape)))
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(len(header) + capacity * self.rows.row_bytes)

    def close(self, blocks: list[tuple[int, int]]) -> int:
        """Finish the file from its filled `(start_row, rows)` blocks, in output order; returns the row count."""
        offset, row_bytes = self.rows.offset, self.rows.row_bytes
        cursor = 0
        with open(self.rows.path, "r+b") as f:
            for start, count in blocks:
                if start != cursor:  # moving rows down: copy front to back, in bounded pieces
                    for done in range(0, count * row_bytes, _COPY_BYTES):
                        n = min(_COPY_BYTES, count * row_bytes - done)
                        piece = os.pread(f.fileno(), n, offset + start * row_bytes + done)
                        os.pwrite(f.fileno(), piece, offset + cursor * row_bytes + done)
                cursor += count
            header = _npy_header((cursor, *self.row_shape))
            if len(header) != offset:
                raise RuntimeError("npy header length changed")  # cannot happen: v1.0 headers are padded to 64
            f.seek(0)
            f.write(header)
            f.truncate(offset + cursor * row_bytes)
        return cursor


_COPY_BYTES = 64 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def load_split(folder: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The memory-mapped images (N×H×W×3 uint8) and the table (file, label, label_name) of a split."""
    try:
        images = np.load(folder / f"{split}.npy", mmap_mode="r")
        table = pd.read_csv(folder / f"{split}.csv")
    except FileNotFoundError as e:
        raise AigiError(f"{e.filename} is missing; run the preprocess stage (dvc repro preprocess)") from None
    except (ValueError, OSError) as e:  # a truncated .npy, an unparsable or empty .csv
        raise AigiError(f"{folder}/{split} is corrupt ({one_line(e)}); re-run preprocess (dvc repro -f preprocess)"
                        ) from None
    if len(table) != len(images):
        raise AigiError(f"{folder}/{split}: {len(images)} images but {len(table)} rows; re-run preprocess "
                        f"(dvc repro -f preprocess)")
    return images, table


def load_manifest(folder: Path) -> dict[str, Any]:
    """`manifest.json` of a processed dataset folder, as preprocess wrote it (classes, splits, counts, ...)."""
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AigiError(f"{path} is missing; run the preprocess stage (dvc repro preprocess)") from None
    except ValueError as e:
        raise AigiError(f"{path} is corrupt ({one_line(e)}); re-run preprocess (dvc repro -f preprocess)") from None
