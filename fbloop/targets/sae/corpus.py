"""The corpus: the docstrings of Python's standard library, read from its sources."""

from __future__ import annotations

import ast
import pkgutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CORPUS = "python-stdlib-docstrings-v3"  # bump when the corpus rules change: it is in the cache key


# ---------------------------------------------------------------- corpus

# encodings: ~100 codec modules with one boilerplate docstring each.
_SKIP = {"test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages", "encodings"}


def _public(name: str) -> bool:
    return not any(c.startswith(("_", "test_")) or c in _SKIP for c in name.split("."))


def stdlib_sources() -> list[tuple[str, str]]:
    """``(module, file)`` for the public pure-Python stdlib modules, sorted by name."""
    out: list[tuple[str, str]] = []

    def walk(path: str, prefix: str) -> None:
        for m in sorted(pkgutil.iter_modules([path]), key=lambda m: m.name):
            name = prefix + m.name
            if not _public(name):
                continue
            spec = m.module_finder.find_spec(m.name)  # type: ignore[union-attr]
            if spec is None:
                continue
            if spec.origin and spec.origin.endswith(".py"):
                out.append((name, spec.origin))
            if m.ispkg and spec.submodule_search_locations:
                walk(spec.submodule_search_locations[0], name + ".")

    walk(sysconfig.get_paths()["stdlib"], "")
    return out


def _file_docstrings(path: str, min_chars: int) -> list[str]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []  # a few files are deliberately broken (lib2to3 test data)
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= min_chars:
                docs.append(doc)
    return docs


def stdlib_docstrings(seed: int = 0, min_chars: int = 20) -> Iterator[list[str]]:
    """The distinct module, class and function docstrings of the stdlib, one list per module.

    Modules come in a seeded random order (so a short corpus still spans the stdlib);
    a docstring seen in an earlier module is dropped. The sources are parsed with
    ``ast``, never imported: importing the whole stdlib has side effects
    (``antigravity`` opens a browser, ``tkinter`` wants a display).
    """
    sources = stdlib_sources()
    seen: set[str] = set()
    for i in np.random.default_rng(seed).permutation(len(sources)):
        docs = [d for d in dict.fromkeys(_file_docstrings(sources[i][1], min_chars)) if d not in seen]
        seen.update(docs)
        if docs:
            yield docs
