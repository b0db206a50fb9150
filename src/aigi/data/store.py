"""On-disk formats: folders that appear only when complete, and chunk-written memory-mappable arrays."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd


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


class ArrayWriter:
    """Append uint8 batches to an `.npy` file on disk, never holding more than one batch in RAM.

    The file is created for `capacity` rows; `close()` rewrites the header with the rows actually
    written (skipped images make it shorter) and truncates the file, so the result is a plain
    `.npy` that `np.load(..., mmap_mode="r")` opens. A SHA-256 of the pixel bytes is kept on the fly.
    """

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, ...]):
        self.path, self.row_shape, self.rows = path, row_shape, 0
        self._array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(capacity, 1), *row_shape))
        self._offset = self._array.offset
        self._sha = hashlib.sha256()

    def append(self, batch: np.ndarray) -> None:
        n = len(batch)
        self._array[self.rows : self.rows + n] = batch
        self._sha.update(np.ascontiguousarray(batch).tobytes())
        self.rows += n

    def close(self) -> str:
        """Finish the file; returns the SHA-256 of its pixel data."""
        self._array.flush()
        del self._array
        header = _npy_header((self.rows, *self.row_shape))
        if len(header) != self._offset:
            raise RuntimeError("npy header length changed")  # cannot happen for v1.0 headers of equal rank
        with open(self.path, "r+b") as f:
            f.write(header)
            f.truncate(self._offset + self.rows * int(np.prod(self.row_shape)))
        return self._sha.hexdigest()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def load_split(folder: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The memory-mapped images (N×H×W×3 uint8) and the table (file, label, label_name) of a split."""
    images = np.load(folder / f"{split}.npy", mmap_mode="r")
    table = pd.read_csv(folder / f"{split}.csv")
    if len(table) != len(images):
        raise ValueError(f"{folder}/{split}: {len(images)} images but {len(table)} rows; re-run preprocess")
    return images, table
