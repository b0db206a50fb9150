"""Progress bars for long steps: shown on a terminal, silent in logs and tests (not a TTY)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    kwargs.setdefault("disable", None)  # None: only when stderr is a terminal
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
