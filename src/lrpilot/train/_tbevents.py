"""A small synchronous TensorBoard event-file writer for scalars.

An event file is a sequence of TFRecords, each::

    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with ``masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32)``, ``c`` the
CRC-32C (Castagnoli) of ``x``, all little-endian; ``data`` is a serialised ``Event`` proto.
The first event carries ``file_version = "brain.Event:2"``. A resumed run writes, at its
first new step, an ``Event(session_log=START)``: TensorBoard then discards the events of
earlier files whose step is at or past it (what ``SummaryWriter(purge_step=...)`` does).

Why not ``torch.utils.tensorboard.SummaryWriter``: it computes the CRCs in pure Python (about
20 us for a 120-byte event) and runs a writer thread; this writer uses the C CRC of
``google-crc32c`` and writes in the caller's thread (the training loop hands it batches of
scalars at epoch ends and at the end of the run). Files are readable by TensorBoard and by
``tensorboard``'s ``EventAccumulator`` (tested).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     w = EventFileWriter(d)
...     w.add_scalars(1, [("train/loss", 2.5), ("train/lr", 0.1)])
...     w.close()
...     from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
...     acc = EventAccumulator(d)
...     _ = acc.Reload()
...     [(e.step, e.value) for e in acc.Scalars("train/loss")]
[(1, 2.5)]

Reference: the TFRecord format, https://www.tensorflow.org/tutorials/load_data/tfrecord
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary

try:  # C implementation (a dependency); the pure-Python one only if it is missing
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - exercised only without the dependency
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c

_MASK_DELTA = 0xA282EAD8
_uid = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``.

    >>> hex(masked_crc32c(b"123456789"))  # CRC-32C check value 0xe3069283, then masked
    '0xc78ab0e5'
    """
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One TFRecord holding ``data``."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


class EventFileWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``log_dir``."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_uid)}"
        )
        self.path = self.log_dir / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(
                Event(
                    wall_time=time.time(),
                    step=int(purge_step),
                    session_log=SessionLog(status=SessionLog.START),
                )
            )

    def _write(self, event: Event) -> None:
        self._file.write(encode_record(event.SerializeToString()))

    def add_scalars(self, step: int, scalars: Iterable[tuple[str, float]]) -> None:
        """One event at ``step`` holding every ``(tag, value)`` of ``scalars``."""
        values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars]
        self._write(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
