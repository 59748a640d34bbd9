"""Atomic checkpoints with fallback to the previous valid one.

Layout of ``<run>/checkpoints/``: ``latest.pt`` (newest), ``previous.pt`` (the one before,
kept for fallback) and ``best.pt`` (model weights at the best monitored epoch).

Writing (:func:`atomic_save`): ``torch.save`` to a temporary file in the same directory,
flush, ``os.fsync``, ``os.replace`` onto the final name, then ``fsync`` the directory, so a
crash at any moment leaves either the old file or the new one, never a torn file under
the final name. Rotation (:meth:`CheckpointManager.save`) renames ``latest`` to
``previous`` before installing the new ``latest``; a crash between the two renames leaves
``previous`` valid.

Reading (:func:`load_checkpoint`): ``torch.load(..., weights_only=True)`` (no arbitrary
pickle code runs), then a format check, then the content checksum.
:meth:`CheckpointManager.newest_valid` tries every candidate, reports why the bad ones were
skipped, and returns the valid one with the highest step.

Checksum (:func:`content_checksum`): CRC32C (Castagnoli, RFC 3720) over the checkpoint's
content in order: every key, every plain value's ``repr`` and every tensor's dtype, shape
and raw bytes. It is stored under ``lrpilot_checksum`` and recomputed at load, so a bit
flipped anywhere (a weight included; ``torch.load`` does not notice those) makes the file
"corrupted", like a torn one: the next candidate (``previous.pt``) is used. The file stays
a plain ``torch.save`` archive (``torch.load`` reads it as before).

Identity: a run's checkpoints carry ``identity`` (the run id of ``<run>/run.json`` and the
config fingerprint); ``newest_valid(identity=...)`` refuses a checkpoint of another run.

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as d:
...     m = CheckpointManager(d)
...     _ = m.save({"step": 3, "w": torch.ones(2)})
...     _ = m.save({"step": 5, "w": torch.zeros(2)})
...     _ = open(m.latest_path, "wb").write(b"garbage")   # simulate a torn write
...     ckpt, notes = m.newest_valid()
...     ckpt["step"], len(notes)
(3, 1)
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import google_crc32c
import torch

from lrpilot._atomic_io import atomic_write_bytes
from lrpilot.errors import ConfigError

FORMAT_VERSION = 2  # 2: content checksum and run identity
_FORMAT_KEY = "lrpilot_checkpoint_version"
_CHECKSUM_KEY = "lrpilot_checksum"


def _feed(crc: int, obj: Any) -> int:
    """Extend ``crc`` with ``obj``'s content (see :func:`content_checksum`)."""
    extend = google_crc32c.extend
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        t = (t.to_dense() if t.layout != torch.strided else t).cpu().contiguous()
        crc = extend(crc, f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            return extend(crc, t.reshape(-1).view(torch.uint8).numpy())
        return crc
    if isinstance(obj, dict):
        crc = extend(crc, f"D{len(obj)}".encode())
        for key, value in obj.items():
            crc = _feed(_feed(crc, key), value)
        return crc
    if isinstance(obj, (list, tuple)):
        crc = extend(crc, f"{type(obj).__name__}{len(obj)}".encode())
        for value in obj:
            crc = _feed(crc, value)
        return crc
    return extend(crc, f"{type(obj).__name__}:{obj!r};".encode())


def content_checksum(obj: Any) -> str:
    """``"crc32c:<8 hex digits>"`` of ``obj``'s content: keys and plain values by ``repr``
    (type included), tensors by dtype, shape and raw bytes, in order (the same after a
    ``torch.save``/``torch.load`` round trip).

    >>> a = content_checksum({"w": torch.ones(2), "step": 3})
    >>> a == content_checksum({"w": torch.ones(2), "step": 3})
    True
    >>> a == content_checksum({"w": torch.tensor([1.0, 1.0000001]), "step": 3})
    False
    """
    return f"crc32c:{_feed(0, obj):08x}"


def _reason(exc: BaseException) -> str:
    """A one-line reason for an unreadable file (never PyTorch's advice to load with
    ``weights_only=False``: lrpilot's checkpoints never need it)."""
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return "it holds objects other than tensors and plain data, which lrpilot does not load"
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def encode(obj: Any) -> bytes:
    """``torch.save`` into memory (done on the training thread: pickling holds the GIL;
    only the file I/O goes to the writer thread)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file, flush, fsync, rename)."""
    atomic_write_bytes(encode(obj), path)


def load_checkpoint(path: str | Path) -> dict:
    """Load and check one checkpoint; raise ``ConfigError`` with the reason if unusable."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"checkpoint {path} does not exist") from exc
    except Exception as exc:  # torn/corrupted files raise many different errors
        raise ConfigError(f"checkpoint {path} is truncated or corrupted ({_reason(exc)})") from None
    if not isinstance(obj, dict) or _FORMAT_KEY not in obj:
        raise ConfigError(f"checkpoint {path} is not an lrpilot checkpoint")
    if obj[_FORMAT_KEY] != FORMAT_VERSION:
        raise ConfigError(
            f"checkpoint {path} has format version {obj[_FORMAT_KEY]}, "
            f"this lrpilot reads version {FORMAT_VERSION}"
        )
    stored = obj.pop(_CHECKSUM_KEY, None)
    actual = content_checksum(obj)
    if stored != actual:
        raise ConfigError(
            f"checkpoint {path} is truncated or corrupted (content checksum {actual} does "
            f"not match the stored {stored})"
        )
    return obj


def with_checksum(state: dict) -> dict:
    """``state`` with the format version and its content checksum added (what is saved)."""
    payload = {**state, _FORMAT_KEY: FORMAT_VERSION}
    payload[_CHECKSUM_KEY] = content_checksum(payload)
    return payload


def identity_mismatch(ckpt: dict, identity: dict) -> str | None:
    """Why ``ckpt`` does not belong to the run ``identity`` (``run_id``, ``config``), or
    ``None``.

    >>> identity_mismatch({"identity": {"run_id": "a", "config": "x"}},
    ...                   {"run_id": "b", "config": "x"})
    'it belongs to run a, this run is b'
    """
    theirs = ckpt.get("identity") or {}
    if theirs.get("run_id") != identity["run_id"]:
        return f"it belongs to run {theirs.get('run_id')}, this run is {identity['run_id']}"
    if theirs.get("config") != identity["config"]:
        return (
            f"its config fingerprint {theirs.get('config')} is not this run's {identity['config']}"
        )
    return None


class CheckpointManager:
    """Writes and finds the checkpoints of one run directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.latest_path = self.directory / "latest.pt"
        self.previous_path = self.directory / "previous.pt"
        self.best_path = self.directory / "best.pt"

    def encode(self, state: dict) -> bytes:
        """The bytes of a checkpoint file for ``state`` (format version and checksum
        added)."""
        return encode(with_checksum(state))

    def save(self, state: dict | bytes) -> Path:
        """Write ``state`` (or its :meth:`encode` d bytes) as the new ``latest``; the old
        one becomes ``previous``."""
        data = state if isinstance(state, bytes) else self.encode(state)

        def rotate() -> None:  # the old latest becomes previous once the new one is on disk
            if self.latest_path.exists():
                os.replace(self.latest_path, self.previous_path)

        atomic_write_bytes(data, self.latest_path, before_replace=rotate)
        return self.latest_path

    def save_best(self, state: dict) -> Path:
        atomic_save(with_checksum(state), self.best_path)
        return self.best_path

    def candidates(self) -> list[Path]:
        return [p for p in (self.latest_path, self.previous_path) if p.exists()]

    def newest_valid(self, identity: dict | None = None) -> tuple[dict | None, list[str]]:
        """``(checkpoint or None, notes)``: the valid candidate with the highest ``step``;
        ``notes`` says, one line each, which files were skipped and why. With ``identity``
        (``run_id``, ``config``) a readable checkpoint of another run raises
        ``ConfigError`` (it is never used, nor silently skipped)."""
        notes: list[str] = []
        best: dict | None = None
        for path in self.candidates():
            try:
                ckpt = load_checkpoint(path)
            except ConfigError as exc:
                notes.append(f"{exc}; falling back to an older checkpoint")
                continue
            why = None if identity is None else identity_mismatch(ckpt, identity)
            if why is not None:
                raise ConfigError(
                    f"cannot resume: checkpoint {path} is not from this run ({why}); "
                    "move it away or resume the run it belongs to"
                )
            if best is None or int(ckpt.get("step", -1)) > int(best.get("step", -1)):
                best = ckpt
        return best, notes


class BackgroundWriter:
    """Runs checkpoint writes on one background thread, in submission order, so the
    training thread never waits for ``fsync``. At most ``max_pending`` writes are queued
    (submitting more waits for the oldest); an error of a finished write is re-raised by
    the next :meth:`submit` or :meth:`wait`. The caller passes CPU copies (training goes
    on mutating its tensors). A process killed mid-write leaves the previous files intact
    (atomic renames)."""

    def __init__(self, max_pending: int = 3) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrpilot-ckpt")
        self._pending: list[Any] = []
        self.max_pending = max_pending
        self._inline = False

    def submit(self, fn: Any, *args: Any) -> None:
        if self._inline:
            self.wait()  # keep the submission order
            fn(*args)
            return
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.max_pending):
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(fn, *args))

    def run_inline(self) -> None:
        """From now on run each write on the calling thread (after the queued ones). For
        the end of a run, when nothing is left to overlap with: handing every write to the
        thread and back costs a GIL hand-off per I/O call."""
        self._inline = True

    def wait(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
