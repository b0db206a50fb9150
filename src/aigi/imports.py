"""The aigi modules a script runs: its `aigi` imports followed transitively, read from the source (ast),
function-level imports included, nothing executed. The finetune checkpoint hashes them (a resume must
not outlive its code) and a test checks that dvc.yaml lists them as each stage's deps."""

from __future__ import annotations

import ast
from pathlib import Path

import aigi

PACKAGE = Path(aigi.__file__).resolve().parent


def _module_file(name: str, package: Path) -> Path | None:
    """`aigi.data.store` -> its .py (or a package's __init__.py) under `package`; None if no such file."""
    base = package.parent.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported_names(source: Path, package_name: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from aigi import model` imports a module
    return {n for n in names if n == package_name or n.startswith(package_name + ".")}


def local_modules(script: Path, package: Path = PACKAGE) -> list[Path]:
    """The package's files that `script` imports, directly or not (parent packages' __init__.py included)."""
    seen: set[Path] = set()
    todo = [Path(script)]
    while todo:
        for name in _imported_names(todo.pop(), package.name):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                f = _module_file(".".join(parts[:i]), package)
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return sorted(seen)
