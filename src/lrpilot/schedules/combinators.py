"""Combinators: ``warmup`` (prefix), ``join`` (pieces on local time) and ``scale``.

>>> from lrpilot.schedules import cosine
>>> s = warmup(cosine(1.0, steps=10), steps=4)
>>> [s(t) for t in (0, 2, 4)]
[0.0, 0.5, 1.0]
>>> s.length, s.boundaries(100)
(14, [0, 4, 14])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lrpilot.errors import ConfigError
from lrpilot.schedules.base import (
    Schedule,
    check_choice,
    check_lr,
    check_range,
    check_step_list,
    check_steps,
    negative_step,
)

__all__ = ["WARMUP_MODES", "Join", "Scale", "Warmup", "join", "scale", "warmup"]

WARMUP_MODES = ("linear", "exp", "cosine")


def _check_schedule(name: str, value: object) -> Schedule:
    if not isinstance(value, Schedule):
        raise ConfigError(
            f"{name} must be a schedule (e.g. lrpilot.schedules.cosine(...)), got {value!r}"
        )
    return value


class Warmup(Schedule):
    """Prefix warmup: ``steps`` warmup steps, then ``schedule`` on its own local step.

    With ``target = schedule(0)`` and ``p = step / steps`` for ``step < steps``:

    * ``linear``: ``start_lr + (target - start_lr) * p``
    * ``exp``: ``start_lr * (target / start_lr) ** p`` (needs ``start_lr > 0``)
    * ``cosine``: ``start_lr + (target - start_lr) * (1 - cos(pi p)) / 2``

    and ``schedule(step - steps)`` from ``step == steps`` on, so the warmup reaches exactly
    ``schedule(0)`` at ``steps`` and the wrapped schedule keeps its full length (as Paddle
    ``LinearWarmup`` and PyTorch ``SequentialLR``; not timm's overlapping default). With the
    default ``start_lr=0.0`` the update at step 0 has LR 0 (a wasted step, as in Hugging
    Face); pass a small ``start_lr`` (e.g. ``target / steps``) to avoid it. ``steps=0``
    disables the warmup. Metric reports to a ``Plateau`` never reduce the LR during the
    warmup (``warmup_steps``: ``steps`` plus any warmup of the wrapped schedule itself).
    Lengths given to the wrapped schedule (milestones, ``steps``) count from the end of
    the warmup.

    >>> from lrpilot.schedules import constant
    >>> s = warmup(constant(1.0), steps=2, start_lr=0.01, mode="exp")
    >>> round(s(1), 12), s(2)
    (0.1, 1.0)
    """

    def __init__(
        self, schedule: Schedule, steps: int, start_lr: float = 0.0, mode: str = "linear"
    ) -> None:
        self.schedule = _check_schedule("schedule", schedule)
        self.steps = check_steps("steps", steps, low=0)
        self.start_lr = check_lr("start_lr", start_lr)
        self.mode = check_choice("mode", mode, WARMUP_MODES)
        self.target = float(schedule(0))
        if self.mode == "exp" and self.steps > 0:
            if self.start_lr <= 0.0:
                raise ConfigError(
                    f"start_lr={self.start_lr!r} is out of range for mode='exp'; allowed: (0, inf)"
                )
            if self.target <= 0.0:
                raise ConfigError(
                    f"mode='exp' needs a positive target, but the wrapped schedule starts at "
                    f"{self.target!r}; use mode='linear' or 'cosine'"
                )
        inner = schedule.length
        self.length = None if inner is None else inner + self.steps
        self.warmup_steps = self.steps + schedule.warmup_steps

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return self.schedule(step - self.steps)
        if step < 0:
            raise negative_step(step)
        p = step / self.steps
        if self.mode == "linear":
            return self.start_lr + (self.target - self.start_lr) * p
        if self.mode == "exp":
            return self.start_lr * (self.target / self.start_lr) ** p
        return self.start_lr + (self.target - self.start_lr) * (1.0 - math.cos(math.pi * p)) / 2.0

    def _own_boundaries(self, until: int) -> list[int]:
        inner = self.schedule.boundaries(max(0, until - self.steps))
        return [self.steps, *(b + self.steps for b in inner)]

    def _params(self) -> dict[str, object]:
        return {
            "schedule": self.schedule,
            "steps": self.steps,
            "start_lr": self.start_lr,
            "mode": self.mode,
        }


class Join(Schedule):
    """Run ``schedules[i]`` on local time for ``boundaries[i-1] <= step < boundaries[i]``.

    Piece ``i`` sees ``step - boundaries[i-1]`` (0 at its start); the last piece runs
    forever (``len(boundaries) == len(schedules) - 1``), like optax ``join_schedules``.

    >>> from lrpilot.schedules import constant, linear
    >>> s = join([linear(0.0, 1.0, steps=4), constant(0.5)], boundaries=[4])
    >>> s(2), s(4), s(100)
    (0.5, 0.5, 0.5)
    """

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[int]) -> None:
        if isinstance(schedules, (str, bytes)) or not isinstance(schedules, Sequence):
            raise ConfigError(f"schedules must be a list of schedules, got {schedules!r}")
        if len(schedules) < 2:
            raise ConfigError(f"schedules must hold at least 2 schedules, got {len(schedules)}")
        self.schedules = tuple(
            _check_schedule(f"schedules[{i}]", s) for i, s in enumerate(schedules)
        )
        self.bounds = check_step_list("boundaries", boundaries)
        if len(self.bounds) != len(self.schedules) - 1:
            raise ConfigError(
                f"boundaries must have len(schedules) - 1 = {len(self.schedules) - 1} entries, "
                f"got {len(self.bounds)}"
            )
        self._starts = (0, *self.bounds)
        last = self.schedules[-1].length
        self.length = None if last is None else self.bounds[-1] + last
        self.warmup_steps = min(self.schedules[0].warmup_steps, self.bounds[0])

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        i = len(self.bounds)
        while i > 0 and step < self.bounds[i - 1]:
            i -= 1
        return self.schedules[i](step - self._starts[i])

    def _own_boundaries(self, until: int) -> list[int]:
        out: list[int] = []
        ends = (*self.bounds, until + 1)
        for start, end, s in zip(self._starts, ends, self.schedules, strict=True):
            if start > until:
                break
            out.extend(start + b for b in s.boundaries(min(until, end - 1) - start))
        out.extend(self.bounds)
        return out

    def _params(self) -> dict[str, object]:
        return {"schedules": list(self.schedules), "boundaries": list(self.bounds)}


class Scale(Schedule):
    """``factor * schedule(step)`` (``factor >= 0``).

    >>> from lrpilot.schedules import constant
    >>> scale(constant(0.5), 0.2)(3)
    0.1
    """

    def __init__(self, schedule: Schedule, factor: float) -> None:
        self.schedule = _check_schedule("schedule", schedule)
        self.factor = check_range("factor", factor, low=0.0)
        self.length = schedule.length
        self.warmup_steps = schedule.warmup_steps

    def __call__(self, step: int) -> float:
        return self.factor * self.schedule(step)

    def _own_boundaries(self, until: int) -> list[int]:
        return self.schedule.boundaries(until)

    def _params(self) -> dict[str, object]:
        return {"schedule": self.schedule, "factor": self.factor}


def warmup(schedule: Schedule, steps: int, start_lr: float = 0.0, mode: str = "linear") -> Warmup:
    """See :class:`Warmup`."""
    return Warmup(schedule, steps, start_lr, mode)


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Join:
    """See :class:`Join`."""
    return Join(schedules, boundaries)


def scale(schedule: Schedule, factor: float) -> Scale:
    """See :class:`Scale`."""
    return Scale(schedule, factor)
