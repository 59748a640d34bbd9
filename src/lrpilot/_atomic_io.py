"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never
half of one.

Recipe: write to a temp file in the same directory, flush, ``fsync``, ``os.replace`` onto
the target, then ``fsync`` the directory so the rename itself is durable. Used for
checkpoints, ``summary.json`` and every PNG lrpilot writes.

Permissions: ``tempfile.mkstemp`` creates its file with mode ``0600``; the file is given
the mode an ordinary ``open(path, "w")`` would have, ``0666 & ~umask`` (``0644`` under the
usual umask ``022``), so colleagues, CI and dashboards can read what lrpilot writes.

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
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_bytes", "default_file_mode", "fsync_dir", "give_default_mode"]


def _current_umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux:
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - non-Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_current_umask()


def give_default_mode(fd: int) -> None:
    """Give the open temp file ``fd`` the mode a plainly created file would have."""
    with contextlib.suppress(OSError, AttributeError):  # fchmod: POSIX only
        os.fchmod(fd, default_file_mode())


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


def atomic_write_bytes(
    data: bytes, path: str | Path, *, before_replace: Callable[[], None] | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (temp file, flush, fsync, rename, dir fsync).
    The parent directory is created if needed; on any error the temp file is removed and
    an existing ``path`` is left untouched. ``before_replace`` runs once the new bytes are
    on disk, just before the rename (a checkpoint rotates ``latest`` to ``previous``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        give_default_mode(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
