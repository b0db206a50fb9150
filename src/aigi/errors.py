"""The one exception type users see: a message naming the problem and the fix, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class AigiError(Exception):
    """A problem with the user's input, params or environment; its message is the whole story."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit` characters (its type name if it has none)."""
    return (" ".join(str(e).split()) or type(e).__name__)[:limit]


def exits_cleanly(main: Callable[[], T]) -> Callable[[], T]:
    """Wrap a stage or CLI `main`: an `AigiError` becomes one `error: ...` line and exit code 1."""

    @functools.wraps(main)
    def wrapper() -> T:
        try:
            return main()
        except AigiError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
