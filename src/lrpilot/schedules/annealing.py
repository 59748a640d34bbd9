"""The annealing families (re-exported by :mod:`lrpilot.schedules.families`, whose
conventions they follow): cosine, cosine with warm restarts, inverse square root and
warmup-stable-decay.

>>> round(cosine(1.0, steps=4)(2), 6)
0.5
>>> [wsd(1.0, steps=10, warmup=2, decay_fraction=0.2)(k) for k in (0, 5, 10)]
[0.0, 1.0, 0.0]
"""

from __future__ import annotations

import math

from lrpilot.errors import ConfigError
from lrpilot.schedules.base import (
    MAX_BOUNDARIES,
    Schedule,
    check_choice,
    check_gamma,
    check_int,
    check_lr,
    check_range,
    check_steps,
    negative_step,
)

__all__ = [
    "WSD_DECAYS",
    "Cosine",
    "CosineRestarts",
    "InverseSqrt",
    "Wsd",
    "cosine",
    "cosine_restarts",
    "inverse_sqrt",
    "wsd",
]


class Cosine(Schedule):
    """``final_lr + (lr - final_lr) * (1 + cos(pi * step / steps)) / 2`` for ``step <= steps``.

    Equal to PyTorch ``CosineAnnealingLR(T_max=steps, eta_min=final_lr)`` up to ``steps``;
    unlike PyTorch (which oscillates with period ``2 * steps``) it holds ``final_lr``
    afterwards, like optax and Hugging Face.

    >>> s = cosine(1.0, steps=4, final_lr=0.2)
    >>> round(s(2), 12), s(4), s(100)
    (0.6, 0.2, 0.2)
    """

    def __init__(self, lr: float, steps: int, final_lr: float = 0.0) -> None:
        self.lr = check_lr("lr", lr)
        self.steps = check_steps("steps", steps)
        self.final_lr = check_lr("final_lr", final_lr)
        self.length = self.steps

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        if step >= self.steps:
            return self.final_lr
        return (
            self.final_lr
            + (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * step / self.steps)) / 2.0
        )

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr, "steps": self.steps, "final_lr": self.final_lr}


class CosineRestarts(Schedule):
    """SGDR (Loshchilov & Hutter, 2017): cosine cycles restarted at their peak.

    Cycle ``i`` (0-based) lasts ``period * period_mult ** i`` steps and anneals from
    ``lr * decay ** i`` to ``final_lr``: with ``t`` steps into a cycle of length ``T``,
    ``final_lr + (lr * decay**i - final_lr) * (1 + cos(pi * t / T)) / 2``. With
    ``decay=1`` it equals PyTorch ``CosineAnnealingWarmRestarts(T_0=period,
    T_mult=period_mult, eta_min=final_lr)``.

    >>> s = cosine_restarts(1.0, period=4, period_mult=2, decay=0.5)
    >>> s(0), s(4), s(12), s.boundaries(30)
    (1.0, 0.5, 0.25, [0, 4, 12, 28])
    """

    def __init__(
        self,
        lr: float,
        period: int,
        period_mult: int = 1,
        decay: float = 1.0,
        final_lr: float = 0.0,
    ) -> None:
        self.lr = check_lr("lr", lr)
        self.period = check_steps("period", period)
        self.period_mult = check_int("period_mult", period_mult, low=1)
        self.decay = check_gamma("decay", decay)
        self.final_lr = check_lr("final_lr", final_lr)

    def _locate(self, step: int) -> tuple[int, int, int]:
        """(cycle index, steps into the cycle, cycle length)."""
        if self.period_mult == 1:
            cycle, t = divmod(step, self.period)
            return cycle, t, self.period
        cycle, t, T = 0, step, self.period
        while t >= T:
            t -= T
            T *= self.period_mult
            cycle += 1
        return cycle, t, T

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        cycle, t, T = self._locate(step)
        peak = self.lr * self.decay**cycle if self.decay != 1.0 else self.lr
        return self.final_lr + (peak - self.final_lr) * (1 + math.cos(math.pi * t / T)) / 2

    def _own_boundaries(self, until: int) -> list[int]:
        out: list[int] = []
        start, T = 0, self.period
        while start + T <= until and len(out) < MAX_BOUNDARIES:
            start += T
            out.append(start)
            T *= self.period_mult
        return out

    def _params(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "period": self.period,
            "period_mult": self.period_mult,
            "decay": self.decay,
            "final_lr": self.final_lr,
        }


class InverseSqrt(Schedule):
    """Linear warmup from 0, then ``lr * sqrt(warmup / step)`` (Vaswani et al., 2017).

    ``lr * step / warmup`` for ``step < warmup`` (so step 0 has LR 0, as in fairseq and
    Hugging Face ``get_inverse_sqrt_schedule``), ``lr`` at ``step == warmup``, then
    ``lr * sqrt(warmup / step)``.

    >>> s = inverse_sqrt(1.0, warmup=4)
    >>> s(0), s(2), s(4), s(16)
    (0.0, 0.5, 1.0, 0.5)
    """

    def __init__(self, lr: float, warmup: int) -> None:
        self.lr = check_lr("lr", lr)
        self.warmup = check_steps("warmup", warmup)
        self.warmup_steps = self.warmup

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        if step < self.warmup:
            return self.lr * step / self.warmup
        return self.lr * math.sqrt(self.warmup / step)

    def _own_boundaries(self, until: int) -> list[int]:
        return [self.warmup]

    def _params(self) -> dict[str, object]:
        return {"lr": self.lr, "warmup": self.warmup}


WSD_DECAYS = ("linear", "cosine", "sqrt")


class Wsd(Schedule):
    """Warmup-stable-decay (trapezoid; Hu et al. 2024 "MiniCPM", Hägele et al. 2024).

    With ``D = max(1, round(decay_fraction * steps))`` decay steps starting at
    ``S = steps - D``:

    * ``step < warmup``: ``lr * step / warmup`` (linear from 0; step 0 has LR 0),
    * ``warmup <= step < S``: ``lr``,
    * ``S <= step < steps``: ``final_lr + (lr - final_lr) * f(p)``, ``p = (step - S) / D``
      with ``f = 1 - p`` (linear), ``(1 + cos(pi p)) / 2`` (cosine) or ``1 - sqrt(p)`` (sqrt),
    * ``step >= steps``: ``final_lr``.

    >>> s = wsd(1.0, steps=10, warmup=2, decay_fraction=0.2)
    >>> [s(t) for t in (0, 1, 2, 7, 8, 9, 10)]
    [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        lr: float,
        steps: int,
        warmup: int,
        decay_fraction: float,
        decay: str = "linear",
        final_lr: float = 0.0,
    ) -> None:
        self.lr = check_lr("lr", lr)
        self.steps = check_steps("steps", steps)
        self.warmup = check_int("warmup", warmup, low=0)
        self.decay_fraction = check_range(
            "decay_fraction", decay_fraction, low=0.0, high=1.0, low_inclusive=False
        )
        self.decay = check_choice("decay", decay, WSD_DECAYS)
        self.final_lr = check_lr("final_lr", final_lr)
        self.decay_steps = max(1, round(self.decay_fraction * self.steps))
        self.decay_start = self.steps - self.decay_steps
        if self.warmup > self.decay_start:
            raise ConfigError(
                f"warmup={self.warmup} is out of range; allowed: [0, {self.decay_start}] "
                f"(steps={self.steps} minus {self.decay_steps} decay steps from "
                f"decay_fraction={self.decay_fraction!r})"
            )
        self.length = self.steps
        self.warmup_steps = self.warmup

    def __call__(self, step: int) -> float:
        if step < 0:
            raise negative_step(step)
        if step < self.warmup:
            return self.lr * step / self.warmup
        if step < self.decay_start:
            return self.lr
        if step >= self.steps:
            return self.final_lr
        p = (step - self.decay_start) / self.decay_steps
        if self.decay == "linear":
            g = p
        elif self.decay == "cosine":
            g = (1.0 - math.cos(math.pi * p)) / 2.0
        else:
            g = math.sqrt(p)
        # lr - (lr - final_lr) * (1 - f(p)): exactly lr where the decay starts.
        return self.lr - (self.lr - self.final_lr) * g

    def _own_boundaries(self, until: int) -> list[int]:
        return [self.warmup, self.decay_start]

    def _params(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "steps": self.steps,
            "warmup": self.warmup,
            "decay_fraction": self.decay_fraction,
            "decay": self.decay,
            "final_lr": self.final_lr,
        }


def cosine(lr: float, steps: int, final_lr: float = 0.0) -> Cosine:
    """See :class:`Cosine`."""
    return Cosine(lr, steps, final_lr)


def cosine_restarts(
    lr: float, period: int, period_mult: int = 1, decay: float = 1.0, final_lr: float = 0.0
) -> CosineRestarts:
    """See :class:`CosineRestarts`."""
    return CosineRestarts(lr, period, period_mult, decay, final_lr)


def inverse_sqrt(lr: float, warmup: int) -> InverseSqrt:
    """See :class:`InverseSqrt`."""
    return InverseSqrt(lr, warmup)


def wsd(
    lr: float,
    steps: int,
    warmup: int,
    decay_fraction: float,
    decay: str = "linear",
    final_lr: float = 0.0,
) -> Wsd:
    """See :class:`Wsd`."""
    return Wsd(lr, steps, warmup, decay_fraction, decay, final_lr)
