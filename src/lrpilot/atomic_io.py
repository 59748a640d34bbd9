"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never
half of one.

Recipe: write to a temp file in the same directory, flush, ``fsync``, ``os.replace`` onto
the target, then ``fsync`` the directory so the rename itself is durable. Used for
checkpoints, ``summary.json`` and every PNG lrpilot writes.

>>> import json, pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.json"
>>> atomic_write_bytes(json.dumps({"a": 1}).encode(), target)
>>> json.loads(target.read_text())
{'a': 1}
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory (makes a rename inside it durable); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically (temp file, flush, fsync, rename, dir fsync).
    The parent directory is created if needed; on any error the temp file is removed and
    an existing ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
