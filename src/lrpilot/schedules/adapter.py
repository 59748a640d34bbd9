"""``attach``: drive an optimizer's param-group LRs (and momentum) from a schedule.

The adapter is a ``torch.optim.lr_scheduler.LRScheduler`` subclass (so PyTorch code and
Lightning's ``configure_optimizers`` with ``"interval": "step"`` accept it), but its
hot path is its own: ``step()`` advances the counter and writes

    group_i["lr"] = plateau.apply(schedule(step) * lr_scale * multipliers[i])

(without a plateau: ``schedule(step) * lr_scale * multipliers[i]``) and, with ``momentum``,
``momentum(step)`` into ``group["momentum"]`` or Adam's ``group["betas"][0]``.
``last_epoch`` counts the optimizer steps done; construction writes step 0's values, like
a PyTorch scheduler applying its initial LR. Call ``step()`` once after each optimizer
step that actually happened (with AMP, skip it when the ``GradScaler`` skipped the step).
The adapter does not wrap ``optimizer.step`` (so PyTorch's "scheduler.step() before
optimizer.step()" warning never fires).

``state_dict()`` holds only primitives (version, step, lr_scale, plateau state) and
``load_state_dict()`` re-writes the optimizer's LRs and momentum, so resuming at any step
is exact regardless of whether the optimizer state was loaded before or after.

>>> import torch
>>> from lrpilot.schedules import cosine
>>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
>>> sched = attach(opt, cosine(0.1, steps=4))
>>> opt.param_groups[0]["lr"]
0.1
>>> opt.step(); sched.step(); round(opt.param_groups[0]["lr"], 12)
0.085355339059
>>> sched.set_lr_scale(0.5); round(opt.param_groups[0]["lr"], 12)
0.04267766953
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lrpilot.errors import ConfigError
from lrpilot.schedules.base import Schedule, check_int, check_range
from lrpilot.schedules.plateau import Plateau

__all__ = ["ScheduleAdapter", "attach"]

STATE_VERSION = 1


class ScheduleAdapter(LRScheduler):
    """Applies a schedule to an optimizer; create it with :func:`attach`."""

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Callable[[int], float],
        *,
        momentum: Callable[[int], float] | None = None,
        multipliers: Sequence[float] | None = None,
        plateau: Plateau | None = None,
    ) -> None:
        # LRScheduler.__init__ is deliberately not called: it wraps optimizer.step (a
        # monkey-patch used only for a warning) and runs a generic step; everything the
        # base class's public API reads is set here instead.
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        if not callable(schedule):
            raise ConfigError(f"schedule must be callable, got {schedule!r}")
        n = len(optimizer.param_groups)
        if multipliers is None:
            mults = (1.0,) * n
        else:
            if isinstance(multipliers, (str, bytes)) or not isinstance(multipliers, Sequence):
                raise ConfigError(f"multipliers must be a list of numbers, got {multipliers!r}")
            if len(multipliers) != n:
                raise ConfigError(
                    f"multipliers has {len(multipliers)} entries; allowed: exactly one per "
                    f"param group ({n})"
                )
            mults = tuple(
                check_range(f"multipliers[{i}]", m, low=0.0) for i, m in enumerate(multipliers)
            )
        self._betas = _writes_betas(optimizer, momentum)
        if plateau is not None and not isinstance(plateau, Plateau):
            raise ConfigError(f"plateau must be a lrpilot Plateau, got {plateau!r}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.momentum = momentum
        self.multipliers = mults
        self.plateau = plateau
        self.lr_scale = 1.0
        self.last_epoch = 0
        self._step_count = 1
        self.warmup_steps = int(getattr(schedule, "warmup_steps", 0))
        first = float(schedule(0))
        self.base_lrs = [first * m for m in mults]
        self._last_lr: list[float] = []  # type: ignore[assignment]  # floats, never tensors
        if plateau is not None:
            ref = weakref.ref(self)
            plateau._listeners.append(_Refresh(ref))
            plateau._context = _Context(ref)
        self._apply()

    # -- hot path ---------------------------------------------------------------------
    def _apply(self) -> None:
        t = self.last_epoch
        base = self.schedule(t) * self.lr_scale
        groups = self.optimizer.param_groups
        mults = self.multipliers
        if len(groups) != len(mults):
            raise ConfigError(
                f"the optimizer has {len(groups)} param groups but the schedule was attached "
                f"with {len(mults)}; attach again after adding param groups"
            )
        plateau = self.plateau
        if plateau is None:
            lrs = [base * m for m in mults]
        else:
            lrs = [plateau.apply(base * m) for m in mults]
        for group, lr in zip(groups, lrs, strict=True):
            old = group["lr"]
            if old.__class__ is float:  # fast path: skips Tensor's slow isinstance check
                group["lr"] = lr
            elif isinstance(old, torch.Tensor):
                old.fill_(lr)  # tensor LRs (capturable/fused optimizers) stay the same object
            else:
                group["lr"] = lr
        self._last_lr = lrs
        if self.momentum is not None:
            mom = self.momentum(t)
            if self._betas:
                for group in groups:
                    betas = group["betas"]
                    group["betas"] = (mom, *betas[1:])
            else:
                for group in groups:
                    group["momentum"] = mom

    def set_momentum(self, momentum: Callable[[int], float] | None) -> None:
        """Swap the momentum schedule (``None``: the optimizer's momentum stays as it is
        from now on) and write the current step's value now."""
        self._betas = _writes_betas(self.optimizer, momentum)
        self.momentum = momentum
        self._apply()

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """Advance one optimizer step (or jump to step ``epoch``) and write the new LRs."""
        if epoch is None:
            self.last_epoch += 1
        else:
            self.last_epoch = check_int("epoch", epoch, low=0)
        self._step_count += 1
        self._apply()

    # -- LRScheduler API ---------------------------------------------------------------
    def get_lr(self) -> list[float]:  # type: ignore[override]  # floats, never tensors
        """The LRs for the current step (what ``step()`` wrote), one per param group."""
        return list(self._last_lr)

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        return list(self._last_lr)

    def set_lr_scale(self, scale: float) -> None:
        """Set ``lr_scale`` (multiplies every LR) and re-write the current step's LRs now."""
        self.lr_scale = check_range("lr_scale", scale, low=0.0)
        self._apply()

    def refresh(self) -> None:
        """Re-write the optimizer's LRs/momentum for the current step (e.g. after changing
        ``lr_scale`` directly or loading an optimizer state)."""
        self._apply()

    def report(self, metric: float) -> bool:
        """Report an evaluation metric to the attached plateau (see :class:`Plateau`)."""
        if self.plateau is None:
            raise ConfigError("report() needs a plateau: attach(..., plateau=Plateau(...))")
        return self.plateau.report(metric)

    def state_dict(self) -> dict[str, Any]:
        """Primitive-only state: loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "version": STATE_VERSION,
            "step": self.last_epoch,
            "lr_scale": self.lr_scale,
            "schedule": self._fingerprint(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the counter, ``lr_scale`` and plateau and re-write the optimizer's LRs."""
        state = state_dict
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else state
            raise ConfigError(f"schedule state version={got!r} is not supported; allowed: 1")
        try:
            step = check_int("step", state["step"], low=0)
            lr_scale = check_range("lr_scale", state["lr_scale"], low=0.0)
            plateau_state = state["plateau"]
        except KeyError as exc:
            raise ConfigError(f"schedule state is missing key {exc}") from None
        if (plateau_state is None) != (self.plateau is None):
            raise ConfigError(
                "schedule state "
                + (
                    "has a plateau but none is attached"
                    if self.plateau is None
                    else "has no plateau state but a plateau is attached"
                )
            )
        saved, now = state.get("schedule"), self._fingerprint()
        if isinstance(saved, str) and now is not None and saved != now:
            warnings.warn(
                f"resuming with a different schedule: saved {saved}, now {now}",
                UserWarning,
                stacklevel=2,
            )
        if self.plateau is not None:
            self.plateau.load_state_dict(plateau_state)
        self.last_epoch = step
        self.lr_scale = lr_scale
        self._apply()

    def _fingerprint(self) -> str | None:
        """``repr`` of a lrpilot schedule (stable across processes), else None."""
        return repr(self.schedule) if isinstance(self.schedule, Schedule) else None

    def _context(self) -> tuple[int, int, float]:
        # The reference LR for the plateau's eps rule: the largest group's (exactly
        # PyTorch's rule for a single group with multiplier 1).
        lr = float(self.schedule(self.last_epoch)) * self.lr_scale * max(self.multipliers)
        return self.last_epoch, self.warmup_steps, lr

    def __repr__(self) -> str:
        return f"ScheduleAdapter(step={self.last_epoch}, schedule={self.schedule!r})"


class _Refresh:
    """Plateau listener: re-apply the adapter's LRs (weak reference; no cycle)."""

    def __init__(self, ref: weakref.ref[ScheduleAdapter]) -> None:
        self.ref = ref

    def __call__(self) -> None:
        adapter = self.ref()
        if adapter is not None:
            adapter._apply()


class _Context:
    def __init__(self, ref: weakref.ref[ScheduleAdapter]) -> None:
        self.ref = ref

    def __call__(self) -> tuple[int, int, float] | None:
        adapter = self.ref()
        if adapter is None:
            return None
        return adapter._context()


def attach(
    optimizer: Optimizer,
    schedule: Callable[[int], float],
    *,
    momentum: Callable[[int], float] | None = None,
    multipliers: Sequence[float] | None = None,
    plateau: Plateau | None = None,
) -> ScheduleAdapter:
    """Drive ``optimizer`` from ``schedule``; see the module docstring.

    ``multipliers`` gives one factor per param group (layer-wise LR); ``momentum`` is a
    schedule of momentum values; ``plateau`` multiplies the LR after metric reports.
    """
    return ScheduleAdapter(
        optimizer, schedule, momentum=momentum, multipliers=multipliers, plateau=plateau
    )


def _writes_betas(optimizer: torch.optim.Optimizer, momentum: object) -> bool:
    """Whether a momentum schedule goes to Adam's ``betas[0]`` (else SGD's ``momentum``)."""
    if momentum is None:
        return False
    if not callable(momentum):
        raise ConfigError(f"momentum must be a schedule (callable), got {momentum!r}")
    if "momentum" in optimizer.defaults:
        return False
    if "betas" in optimizer.defaults:
        return True
    raise ConfigError(
        f"momentum schedule given but {type(optimizer).__name__} has neither 'momentum' nor 'betas'"
    )
