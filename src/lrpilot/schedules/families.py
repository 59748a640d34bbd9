"""Closed-form schedule families: constant, step/multistep, exponential, polynomial,
linear, piecewise, cosine, cosine with restarts, inverse square root, warmup-stable-decay
(the last four defined in :mod:`lrpilot.schedules.annealing`, re-exported here), and
``from_function`` for custom Python code.

Conventions (all families): ``step`` is the 0-based index of the optimizer update; the
value at ``step`` is the learning rate used by that update. Decays happen AT a boundary
(``step == boundary`` already has the decayed value), as PyTorch ``StepLR``/``MultiStepLR``.
Schedules with an end (``length``) hold their final value afterwards; none re-rises.

>>> multistep(1.0, milestones=[2, 4], gamma=0.5)(4)
0.25
>>> round(polynomial(1.0, steps=4, power=2.0)(2), 6)
0.25
"""

from __future__ import annotations

import bisect
import pickle
from collections.abc import Callable, Sequence

from lrpilot.errors import ConfigError
from lrpilot.schedules.annealing import (
    WSD_DECAYS,
    Cosine,
    CosineRestarts,
    InverseSqrt,
    Wsd,
    cosine,
    cosine_restarts,
    inverse_sqrt,
    wsd,
)
from lrpilot.schedules.base import (
    MAX_BOUNDARIES,
    Schedule,
    check_gamma,
    check_int,
    check_lr,
    check_range,
    check_step_list,
    check_steps,
    negative_step,
)

__all__ = [
    "WSD_DECAYS",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Exponential",
    "FromFunction",
    "InverseSqrt",
    "Linear",
    "MultiStep",
    "Piecewise",
    "Polynomial",
    "StepDecay",
    "Wsd",
    "constant",
    "cosine",
    "cosine_restarts",
    "exponential",
    "from_function",
    "inverse_sqrt",
    "linear",
    "multistep",
    "piecewise",
    "polynomial",
    "step_decay",
    "wsd",
]


class Constant(Schedule):
    """``lr`` at every step.

    >>> constant(0.1)(0), constant(0.1)(10**9)
    (0.1, 0.1)
    """

    def __init__(self, lr: float) -> None:
        self.lr = check_lr("lr", lr)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        return self.lr

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr}


class StepDecay(Schedule):
    """``lr * gamma ** (step // every)``: PyTorch ``StepLR(step_size=every, gamma)``.

    >>> s = step_decay(1.0, every=3, gamma=0.1)
    >>> [s(t) for t in (0, 2, 3)]
    [1.0, 1.0, 0.1]
    """

    def __init__(self, lr: float, every: int, gamma: float) -> None:
        self.lr = check_lr("lr", lr)
        self.every = check_steps("every", every)
        self.gamma = check_gamma("gamma", gamma)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        return self.lr * self.gamma ** (step // self.every)

    def _own_boundaries(self, until: int) -> list[int]:
        last = min(until, self.every * MAX_BOUNDARIES)
        return list(range(self.every, last + 1, self.every))

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr, "every": self.every, "gamma": self.gamma}


class MultiStep(Schedule):
    """``lr * gamma ** (number of milestones <= step)``: PyTorch ``MultiStepLR``.

    >>> s = multistep(1.0, milestones=[2, 5], gamma=0.1)
    >>> [round(s(t), 12) for t in (0, 1, 2, 4, 5)]
    [1.0, 1.0, 0.1, 0.1, 0.01]
    """

    def __init__(self, lr: float, milestones: Sequence[int], gamma: float) -> None:
        self.lr = check_lr("lr", lr)
        self.milestones = check_step_list("milestones", milestones)
        self.gamma = check_gamma("gamma", gamma)
        self.length = self.milestones[-1]

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, step)

    def _own_boundaries(self, until: int) -> list[int]:
        return list(self.milestones)

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr, "milestones": list(self.milestones), "gamma": self.gamma}


class Exponential(Schedule):
    """``lr * gamma ** step`` with ``0 < gamma <= 1``: PyTorch ``ExponentialLR``.

    >>> exponential(1.0, gamma=0.5)(3)
    0.125
    """

    def __init__(self, lr: float, gamma: float) -> None:
        self.lr = check_lr("lr", lr)
        self.gamma = check_gamma("gamma", gamma)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        return self.lr * self.gamma**step

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr, "gamma": self.gamma}


class Polynomial(Schedule):
    """``final_lr + (lr - final_lr) * (1 - min(step, steps) / steps) ** power``.

    With ``final_lr=0`` this is PyTorch ``PolynomialLR(total_iters=steps, power)``; it
    holds ``final_lr`` from ``steps`` on.

    >>> s = polynomial(1.0, steps=10, power=1.0, final_lr=0.1)
    >>> s(0), round(s(5), 12), s(10), s(99)
    (1.0, 0.55, 0.1, 0.1)
    """

    def __init__(self, lr: float, steps: int, power: float = 1.0, final_lr: float = 0.0) -> None:
        self.lr = check_lr("lr", lr)
        self.steps = check_steps("steps", steps)
        self.power = check_range("power", power, low=0.0, low_inclusive=False)
        self.final_lr = check_lr("final_lr", final_lr)
        self.length = self.steps

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        if step >= self.steps:
            return self.final_lr
        return self.final_lr + (self.lr - self.final_lr) * (1.0 - step / self.steps) ** self.power

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr, "steps": self.steps, "power": self.power, "final_lr": self.final_lr}


class Linear(Schedule):
    """``start_lr + (end_lr - start_lr) * min(step, steps) / steps``, then ``end_lr``.

    Equal to PyTorch ``LinearLR`` with ``start_lr = base * start_factor`` and
    ``end_lr = base * end_factor``, ``total_iters = steps``.

    >>> s = linear(0.0, 1.0, steps=4)
    >>> [s(t) for t in (0, 1, 4, 9)]
    [0.0, 0.25, 1.0, 1.0]
    """

    def __init__(self, start_lr: float, end_lr: float, steps: int) -> None:
        self.start_lr = check_lr("start_lr", start_lr)
        self.end_lr = check_lr("end_lr", end_lr)
        self.steps = check_steps("steps", steps)
        self.length = self.steps

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        if step >= self.steps:
            return self.end_lr
        return self.start_lr + (self.end_lr - self.start_lr) * (step / self.steps)

    def _params(self) -> dict[str, object]:
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "steps": self.steps}


class Piecewise(Schedule):
    """Piecewise constant: ``values[i]`` for ``boundaries[i-1] <= step < boundaries[i]``.

    ``len(values) == len(boundaries) + 1``; values are absolute learning rates and change
    AT each boundary.

    >>> s = piecewise([10, 20], [0.1, 0.01, 0.001])
    >>> s(9), s(10), s(20)
    (0.1, 0.01, 0.001)
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        self.bounds = check_step_list("boundaries", boundaries)
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConfigError(f"values must be a list of learning rates, got {values!r}")
        if len(values) != len(self.bounds) + 1:
            raise ConfigError(
                f"values must have len(boundaries) + 1 = {len(self.bounds) + 1} entries, "
                f"got {len(values)}"
            )
        self.values = tuple(check_lr(f"values[{i}]", v) for i, v in enumerate(values))
        self.length = self.bounds[-1]

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        return self.values[bisect.bisect_right(self.bounds, step)]

    def _own_boundaries(self, until: int) -> list[int]:
        return list(self.bounds)

    def _params(self) -> dict[str, object]:
        return {"boundaries": list(self.bounds), "values": list(self.values)}


class FromFunction(Schedule):
    """Wrap custom Python code ``fn(step) -> float`` (never built from config text).

    The function should be pure; it pickles when ``fn`` does (a module-level function).

    >>> from_function(lambda t: 0.1 / (1 + t))(9)
    0.01
    """

    def __init__(self, fn: Callable[[int], float], length: int | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self.length = None if length is None else check_int("length", length, low=0)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        return float(self.fn(step))

    def _params(self) -> dict[str, object]:
        fn = self.fn
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        return {"fn": name, "length": self.length}

    def __reduce__(self):  # type: ignore[no-untyped-def]
        pickle.dumps(self.fn)  # fail early with pickle's own message for lambdas
        return (FromFunction, (self.fn, self.length))


def constant(lr: float) -> Constant:
    """See :class:`Constant`."""
    return Constant(lr)


def step_decay(lr: float, every: int, gamma: float) -> StepDecay:
    """See :class:`StepDecay`."""
    return StepDecay(lr, every, gamma)


def multistep(lr: float, milestones: Sequence[int], gamma: float) -> MultiStep:
    """See :class:`MultiStep`."""
    return MultiStep(lr, milestones, gamma)


def exponential(lr: float, gamma: float) -> Exponential:
    """See :class:`Exponential`."""
    return Exponential(lr, gamma)


def polynomial(lr: float, steps: int, power: float = 1.0, final_lr: float = 0.0) -> Polynomial:
    """See :class:`Polynomial`."""
    return Polynomial(lr, steps, power, final_lr)


def linear(start_lr: float, end_lr: float, steps: int) -> Linear:
    """See :class:`Linear`."""
    return Linear(start_lr, end_lr, steps)


def piecewise(boundaries: Sequence[int], values: Sequence[float]) -> Piecewise:
    """See :class:`Piecewise`."""
    return Piecewise(boundaries, values)


def from_function(fn: Callable[[int], float], length: int | None = None) -> FromFunction:
    """See :class:`FromFunction`."""
    return FromFunction(fn, length)
