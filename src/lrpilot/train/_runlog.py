"""Run logging: ``metrics.jsonl``, TensorBoard scalars and progress display.

``metrics.jsonl`` follows :mod:`lrpilot.history` (``step``, ``epoch`` and ``event``
records). Writes are buffered (step records are kept as dicts and encoded in one batch at
the next epoch record, event or flush); the file is flushed (and fsynced) before every
checkpoint, and the checkpoint stores the file's length, so a resumed run truncates the file
to that length and never repeats a step. TensorBoard gets the same scalars (``train/loss``,
``train/lr``, ``train/grad_norm`` per logged step; ``epoch/*`` per epoch;
``guard/lr_scale`` on rescues) through :class:`lrpilot.train._tbevents.EventFileWriter`,
one event per record holding all of its scalars (readers such as ``EventAccumulator`` see
the same per-tag series as with one ``add_scalar`` per tag). TensorBoard scalars are
buffered as records, converted and written in bursts on the checkpoint writer thread (at
checkpoints, at an epoch end every ``TB_SECONDS`` and at the end); on resume the new event
file purges the events past the checkpoint's step.

Progress: a rich progress bar (epoch, step, loss, LR) when stdout is a terminal, one plain
line per epoch and per event otherwise, nothing with ``progress="none"``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

PROGRESS_MODES = ("auto", "rich", "plain", "none")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Rich bar on a terminal, plain lines otherwise (``mode`` in ``PROGRESS_MODES``)."""

    def __init__(self, mode: str, total_steps: int, epochs: int, stream: TextIO | None = None):
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress={mode!r}; allowed: {', '.join(PROGRESS_MODES)}")
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self.total_steps = total_steps
        self.epochs = epochs
        self._bar: Any = None
        self._task: Any = None

    def start(self, step: int, epoch: int) -> None:
        if self.mode != "rich":
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(
            "fit",
            total=self.total_steps,
            completed=step,
            epoch=epoch + 1,
            epochs=self.epochs,
            loss="-",
            lr="-",
        )

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        if self._bar is not None:
            self._bar.update(
                self._task, completed=step, epoch=epoch + 1, loss=_fmt(loss), lr=_fmt(lr)
            )

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def epoch(self, record: dict) -> None:
        if self.mode == "none":
            return
        keys = [k for k in record if k.startswith("val_")]
        parts = [f"epoch {record['epoch'] + 1}/{self.epochs}", f"step {record['step']}"]
        parts += [f"{k} {_fmt(record[k])}" for k in ("train_loss", *keys, "lr") if k in record]
        parts.append(f"({record.get('time', 0.0):.1f}s)")
        self.message("  ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class RunLogger:
    """Writes ``metrics.jsonl`` and TensorBoard events for one run (main process only)."""

    FLUSH_SECONDS = 5.0
    #: TensorBoard scalars are written at an epoch end at most this often, and at every
    #: checkpoint and at close
    TB_SECONDS = 20.0

    def __init__(
        self,
        run_dir: Path,
        *,
        resume_bytes: int | None = None,
        purge_step: int | None = None,
        tensorboard: bool = True,
        submit: Callable[..., None] | None = None,
    ) -> None:
        """``submit(fn, *args)``, if given, runs TensorBoard writes off the training thread
        (the loop passes its checkpoint writer thread)."""
        self.run_dir = run_dir
        self._submit = submit
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb_dir = run_dir / "tensorboard"
        mode = "wb"
        if resume_bytes is not None and self.metrics_path.exists():
            with open(self.metrics_path, "r+b") as handle:
                handle.truncate(min(resume_bytes, os.path.getsize(self.metrics_path)))
            mode = "ab"
        self._file = open(self.metrics_path, mode, buffering=1 << 16)  # noqa: SIM115
        self._last_flush = time.monotonic()
        self._tb: Any = None
        self._pending: list[dict] = []  # step records not yet encoded
        self._tb_pending: list[dict] = []
        self._last_tb = time.monotonic()
        if tensorboard:
            from lrpilot.train._tbevents import EventFileWriter

            self._tb = EventFileWriter(self.tb_dir, purge_step=purge_step)

    def write(self, record: dict) -> None:
        """Queue ``record`` (not to be changed afterwards). Step records are encoded in
        batches: at the next epoch or event record, at a flush, and every
        ``FLUSH_SECONDS``; every other record is written and flushed to the OS at once."""
        self._pending.append(record)
        kind = record["type"]
        if kind != "step" or time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
            self._write_pending()
            self._file.flush()
            self._last_flush = time.monotonic()
        if self._tb is None:
            return
        self._tb_pending.append(record)
        if kind == "epoch" and time.monotonic() - self._last_tb > self.TB_SECONDS:
            self._tb_drain()

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            encode = json.dumps
            self._file.write("".join([encode(r) + "\n" for r in pending]).encode("ascii"))

    @staticmethod
    def tensorboard_scalars(record: dict) -> list[tuple[str, float]]:
        """The TensorBoard tags and values of one ``metrics.jsonl`` record.

        >>> RunLogger.tensorboard_scalars({"type": "step", "step": 3, "epoch": 0,
        ...     "lr": 0.1, "train_loss": 2.0, "grad_norm": 1.5})
        [('train/loss', 2.0), ('train/lr', 0.1), ('train/grad_norm', 1.5)]
        """
        kind = record["type"]
        if kind == "step":
            scalars = [("train/loss", record["train_loss"]), ("train/lr", record["lr"])]
            for key, value in record.items():
                if key not in ("type", "step", "epoch", "lr", "train_loss") and isinstance(
                    value, (int, float)
                ):
                    scalars.append((f"train/{key}", value))
            return scalars
        if kind == "epoch":
            return [
                (f"epoch/{key}", value)
                for key, value in record.items()
                if key not in ("type", "step", "epoch", "time") and isinstance(value, (int, float))
            ]
        if kind == "event" and "lr_scale" in record:
            return [("guard/lr_scale", record["lr_scale"])]
        return []

    def _tb_drain(self, background: bool = True) -> None:
        """Write the buffered records' scalars to the event file in one burst, on the
        background thread when one was given."""
        pending, self._tb_pending = self._tb_pending, []
        self._last_tb = time.monotonic()
        if self._tb is None or not pending:
            return
        if background and self._submit is not None:
            self._submit(self._tb_write, self._tb, pending)
        else:
            self._tb_write(self._tb, pending)

    @classmethod
    def _tb_write(cls, writer: Any, records: list[dict]) -> None:
        """One TensorBoard event per record, holding all of its scalars (what
        ``add_scalar`` per tag would write, in a third of the events)."""
        for record in records:
            scalars = cls.tensorboard_scalars(record)
            if scalars:
                writer.add_scalars(record["step"], scalars)
        writer.flush()

    def flush(self) -> int:
        """Flush ``metrics.jsonl`` to the OS (enough to survive SIGKILL); return its length
        in bytes. The buffered TensorBoard scalars are written too."""
        self._tb_drain()
        self._write_pending()
        self._file.flush()
        self._last_flush = time.monotonic()
        return self._file.tell()

    def fsync(self) -> None:
        """Force ``metrics.jsonl`` to disk (called from the checkpoint writer thread before
        a checkpoint that refers to its length is installed)."""
        if not self._file.closed:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._write_pending()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        if self._tb is not None:
            self._tb_drain(background=False)
            self._tb.close()
            self._tb = None
