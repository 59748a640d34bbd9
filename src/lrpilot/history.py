"""The recorded history of a run: what ``lrpilot fit`` writes and what decisions read.

A run directory's ``metrics.jsonl`` holds one JSON object per line, each with a ``type``:

* ``"step"``: one optimizer step. Keys: ``step`` (optimizer steps completed, starting at
  1 for the first), ``epoch`` (0-based epoch in progress), ``lr`` (learning rate of the
  first parameter group used for that step), ``train_loss`` (mean loss of the step's
  samples), and ``grad_norm`` (total L2 norm before clipping) when measured; optional
  extras such as ``noise_scale``.
* ``"epoch"``: the end of an epoch. Keys: ``epoch`` (0-based), ``step``, ``lr``,
  ``train_loss`` (mean over the epoch), ``val_loss`` and ``val_<metric>`` for every task
  metric (``val_accuracy`` for the built-in tasks), ``time`` (seconds since the start).
* ``"event"``: something the run did, e.g. a divergence-guard rescue. Keys: ``step``,
  ``epoch``, ``action`` and free-form details.

``History`` keeps the three lists; it is plain data, so decisions (diagnosis, LR
suggestions) stay pure functions of it.

>>> h = History.from_records([{"type": "step", "step": 1, "epoch": 0, "lr": 0.1, "train_loss": 2.3}])
>>> h.series("train_loss")
([1], [2.3])
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lrpilot.errors import ConfigError

RECORD_TYPES = ("step", "epoch", "event")
#: Keys that hold a number (or null) wherever they appear, besides every ``val_*`` key.
NUMBER_KEYS = ("lr", "train_loss", "val_loss", "grad_norm", "time", "noise_scale")


def _check_record(record: dict, where: str) -> None:
    """Refuse a record a reader would misread: an unknown ``type``, a ``step`` or ``epoch``
    that is not a non-negative integer, a loss, LR or metric that is not a number or null
    (a string loss is not NaN; JSON ``NaN`` and ``Infinity`` are numbers).

    >>> _check_record({"type": "step", "step": 1, "train_loss": "abc"}, "m.jsonl:1")
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: m.jsonl:1: train_loss='abc' is not a number
    """
    kind = record.get("type")
    if kind not in RECORD_TYPES:
        raise ConfigError(f"{where}: type={kind!r} is not one of {', '.join(RECORD_TYPES)}")
    for key in ("step", "epoch"):
        value = record.get(key)
        if value is None and (kind == "event" or key not in record):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {key}={_short(value)} is not a non-negative integer")
    if kind == "event":
        return
    for key, value in record.items():
        numeric = key in NUMBER_KEYS or key.startswith("val_")
        if numeric and value is not None and not _is_number(value):
            raise ConfigError(f"{where}: {key}={_short(value)} is not a number")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"


@dataclass
class History:
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def append(self, record: dict) -> None:
        kind = record.get("type")
        if kind == "step":
            self.steps.append(record)
        elif kind == "epoch":
            self.epochs.append(record)
        elif kind == "event":
            self.events.append(record)
        else:
            raise ConfigError(
                f"history record type {kind!r} is not one of {', '.join(RECORD_TYPES)}"
            )

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> History:
        history = cls()
        for record in records:
            history.append(record)
        return history

    @classmethod
    def read_jsonl(cls, path: str | Path) -> History:
        """Read ``metrics.jsonl`` (or a run directory holding one). A truncated last line,
        as left by a killed process, is ignored; any other malformed line raises
        ``ConfigError`` naming the file and line number."""
        path = Path(path)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise ConfigError(f"no metrics file at {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
        history = cls()
        for number, line in enumerate(lines, start=1):
            if "\x00" in line:
                raise ConfigError(f"{path}:{number}: a NUL byte; not a metrics log")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, or an integer over Python's digit limit
                if number == len(lines) and isinstance(exc, json.JSONDecodeError):
                    break  # partial final line from an interrupted writer
                detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "number too long"
                raise ConfigError(f"{path}:{number}: not valid JSON ({detail})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object")
            _check_record(record, f"{path}:{number}")
            history.append(record)
        return history

    def series(self, key: str, level: str = "steps") -> tuple[list[int], list[float]]:
        """``(x, values)`` for ``key`` at ``level`` ("steps" or "epochs"); x is the step or
        epoch number. Records without the key are skipped; non-finite values are kept as
        ``nan`` so that divergence stays visible."""
        if level not in ("steps", "epochs"):
            raise ConfigError(f"level={level!r}; allowed: steps, epochs")
        records = self.steps if level == "steps" else self.epochs
        x_key = "step" if level == "steps" else "epoch"
        xs: list[int] = []
        values: list[float] = []
        for record in records:
            if key not in record or record[key] is None:
                continue
            value = record[key]
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            xs.append(int(record.get(x_key, len(xs))))
            values.append(value)
        return xs, values
