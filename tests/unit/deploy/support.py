"""Loads k8s/validate.py (a script, not a package) and makes mutable copies of k8s/."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[3]


def load_validate() -> ModuleType:
    """k8s/validate.py as a module (registered so its dataclasses resolve)."""
    name = "ferry_k8s_validate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "k8s" / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def copy_k8s(tmp_path: Path) -> Path:
    """A throwaway copy of k8s/ to break on purpose."""
    target = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def edit(path: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence of `old` in `path` (so a mutation cannot silently miss)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))
