"""Read a run's curves into a :class:`~lrpilot.history.History` from what trainers write.

:func:`read_history` accepts:

* an lrpilot run directory (holding ``metrics.jsonl``) or a ``.jsonl`` file;
* a TensorBoard event directory (or one event file), read with TensorBoard's
  ``EventAccumulator``. Scalars are mapped to history fields by :data:`DEFAULT_TB_TAGS`
  (the first tag present wins; ``tags={"val_loss": "my/val"}`` overrides a field).
  Step-level fields become step records at the event's step; epoch-level fields become
  one epoch record per distinct step, numbered 0, 1, ... in step order. Tags are
  matched exactly; a tag mapped to no event is simply absent;
* a CSV file with a header row. Columns (:data:`DEFAULT_CSV_COLUMNS`, aliases in order,
  overridable with ``columns={"train_loss": "loss"}``): ``step``, ``epoch``, ``lr``,
  ``train_loss``, ``val_loss``, ``grad_norm``, and any ``val_<metric>``. Without a step
  column every row is an epoch record (Keras ``CSVLogger`` style: ``epoch, loss,
  val_loss``). With one, a row with a validation loss is an epoch record and any other
  row a step record (PyTorch Lightning ``CSVLogger`` style). Empty cells are missing
  values; ``nan``/``inf`` are kept.

Anything else raises ``ConfigError`` naming the path and what was expected, as do
``tags`` given for input that is not TensorBoard and ``columns`` for input that is not CSV.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     _ = (pathlib.Path(d) / "log.csv").write_text("epoch,loss,val_loss\\n0,2.0,2.1\\n1,1.0,1.5\\n")
...     h = read_history(pathlib.Path(d) / "log.csv")
>>> [(r["epoch"], r["train_loss"], r["val_loss"]) for r in h.epochs]
[(0, 2.0, 2.1), (1, 1.0, 1.5)]
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from lrpilot.errors import ConfigError
from lrpilot.history import History

#: History field -> TensorBoard tags tried in order. Step level: ``train_loss``, ``lr``,
#: ``grad_norm``; epoch level: the ``epoch_*`` fields (written by ``lrpilot fit`` as
#: ``epoch/<key>``) and any ``epoch/val_<metric>``; ``guard_rescue``: one event per
#: point (a divergence-guard rescue, logged by ``lrpilot fit`` as its new LR scale).
DEFAULT_TB_TAGS: dict[str, tuple[str, ...]] = {
    "train_loss": ("train/loss", "train_loss", "loss/train", "Loss/train", "loss"),
    "lr": ("train/lr", "lr", "learning_rate", "lr-SGD", "lr-Adam", "lr-AdamW"),
    "grad_norm": ("train/grad_norm", "grad_norm"),
    "epoch_train_loss": ("epoch/train_loss", "train_loss_epoch", "epoch_loss"),
    "epoch_val_loss": ("epoch/val_loss", "val_loss", "val/loss", "loss/val", "Loss/val"),
    "epoch_lr": ("epoch/lr",),
    "guard_rescue": ("guard/lr_scale",),
}
STEP_FIELDS = ("train_loss", "lr", "grad_norm")

#: History field -> CSV column names tried in order.
DEFAULT_CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "step": ("step", "global_step", "iteration"),
    "epoch": ("epoch",),
    "lr": ("lr", "learning_rate"),
    "train_loss": ("train_loss", "loss"),
    "val_loss": ("val_loss", "validation_loss"),
    "grad_norm": ("grad_norm",),
}


def read_history(
    path: str | Path,
    *,
    tags: Mapping[str, str] | None = None,
    columns: Mapping[str, str] | None = None,
) -> History:
    """A ``History`` from a run directory, ``metrics.jsonl``, TensorBoard events or CSV."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "metrics.jsonl").is_file():
            _refuse_overrides(p, "an lrpilot run", tags=tags, columns=columns)
            return History.read_jsonl(p)
        if _event_files(p):
            _refuse_overrides(p, "TensorBoard", columns=columns)
            return read_tensorboard(p, tags=tags)
        raise ConfigError(
            f"{p}: neither a run directory (metrics.jsonl) nor a TensorBoard event directory"
        )
    name = p.name
    if name.endswith(".jsonl"):
        _refuse_overrides(p, "an lrpilot run", tags=tags, columns=columns)
        return History.read_jsonl(p)
    if name.endswith(".csv"):
        _refuse_overrides(p, "CSV", tags=tags)
        return read_csv(p, columns=columns)
    if "tfevents" in name:
        _refuse_overrides(p, "TensorBoard", columns=columns)
        return read_tensorboard(p, tags=tags)
    raise ConfigError(
        f"{p}: unknown format; expected a run directory, metrics.jsonl, a .csv file or "
        "TensorBoard events"
    )


def _refuse_overrides(p: Path, kind: str, **given: Mapping[str, str] | None) -> None:
    """Raise rather than silently ignore ``tags`` (TensorBoard only) or ``columns`` (CSV
    only) given for input of another kind."""
    applies = {"tags": "TensorBoard events (--tag)", "columns": "CSV files (--column)"}
    for option, value in given.items():
        if value:
            raise ConfigError(f"{p} is {kind} input; {option} apply only to {applies[option]}")


def _event_files(directory: Path) -> list[Path]:
    return sorted(q for q in directory.rglob("*tfevents*") if q.is_file())


def _tag_map(tags: Mapping[str, str] | None) -> dict[str, tuple[str, ...]]:
    mapping = dict(DEFAULT_TB_TAGS)
    for field, tag in (tags or {}).items():
        if field not in mapping:
            raise ConfigError(
                f"unknown TensorBoard field {field!r}; valid: {', '.join(sorted(mapping))}"
            )
        mapping[field] = (str(tag),)
    return mapping


def _tb_scalars(
    files: list[Path], mapping: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """``(field -> {step: value}, metric -> {step: value})`` from the event files: each
    field from the first of its candidate tags present, every ``epoch/val_*`` metric."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    series: dict[str, dict[int, float]] = {}
    metric_tags: dict[str, dict[int, float]] = {}
    for file in files:
        try:
            acc = EventAccumulator(str(file), size_guidance={SCALARS: 0})
            acc.Reload()
        except Exception as exc:  # tensorboard raises many types on corrupt files
            raise ConfigError(f"{file}: cannot read TensorBoard events ({exc})") from exc
        available = set(acc.Tags().get("scalars", []))
        for field, candidates in mapping.items():
            tag = next((t for t in candidates if t in available), None)
            if tag is None:
                continue
            target = series.setdefault(field, {})
            for event in acc.Scalars(tag):
                target[int(event.step)] = float(event.value)
        for tag in available:
            if tag.startswith("epoch/val_") and tag != "epoch/val_loss":
                target = metric_tags.setdefault(tag.split("/", 1)[1], {})
                for event in acc.Scalars(tag):
                    target[int(event.step)] = float(event.value)
    return series, metric_tags


def read_tensorboard(path: str | Path, *, tags: Mapping[str, str] | None = None) -> History:
    """A ``History`` from TensorBoard scalars (see the module docstring for the mapping)."""
    p = Path(path)
    files = _event_files(p) if p.is_dir() else [p]
    if not files:
        raise ConfigError(f"{p}: no TensorBoard event files")
    mapping = _tag_map(tags)
    series, metric_tags = _tb_scalars(files, mapping)
    if "train_loss" not in series and "epoch_val_loss" not in series:
        wanted = mapping["train_loss"] + mapping["epoch_val_loss"]
        raise ConfigError(
            f"{p}: no training or validation loss among the TensorBoard scalars; looked "
            f"for tags {', '.join(wanted)} (map yours with tags={{field: tag}} / --tag)"
        )
    history = History()
    for step in sorted(series.get("train_loss", {})):
        record: dict = {"type": "step", "step": step}
        for field in STEP_FIELDS:
            if step in series.get(field, {}):
                record[field] = series[field][step]
        history.append(record)
    epoch_steps = sorted(
        set().union(*(series.get(f, {}).keys() for f in mapping if f.startswith("epoch_")))
    )
    for index, step in enumerate(epoch_steps):
        record = {"type": "epoch", "epoch": index, "step": step}
        for field in ("epoch_train_loss", "epoch_val_loss", "epoch_lr"):
            if step in series.get(field, {}):
                record[field.removeprefix("epoch_")] = series[field][step]
        for name, values in metric_tags.items():
            if step in values:
                record[name] = values[step]
        history.append(record)
    for step, value in sorted(series.get("guard_rescue", {}).items()):
        history.append({"type": "event", "step": step, "action": "guard_rescue", "lr_scale": value})
    # step records carry the epoch in progress, from the epoch ends
    for record in history.steps:
        record["epoch"] = sum(1 for s in epoch_steps if s < record["step"])
    return history


def _number(text: str, where: str) -> float | None:
    text = text.strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {text!r} is not a number") from exc


def _csv_rows(p: Path) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a text CSV file (the header's names stripped); a binary file,
    a NUL byte, a malformed row or no header raise naming the file (and the line)."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text CSV file ({exc.reason})") from exc
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{p}:{line}: a NUL byte; not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        rows = list(reader)
    except csv.Error as exc:
        raise ConfigError(f"{p}:{reader.line_num}: not a valid CSV row ({exc})") from None
    if not header:
        raise ConfigError(f"{p}: empty CSV file (expected a header row)")
    return [h.strip() for h in header], rows


def read_csv(path: str | Path, *, columns: Mapping[str, str] | None = None) -> History:
    """A ``History`` from a CSV file (see the module docstring for the columns)."""
    p = Path(path)
    mapping = dict(DEFAULT_CSV_COLUMNS)
    for field, column in (columns or {}).items():
        if field not in mapping:
            raise ConfigError(f"unknown CSV field {field!r}; valid: {', '.join(sorted(mapping))}")
        mapping[field] = (str(column),)
    header, rows = _csv_rows(p)
    found = {f: next((c for c in names if c in header), None) for f, names in mapping.items()}
    if found["train_loss"] is None and found["val_loss"] is None:
        raise ConfigError(
            f"{p}: no loss column; expected one of "
            f"{', '.join(mapping['train_loss'] + mapping['val_loss'])} (header: {', '.join(header)})"
        )
    index = {f: header.index(c) for f, c in found.items() if c is not None}
    metric_cols = {
        h: i for i, h in enumerate(header) if h.startswith("val_") and h != found["val_loss"]
    }
    history = History()
    epoch_counter = 0
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{p}:{number}"
        if len(row) != len(header):  # a ragged row: its cells cannot be matched to columns
            raise ConfigError(f"{where}: {len(row)} cells, but the header has {len(header)}")
        values = {f: _number(row[i], where) for f, i in index.items()}
        is_epoch = "step" not in index or values.get("val_loss") is not None
        record: dict = {"type": "epoch" if is_epoch else "step"}
        for field in ("lr", "train_loss", "val_loss", "grad_norm"):
            if values.get(field) is not None:
                record[field] = values[field]
        step, epoch = values.get("step"), values.get("epoch")
        if step is not None:
            record["step"] = int(step)
        if epoch is not None:
            record["epoch"] = int(epoch)
        if is_epoch:
            record.setdefault("epoch", epoch_counter)
            epoch_counter = record["epoch"] + 1
            for name, i in metric_cols.items():
                value = _number(row[i], where)
                if value is not None:
                    record[name] = value
            if "train_loss" not in record and "val_loss" not in record:
                continue
        else:
            if "train_loss" not in record:
                continue
            record.pop("val_loss", None)
        history.append(record)
    if not history.steps and not history.epochs:
        raise ConfigError(f"{p}: no rows with a loss value")
    return history


__all__ = [
    "DEFAULT_CSV_COLUMNS",
    "DEFAULT_TB_TAGS",
    "read_csv",
    "read_history",
    "read_tensorboard",
]
