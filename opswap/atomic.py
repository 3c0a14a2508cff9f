"""Atomic file writes: a reader never sees half a file, a crashed writer leaves no file behind.

Everything opswap writes that another process may read — trial records, checkpoints, weight
banks, CSR exports, summaries, costs — goes through here: the data is written to a temporary
file in the target's folder, flushed to disk and renamed over the target (`os.replace`, atomic
within one file system).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its file 0600; the renamed file gets the mode a plain open() would give it
# (0644 under the usual umask 022), so records and reports on a shared file system stay readable.
_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    For writers that want a file name (`safetensors.torch.save_file`, `DataFrame.to_csv`).
    The parent folder is created when missing; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _MODE)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically and return the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: object, *, indent: int = 1) -> Path:
    """Write `obj` as JSON (no NaN: they must be made null first) atomically."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False, default=str) + "\n")
