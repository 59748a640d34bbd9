"""What ``lrpilot schedule show`` reports, as plain data (no I/O): the schedule's end,
its key points (step 0, every boundary, the end) and the full curve.

>>> from lrpilot.schedules import cosine, warmup
>>> s = warmup(cosine(0.1, steps=8), steps=2)
>>> resolve_end(s, None)
10
>>> [(r.step, r.label, round(r.lr, 6)) for r in key_points(s, 10)]
[(0, 'start', 0.0), (2, 'boundary', 0.1), (10, 'end', 0.0)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.schedules.base import Schedule

__all__ = [
    "MAX_CURVE_STEPS",
    "KeyPoint",
    "ScheduleView",
    "curve",
    "describe",
    "key_points",
    "plot_steps",
    "resolve_end",
]

#: The most steps ``curve`` lists one by one (a million floats is ~20 MB of JSON).
MAX_CURVE_STEPS = 1_000_000


@dataclass(frozen=True)
class KeyPoint:
    """One row of the schedule table."""

    step: int
    label: str  # "start", "boundary" or "end"
    lr: float
    momentum: float | None = None


def resolve_end(schedule: Schedule, total_steps: int | None) -> int:
    """The last step to show: ``total_steps`` if given, else the schedule's own length.

    Step ``end`` is the value after the last update of a run of ``end`` optimizer steps
    (updates use steps ``0 .. end - 1``).
    """
    if total_steps is not None:
        return total_steps
    if schedule.length is None or schedule.length == 0:
        raise ConfigError(
            f"{type(schedule).__name__} has no natural end; pass total_steps (--total-steps N)"
        )
    return schedule.length


def key_points(
    schedule: Schedule, end: int, momentum: Callable[[int], float] | None = None
) -> list[KeyPoint]:
    """Step 0, every boundary up to ``end``, and ``end``, with their values."""
    steps = sorted({*schedule.boundaries(end), 0, end})
    rows = []
    for t in steps:
        label = "start" if t == 0 else "end" if t == end else "boundary"
        rows.append(
            KeyPoint(t, label, float(schedule(t)), None if momentum is None else float(momentum(t)))
        )
    return rows


def curve(schedule: Callable[[int], float], end: int) -> tuple[list[int], list[float]]:
    """Every step ``0..end`` and its value (``end <= MAX_CURVE_STEPS``)."""
    if end > MAX_CURVE_STEPS:
        raise ConfigError(
            f"the schedule ends at step {end}; listing every step allows at most "
            f"{MAX_CURVE_STEPS} (pass a smaller --total-steps / total_steps)"
        )
    steps = list(range(end + 1))
    return steps, [float(schedule(t)) for t in steps]


def plot_steps(end: int, boundaries: Sequence[int] = (), max_points: int = 20_000) -> list[int]:
    """Steps to draw: all of ``0..end`` if few, else an even grid plus each boundary and
    the step before it (so jumps stay sharp).

    >>> plot_steps(10, [4])
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    >>> plot_steps(10**9, [500], max_points=3)
    [0, 499, 500, 500000000, 1000000000]
    """
    if end + 1 <= max_points:
        return list(range(end + 1))
    grid = {round(i * end / (max_points - 1)) for i in range(max_points)}
    for b in boundaries:
        grid.update(t for t in (b - 1, b) if 0 <= t <= end)
    return sorted(grid)


@dataclass(frozen=True)
class ScheduleView:
    """Everything ``lrpilot schedule show`` reports about a schedule config: the schedule
    and momentum functions, the last step shown, the key points, and the curve sampled at
    ``steps`` (every step, the plotted steps, or none)."""

    name: str
    schedule: Schedule
    momentum: Callable[[int], float] | None
    end: int
    rows: tuple[KeyPoint, ...]
    steps: tuple[int, ...]
    lrs: tuple[float, ...]
    momenta: tuple[float, ...] | None

    @property
    def boundaries(self) -> list[int]:
        return [r.step for r in self.rows if r.label == "boundary"]

    @property
    def truncated(self) -> bool:
        """Whether the schedule runs longer than the steps shown."""
        return self.schedule.length is not None and self.end < self.schedule.length


def describe(
    mapping: Mapping[str, Any],
    *,
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
    sample: str = "none",
) -> ScheduleView:
    """Build the schedule of ``mapping`` (:func:`lrpilot.schedules.from_config`) and its
    report; ``sample`` is ``"every"`` (each step, :func:`curve`), ``"plot"``
    (:func:`plot_steps`) or ``"none"``. Config errors raise before anything is computed.

    >>> v = describe({"name": "cosine", "lr": 0.1, "steps": 8}, sample="every")
    >>> v.end, v.boundaries, len(v.steps), v.lrs[0]
    (8, [], 9, 0.1)
    """
    from lrpilot.schedules.config import from_config, momentum_from_config

    if sample not in ("every", "plot", "none"):
        raise ConfigError(f"sample={sample!r} is not allowed; valid: every, plot, none")
    schedule = from_config(mapping, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    momentum = momentum_from_config(
        mapping, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    end = resolve_end(schedule, total_steps)
    rows = tuple(key_points(schedule, end, momentum))
    steps: list[int] = []
    lrs: list[float] = []
    if sample == "every":
        steps, lrs = curve(schedule, end)
    elif sample == "plot":
        steps = plot_steps(end, [r.step for r in rows if r.label == "boundary"])
        lrs = [float(schedule(t)) for t in steps]
    moms = None if momentum is None else tuple(float(momentum(t)) for t in steps)
    name = str(mapping.get("name"))
    return ScheduleView(name, schedule, momentum, end, rows, tuple(steps), tuple(lrs), moms)
