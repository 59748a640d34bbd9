"""Pieces both integrations share: the extra check, ``metrics.jsonl``, schedules built for
a trainer, the LR decision (the autopilot's plug-in point) and the finder adapters.

Nothing here imports Lightning or Transformers.

>>> from lrpilot import schedules
>>> schedule_peak(schedules.warmup(schedules.cosine(0.2, steps=90), steps=10), 100)
0.2
>>> finder_kind(schedules.one_cycle(0.1, steps=50)), finder_kind(schedules.cosine(0.1, steps=5))
('one_cycle', 'cosine')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrpilot._atomic_io import atomic_write_bytes
from lrpilot.errors import ConfigError
from lrpilot.schedules import OneCycle, Schedule, from_config, momentum_from_config

#: family -> the config key holding its peak LR (others: ``lr``; piecewise/join: none)
PEAK_KEYS = {"one_cycle": "max_lr", "cyclic": "max_lr", "linear": "start_lr"}


def missing_extra(module: str, extra: str, feature: str) -> ImportError:
    """The error raised when an integration's library is not installed: it names the
    extra that installs it.

    >>> str(missing_extra("lightning.pytorch", "lightning", "lrpilot.integrations.lightning"))
    "lrpilot.integrations.lightning needs the 'lightning.pytorch' package: pip install lrpilot[lightning]"
    """
    return ImportError(f"{feature} needs the {module!r} package: pip install lrpilot[{extra}]")


def make_guard(options: Mapping[str, Any] | None) -> Any:
    """A :class:`lrpilot.train._guard.DivergenceGuard` from keyword options; an unknown
    option raises naming the valid ones.

    >>> make_guard({"window": 20}).window_size
    20
    >>> make_guard({"windw": 20})
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: guard option 'windw' is not valid; allowed: horizon, max_rescues, min_history, patience, rebound, rebound_progress, threshold, window
    """
    import inspect

    from lrpilot.train._guard import DivergenceGuard

    valid = sorted(inspect.signature(DivergenceGuard).parameters)
    options = dict(options or {})
    for key in options:
        if key not in valid:
            raise ConfigError(f"guard option {key!r} is not valid; allowed: {', '.join(valid)}")
    return DivergenceGuard(**options)


def guard_reason(cause: str | None) -> str:
    """A divergence guard's ``cause`` (:mod:`lrpilot.train._guard`) in words.

    >>> guard_reason("spikes"), guard_reason("something new")
    ('loss far above its recent level', 'divergence (something new)')
    """
    reasons = {
        "non-finite": "non-finite loss or gradient norm",
        "spikes": "loss far above its recent level",
        "rebound": "loss rebounded: most of its progress lost",
        "stalled": "loss still at its level from before the last rescue",
    }
    return reasons.get(str(cause), f"divergence ({cause})")


# -- schedules ---------------------------------------------------------------------------
def resolve_schedule(
    spec: Any,
    *,
    steps_per_epoch: int | None,
    total_steps: int | None,
    default_lr: float | None = None,
) -> tuple[Callable[[int], float], Callable[[int], float] | None]:
    """``(schedule, momentum schedule or None)`` from a schedule (any ``step -> lr``
    callable) or a :func:`lrpilot.schedules.from_config` mapping. Lengths left out of a
    mapping span the run (``total_steps``); a mapping without its peak LR key takes
    ``default_lr`` (the trainer's configured learning rate) when one is given."""
    if isinstance(spec, Mapping):
        config = dict(spec)
        name = config.get("name")
        key = PEAK_KEYS.get(str(name), "lr")
        if default_lr is not None and name not in ("piecewise", "join") and key not in config:
            config[key] = float(default_lr)
        schedule = from_config(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        momentum = momentum_from_config(
            config, steps_per_epoch=steps_per_epoch, total_steps=total_steps
        )
        return schedule, momentum
    if callable(spec):
        return spec, None
    raise ConfigError(
        f"schedule must be a lrpilot schedule (a step -> lr callable) or a config mapping "
        f"with a 'name' key, got {spec!r}"
    )


def schedule_peak(schedule: Callable[[int], float], total_steps: int) -> float:
    """The largest LR ``schedule`` gives over steps ``0 .. total_steps - 1``: for a
    lrpilot schedule, the largest of its values at each phase start
    (``Schedule.boundaries``), the step before it and the last step, where a schedule
    monotone between boundaries reaches its extremes; a plain callable is evaluated at
    every step (up to 100 000)."""
    last = max(int(total_steps) - 1, 0)
    if isinstance(schedule, Schedule):
        starts = schedule.boundaries(last)
        points = {last, *starts, *(max(b - 1, 0) for b in starts)}
    else:
        points = set(range(min(last, 100_000) + 1))
    return max(float(schedule(p)) for p in sorted(points) if p <= last)


def finder_kind(schedule: Callable[[int], float]) -> str:
    """The finder rule a schedule uses: ``"one_cycle"`` for a one-cycle schedule, else
    ``"cosine"`` (the warmup + decay rule)."""
    return "one_cycle" if isinstance(schedule, OneCycle) else "cosine"


def group_multipliers(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's LR relative to the first (layer-wise LRs are kept)."""
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    if lrs[0] > 0:
        return [lr / lrs[0] for lr in lrs]
    return [1.0] * len(lrs)


# -- the LR decision (autopilot plug-in point) -----------------------------------------------
@dataclass
class LRDecision:
    """The peak LR chosen before training and the evidence behind it."""

    lr: float | None  # None: keep the configured schedule
    source: str  # "find_lr" today; the autopilot's name when it lands
    verdict: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def event(self, step: int, epoch: int, applied_lr: float, lr_scale: float) -> dict:
        """The ``metrics.jsonl`` event recording this decision."""
        return {
            "type": "event",
            "step": step,
            "epoch": epoch,
            "action": "lr_decision",
            "source": self.source,
            "verdict": self.verdict,
            "message": self.message,
            "chosen_lr": self.lr,
            "applied_lr": applied_lr,
            "lr_scale": lr_scale,
            **self.evidence,
        }


def decide_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    loader: Iterable,
    *,
    schedule_kind: str,
    options: Mapping[str, Any] | None = None,
) -> LRDecision:
    """Choose the peak LR before training: today lrpilot's LR range test
    (:func:`lrpilot.find_lr`, which restores model, optimizer and RNG state), with
    ``batch_ratio=1`` by default because it probes with the training loader itself.

    This is the one place where the autopilot's LR/schedule decision plugs in: it returns
    an :class:`LRDecision`, and both integrations apply ``decision.lr`` as the schedule's
    new peak.
    """
    from lrpilot.finder import find_lr

    kwargs = {"batch_ratio": 1.0, **dict(options or {})}
    kwargs.setdefault("schedule", schedule_kind)
    result = find_lr(model, optimizer, loss_fn, loader, **kwargs)
    evidence = {
        "lr_unstable": result.lr_unstable,
        "suggestion_interval": list(result.suggestion_interval)
        if result.suggestion_interval
        else None,
        "confidence": result.confidence,
        "finder_schedule": result.schedule,
        "finder_steps": result.optimizer_steps,
        "batch_ratio": result.batch_ratio,
    }
    lr = result.suggestion if result.verdict == "ok" else None
    return LRDecision(lr, "find_lr", result.verdict, result.message, evidence)


class CallModule(nn.Module):
    """``forward(batch) = fn(batch)`` around ``module`` (a submodule, so the finder
    snapshots and restores its parameters, buffers and train/eval modes)."""

    def __init__(self, module: nn.Module, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.inner = module
        self._fn = fn

    def forward(self, batch: Any) -> Any:
        return self._fn(batch)


class PairLoader:
    """Yields ``(batch, None)`` for each batch of ``loader`` (the finder's input/target
    pairs); other attributes (a DataLoader's ``generator``, ``sampler``) are the loader's."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[Any, None]]:
        for batch in self.loader:
            yield batch, None

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


# -- metrics.jsonl ----------------------------------------------------------------------
class MetricsFile:
    """Appends ``metrics.jsonl`` records (:mod:`lrpilot.history`) for one run.

    ``resume_step``: a resumed run keeps the records up to that step (atomically rewritten)
    and appends after them, so the file never repeats a step; ``None`` starts a new file."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a partial last line of a killed run
                if isinstance(record, dict) and int(record.get("step", 0)) <= resume_step:
                    kept.append(line + "\n")
            atomic_write_bytes("".join(kept).encode("utf-8"), self.path)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        else:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(_json_safe(record)) + "\n")
        if record.get("type") != "step":
            self._file.flush()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _json_safe(record: dict) -> dict:
    """Tensors become floats; non-finite floats stay as the ``NaN``/``Infinity`` tokens
    that :mod:`json` writes and reads back (as ``lrpilot fit`` does)."""
    return {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}


def print_diagnosis(run_dir: str | Path, printer: Callable[[str], None] = print) -> list:
    """Read ``run_dir/metrics.jsonl``, print ``lrpilot diagnose``'s findings, return them."""
    from lrpilot.diagnosis import diagnose
    from lrpilot.history import History

    findings = diagnose(History.read_jsonl(run_dir))
    printer(f"lrpilot diagnosis of {run_dir}:")
    for finding in findings:
        printer(f"- {finding.describe()}")
    return findings
