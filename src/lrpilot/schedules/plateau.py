"""``Plateau``: a metric-driven LR multiplier with PyTorch ``ReduceLROnPlateau``'s rules.

The rules (identical to PyTorch): a report is an improvement when
``metric < best * (1 - threshold)`` (``mode="min"``, ``threshold_mode="rel"``),
``metric < best - threshold`` (min/abs), ``metric > best * (1 + threshold)`` (max/rel) or
``metric > best + threshold`` (max/abs). An improvement sets ``best`` and zeroes the bad
count; otherwise the count grows (NaN is never an improvement). During cooldown the count
is reset after each report (``best`` is still tracked). When the count exceeds
``patience`` the multiplier is reduced: the LR goes from ``old`` to
``new = max(old * factor, min_lr)``, skipped when ``old - new <= eps``; then cooldown
starts and the count is zeroed.

``plateau.factor`` is the current multiplier: the LR actually used is
``max(lr * plateau.factor, min(lr, min_lr))`` where ``lr`` is the schedule's value, i.e.
reductions never push the LR below ``min_lr`` and never raise it above the schedule.
Used alone on a constant schedule, ``attach(opt, constant(lr0), plateau=p)`` gives the
same LRs as ``ReduceLROnPlateau`` on ``lr0``.

Warmup: a report made while the attached schedule is still in its warmup (``step <
schedule.warmup_steps``) is recorded (``best`` is updated) but never counts as bad and
never reduces. When the plateau is attached, ``attach`` supplies the step, the warmup
length and the current LR, and the new LR takes effect immediately (before the next
optimizer step). Standalone, pass them yourself: ``report(metric, step=..., lr=...)``.

>>> p = Plateau(patience=1, factor=0.5)
>>> [p.report(v) for v in (1.0, 1.0, 1.0)], p.factor
([False, False, True], 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.schedules.base import check_choice, check_int, check_range

__all__ = ["Plateau"]

STATE_VERSION = 1


class Plateau:
    """Reduce-on-plateau controller; see the module docstring for the exact rules."""

    def __init__(
        self,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.reduce_by = check_range(
            "factor", factor, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        self.patience = check_int("patience", patience, low=0)
        self.threshold = check_range("threshold", threshold, low=0.0)
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = check_int("cooldown", cooldown, low=0)
        self.min_lr = check_range("min_lr", min_lr, low=0.0)
        self.eps = check_range("eps", eps, low=0.0)
        self._listeners: list[Callable[[], Any]] = []
        self._context: Callable[[], tuple[int, int, float] | None] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget all reports and restore the multiplier to 1."""
        self.factor = 1.0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0
        self.num_reports = 0
        self.num_reductions = 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return a < best * (1.0 - self.threshold)
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def apply(self, lr: float) -> float:
        """The LR after this plateau's reductions: ``max(lr * factor, min(lr, min_lr))``."""
        if self.factor == 1.0:
            return lr
        return max(lr * self.factor, min(lr, self.min_lr))

    def report(
        self,
        metric: float,
        *,
        step: int | None = None,
        lr: float | None = None,
        warmup_steps: int | None = None,
    ) -> bool:
        """Record one evaluation; return True when the LR multiplier was reduced.

        ``step``/``lr``/``warmup_steps`` default to what the attached adapter says (the
        current optimizer step, the schedule's current LR, its warmup length); without an
        adapter, ``lr=None`` means the eps rule is applied to the multiplier itself and
        ``step=None`` means "not in warmup".
        """
        metric = float(metric)
        context = None if self._context is None else self._context()
        if context is not None:
            c_step, c_warm, c_lr = context
            step = c_step if step is None else step
            warmup_steps = c_warm if warmup_steps is None else warmup_steps
            lr = c_lr if lr is None else lr
        self.num_reports += 1
        in_warmup = step is not None and warmup_steps is not None and step < warmup_steps
        if self._is_better(metric, self.best):
            self.best = metric
            self.num_bad = 0
        elif not in_warmup:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        reduced = False
        if self.num_bad > self.patience:
            ref = 1.0 if lr is None else float(lr)
            old = self.apply(ref)
            new = max(old * self.reduce_by, min(ref, self.min_lr))
            if old - new > self.eps:
                self.factor *= self.reduce_by
                self.num_reductions += 1
                reduced = True
            self.cooldown_counter = self.cooldown
            self.num_bad = 0
        if reduced:
            for listener in self._listeners:
                listener()
        return reduced

    def state_dict(self) -> dict[str, Any]:
        """Primitive-only state (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "version": STATE_VERSION,
            "factor": self.factor,
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_counter": self.cooldown_counter,
            "num_reports": self.num_reports,
            "num_reductions": self.num_reductions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; raises ``ConfigError`` for a bad or newer state."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else state
            raise ConfigError(f"plateau state version={got!r} is not supported; allowed: 1")
        try:
            factor = check_range("factor", state["factor"], low=0.0, high=1.0)
            best = float(state["best"])
            num_bad = check_int("num_bad", state["num_bad"], low=0)
            cooldown = check_int("cooldown_counter", state["cooldown_counter"], low=0)
            reports = check_int("num_reports", state["num_reports"], low=0)
            reductions = check_int("num_reductions", state["num_reductions"], low=0)
        except KeyError as exc:
            raise ConfigError(f"plateau state is missing key {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"plateau state is malformed: {exc}") from None
        self.factor, self.best, self.num_bad = factor, best, num_bad
        self.cooldown_counter, self.num_reports, self.num_reductions = cooldown, reports, reductions
        for listener in self._listeners:
            listener()

    def __repr__(self) -> str:
        return (
            f"Plateau(mode={self.mode!r}, factor={self.reduce_by!r}, patience={self.patience}, "
            f"threshold={self.threshold!r}, threshold_mode={self.threshold_mode!r}, "
            f"cooldown={self.cooldown}, min_lr={self.min_lr!r}, eps={self.eps!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_listeners"] = []
        state["_context"] = None
        return state
