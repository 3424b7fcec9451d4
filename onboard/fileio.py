"""Files that are either whole or absent: atomic writes and sha256 digests. Standard library only (the
robot's release and service code uses it before its venv exists)."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import time
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a sibling temporary file, fsync it, rename it over `path`: a crash leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_durable(path: Path, data: bytes) -> None:
    """Append data to path and fsync it: the bytes survive a power cut (a new file's name needs fsync_dir too)."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hold_lock(path: Path):
    """An exclusive lock on `path` (created if missing) for as long as the returned file stays open, with this
    process's pid in it; None when another process holds it (the file then names that process's pid)."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        try:
            still_there = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            still_there = False
        if still_there:
            break
        f.close()  # its holder removed it as we opened it (a recorder giving up a folder it made): lock it anew
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def new_run_dir(parent: Path) -> Path:
    """A new folder parent/<date-time>, suffixed -2, -3, ... when that name is taken: two runs started in the
    same second never share a folder (nor overwrite each other's checkpoints)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
