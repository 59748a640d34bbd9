"""Cyclical schedules: one-cycle (LR and its inverse momentum cycle) and CyclicLR.

Both reproduce PyTorch's arithmetic (``OneCycleLR``, ``CyclicLR``) as closed forms of
the step, so the values match PyTorch to rounding; see the class docstrings.

>>> s = one_cycle(1.0, steps=10, pct_start=0.3)
>>> round(s(0), 12), s(2), round(s(9), 15)
(0.04, 1.0, 4e-06)
"""

from __future__ import annotations

import math

from lrpilot.errors import ConfigError
from lrpilot.schedules.base import (
    MAX_BOUNDARIES,
    Schedule,
    check_bool,
    check_choice,
    check_lr,
    check_range,
    check_steps,
    negative_step,
)

__all__ = [
    "ANNEALS",
    "CYCLIC_MODES",
    "Cyclic",
    "OneCycle",
    "OneCycleMomentum",
    "cyclic",
    "one_cycle",
    "one_cycle_momentum",
]

ANNEALS = ("cos", "linear")
CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _phase_ends(steps: int, pct_start: float, three_phase: bool) -> tuple[float, ...]:
    """PyTorch OneCycleLR phase ``end_step`` values (floats, inclusive)."""
    if three_phase:
        return (float(pct_start * steps) - 1, float(2 * pct_start * steps) - 2, steps - 1)
    return (float(pct_start * steps) - 1, steps - 1)


def _check_cycle(steps: object, pct_start: object, anneal: object, three_phase: object):  # type: ignore[no-untyped-def]
    n = check_steps("steps", steps, low=2)
    p = check_range(
        "pct_start", pct_start, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )  # type: ignore[arg-type]
    a = check_choice("anneal", anneal, ANNEALS)
    tp = check_bool("three_phase", three_phase)
    ends = _phase_ends(n, p, tp)
    start = 0.0
    for i, end in enumerate(ends):
        if not end > start:
            raise ConfigError(
                f"pct_start={p!r} is out of range for steps={n}"
                f"{' with three_phase' if tp else ''}: phase {i + 1} would be empty "
                f"(each phase needs more than one step; ends at step {end:g})"
            )
        start = end
    return n, p, a, tp, ends


class _Cycle(Schedule):
    """Shared phase walk of OneCycleLR: value = anneal(start_i, end_i, pct within phase i)."""

    _ends: tuple[float, ...]
    _points: tuple[tuple[float, float], ...]
    _table: tuple[tuple[float, float, float, float, float], ...]
    _cos: bool
    anneal: str
    steps: int

    def _build_table(self) -> None:
        # (inclusive end used for lookup, phase start, phase span, start value, end value);
        # the last phase takes every step left, as in PyTorch.
        rows, start = [], 0.0
        for i, (end, (a, b)) in enumerate(zip(self._ends, self._points, strict=True)):
            lookup = math.inf if i == len(self._ends) - 1 else end
            rows.append((lookup, start, end - start, a, b))
            start = end
        self._table = tuple(rows)
        self._cos = self.anneal == "cos"

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        del state["_table"], state["_cos"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._build_table()

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        if step >= self.steps:
            step = self.steps - 1  # hold the final value (PyTorch raises past the end)
        for lookup, start, span, a, b in self._table:
            if step <= lookup:
                # Same expressions as OneCycleLR._annealing_cos / _annealing_linear.
                pct = (step - start) / span
                if self._cos:
                    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (b - a) * pct + a
        raise AssertionError("unreachable")  # pragma: no cover

    def _own_boundaries(self, until: int) -> list[int]:
        # The step nearest each phase end (the peak is at pct_start * steps - 1).
        return [math.floor(e) for e in self._ends[:-1]]


class OneCycle(_Cycle):
    """One-cycle policy (Smith & Topin 2018), identical to PyTorch ``OneCycleLR``.

    ``initial = max_lr / div_factor``, ``min = initial / final_div_factor``. Two phases:
    ``initial -> max_lr`` ending at step ``pct_start * steps - 1``, then ``max_lr -> min``
    ending at ``steps - 1``. With ``three_phase``: ``initial -> max_lr`` (to
    ``pct_start*steps - 1``), ``max_lr -> initial`` (to ``2*pct_start*steps - 2``),
    ``initial -> min`` (to ``steps - 1``). Inside a phase from ``s0`` to ``s1`` with
    ``pct = (step - s0) / (s1 - s0)``: ``cos``: ``end + (start - end) / 2 * (cos(pi pct) + 1)``,
    ``linear``: ``start + (end - start) * pct``. From ``steps`` on it holds the value of
    step ``steps - 1`` (PyTorch raises "Tried to step X times" instead).

    >>> s = one_cycle(0.1, steps=100)
    >>> round(s(0), 12), s(29), s.boundaries(100)
    (0.004, 0.1, [0, 29, 100])
    """

    def __init__(
        self,
        max_lr: float,
        steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
        three_phase: bool = False,
    ) -> None:
        self.max_lr = check_lr("max_lr", max_lr)
        self.steps, self.pct_start, self.anneal, self.three_phase, self._ends = _check_cycle(
            steps, pct_start, anneal, three_phase
        )
        self.div_factor = check_range("div_factor", div_factor, low=1.0)
        self.final_div_factor = check_range("final_div_factor", final_div_factor, low=1.0)
        self.length = self.steps
        initial = self.max_lr / self.div_factor
        low = initial / self.final_div_factor
        if self.three_phase:
            self._points = ((initial, self.max_lr), (self.max_lr, initial), (initial, low))
        else:
            self._points = ((initial, self.max_lr), (self.max_lr, low))
        self._build_table()

    def _params(self) -> dict[str, object]:
        return {
            "max_lr": self.max_lr,
            "steps": self.steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
            "three_phase": self.three_phase,
        }


class OneCycleMomentum(_Cycle):
    """The momentum cycle of PyTorch ``OneCycleLR(cycle_momentum=True)``: inverse to the LR.

    Phases as in :class:`OneCycle`; momentum goes ``max -> base`` while the LR rises,
    ``base -> max`` while it falls (three-phase: ``max -> base -> max``, then holds ``max``).
    Write it to SGD's ``momentum`` or Adam's ``betas[0]`` with
    ``attach(..., momentum=one_cycle_momentum(...))``.

    >>> m = one_cycle_momentum(100)
    >>> m(0), m(29), m(99)
    (0.95, 0.85, 0.95)
    """

    def __init__(
        self,
        steps: int,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        pct_start: float = 0.3,
        anneal: str = "cos",
        three_phase: bool = False,
    ) -> None:
        self.steps, self.pct_start, self.anneal, self.three_phase, self._ends = _check_cycle(
            steps, pct_start, anneal, three_phase
        )
        self.base_momentum = check_range("base_momentum", base_momentum, low=0.0, high=1.0)
        self.max_momentum = check_range("max_momentum", max_momentum, low=0.0, high=1.0)
        if self.base_momentum > self.max_momentum:
            raise ConfigError(
                f"base_momentum={self.base_momentum!r} is out of range; allowed: "
                f"[0, max_momentum={self.max_momentum!r}]"
            )
        self.length = self.steps
        hi, lo = self.max_momentum, self.base_momentum
        if self.three_phase:
            self._points = ((hi, lo), (lo, hi), (hi, hi))
        else:
            self._points = ((hi, lo), (lo, hi))
        self._build_table()

    def _params(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
            "pct_start": self.pct_start,
            "anneal": self.anneal,
            "three_phase": self.three_phase,
        }


class Cyclic(Schedule):
    """Cyclical learning rates (Smith 2017), identical to PyTorch ``CyclicLR``.

    A cycle has ``up + down`` steps (``down`` defaults to ``up``). With
    ``cycle = floor(1 + step / (up + down))``, ``x = 1 + step / (up + down) - cycle`` and
    ``r = up / (up + down)``: ``h = x / r`` if ``x <= r`` else ``(x - 1) / (r - 1)``, and
    ``lr = base_lr + (max_lr - base_lr) * h * scale`` where scale is 1 (``triangular``),
    ``1 / 2 ** (cycle - 1)`` (``triangular2``) or ``gamma ** step`` (``exp_range``).
    ``gamma`` only applies to ``exp_range`` (giving it otherwise is an error).

    >>> s = cyclic(0.1, 1.0, up=2, down=4)
    >>> [round(s(t), 12) for t in (0, 1, 2, 4, 6)]
    [0.1, 0.55, 1.0, 0.55, 0.1]
    """

    def __init__(
        self,
        base_lr: float,
        max_lr: float,
        up: int,
        down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
    ) -> None:
        self.base_lr = check_lr("base_lr", base_lr)
        self.max_lr = check_lr("max_lr", max_lr)
        if self.max_lr < self.base_lr:
            raise ConfigError(
                f"max_lr={self.max_lr!r} is out of range; allowed: [base_lr={self.base_lr!r}, inf)"
            )
        self.up = check_steps("up", up)
        self.down = self.up if down is None else check_steps("down", down)
        self.mode = check_choice("mode", mode, CYCLIC_MODES)
        self.gamma = check_range("gamma", gamma, low=0.0, high=1.0, low_inclusive=False)
        if self.mode != "exp_range" and self.gamma != 1.0:
            raise ConfigError(
                f"gamma={self.gamma!r} only applies to mode='exp_range' (mode={self.mode!r})"
            )
        self._total = float(self.up + self.down)
        self._ratio = self.up / self._total

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        cycle = math.floor(1 + step / self._total)
        x = 1.0 + step / self._total - cycle
        if x <= self._ratio:
            h = x / self._ratio
        else:
            h = (x - 1) / (self._ratio - 1)
        height = (self.max_lr - self.base_lr) * h
        if self.mode == "triangular":
            return self.base_lr + height * 1.0
        if self.mode == "triangular2":
            return self.base_lr + height * 0.5 ** (cycle - 1)
        return self.base_lr + height * self.gamma**step

    def _own_boundaries(self, until: int) -> list[int]:
        out: list[int] = []
        t = 0
        while len(out) < MAX_BOUNDARIES:
            for d in (self.up, self.down):
                t += d
                if t > until:
                    return out
                out.append(t)
        return out

    def _params(self) -> dict[str, object]:
        return {
            "base_lr": self.base_lr,
            "max_lr": self.max_lr,
            "up": self.up,
            "down": self.down,
            "mode": self.mode,
            "gamma": self.gamma,
        }


def one_cycle(
    max_lr: float,
    steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal: str = "cos",
    three_phase: bool = False,
) -> OneCycle:
    """See :class:`OneCycle`."""
    return OneCycle(max_lr, steps, pct_start, div_factor, final_div_factor, anneal, three_phase)


def one_cycle_momentum(
    steps: int,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    pct_start: float = 0.3,
    anneal: str = "cos",
    three_phase: bool = False,
) -> OneCycleMomentum:
    """See :class:`OneCycleMomentum`."""
    return OneCycleMomentum(steps, base_momentum, max_momentum, pct_start, anneal, three_phase)


def cyclic(
    base_lr: float,
    max_lr: float,
    up: int,
    down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Cyclic:
    """See :class:`Cyclic`."""
    return Cyclic(base_lr, max_lr, up, down, mode, gamma)
