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
        lines = path.read_text(encoding="utf-8").splitlines()
        history = cls()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):
                    break  # partial final line from an interrupted writer
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object")
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
