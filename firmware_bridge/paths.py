"""Where mpq finds its models and keeps what it builds (shared by every layer; imports nothing of mpq)."""

from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR = Path(os.environ.get("MPQ_MODELS_DIR", Path(__file__).resolve().parents[1] / "models"))


def cache_dir() -> Path:
    """Generated code and compiled libraries: $MPQ_CACHE_DIR, else $XDG_CACHE_HOME/mpq or ~/.cache/mpq."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mpq"
    return Path(os.environ.get("MPQ_CACHE_DIR", default))
