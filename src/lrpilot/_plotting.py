"""Shared plotting helper: write a matplotlib figure as a PNG, atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lrpilot._atomic_io import atomic_write_bytes

__all__ = ["save_png"]


def save_png(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Render ``fig`` to PNG bytes and write them to ``path`` atomically; return the path.

    The bytes go through :func:`lrpilot._atomic_io.atomic_write_bytes` (temp file in the
    same directory, flush, fsync, rename), so an existing file is never left half-written.
    """

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    atomic_write_bytes(buffer.getvalue(), path)
    return Path(path)
