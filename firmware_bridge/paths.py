"""Where mpq finds its models and keeps what it builds (shared by every layer; imports nothing of mpq)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

MODELS_DIR = Path(os.environ.get("MPQ_MODELS_DIR", Path(__file__).resolve().parents[1] / "models"))
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a task's or a robot's name names a folder: no paths


def cache_dir() -> Path:
    """Generated code and compiled libraries: $MPQ_CACHE_DIR, else $XDG_CACHE_HOME/mpq or ~/.cache/mpq."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mpq"
    return Path(os.environ.get("MPQ_CACHE_DIR", default))


def existing_ancestor(folder: Path) -> Path:
    """`folder` itself if it exists, else its nearest parent that does: where making `folder` starts."""
    return next(p for p in (folder, *folder.parents) if p.exists())


def blocking_file(folder: Path) -> Path | None:
    """The file standing where `folder` or one of its parents must be a folder, if any: creating it would fail."""
    existing = existing_ancestor(folder)
    return None if existing.is_dir() else existing


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target` as cached, or made by `build(path)` in a temporary folder beside it and renamed into place:
    the rename is atomic, so concurrent first users see all of the file or none of it."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        build(built)
        os.replace(built, target)
    return target
