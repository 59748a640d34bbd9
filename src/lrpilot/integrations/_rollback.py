"""In-memory rollback for trainers lrpilot does not own (the Lightning callback).

The rule is :mod:`lrpilot.train._guard`'s: the guard judges each optimizer step's loss; a
snapshot (CPU copies of model, optimizer and RNG state, :class:`TrainingSnapshot`) is
taken every ``every`` steps while the last ``horizon`` steps were healthy, the last two are
kept, and a divergence restores the OLDER one (the newer may already hold the start of the
trouble), moves the schedule back to that snapshot's position and multiplies the whole
schedule by ``factor``. After ``max_rescues`` rescues the next divergence raises
:class:`lrpilot.TrainingAborted`. The data order is not rewound (the trainer owns it).

>>> import torch
>>> from lrpilot.schedules import attach, constant
>>> from lrpilot.train._guard import DivergenceGuard
>>> model = torch.nn.Linear(2, 1)
>>> adapter = attach(torch.optim.SGD(model.parameters(), lr=0.1), constant(0.1))
>>> rollback = Rollback(DivergenceGuard(), adapter, factor=0.5, every=1)
>>> rollback.snapshot(0, model)
>>> with torch.no_grad():
...     _ = model.weight.fill_(float("nan"))
>>> adapter.step()
>>> event = rollback.observe(1, 0, float("nan"), model)
>>> event["action"], event["restored_step"], adapter.optimizer.param_groups[0]["lr"]
('guard_rescue', 0, 0.05)
>>> bool(torch.isfinite(model.weight).all()), adapter.last_epoch
(True, 0)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lrpilot.errors import TrainingAborted
from lrpilot.finder.snapshot import TrainingSnapshot
from lrpilot.integrations._common import guard_reason
from lrpilot.schedules import ScheduleAdapter
from lrpilot.train._guard import DIVERGED, DivergenceGuard


class Rollback:
    """The guard, the last two snapshots and the rescue; see the module docstring."""

    def __init__(
        self, guard: DivergenceGuard, adapter: ScheduleAdapter, *, factor: float, every: int
    ) -> None:
        self.guard = guard
        self.adapter = adapter
        self.factor = factor
        self.every = every
        self.snapshots: list[tuple[int, int, TrainingSnapshot]] = []

    def snapshot(self, step: int, model: nn.Module) -> None:
        """Keep a snapshot of ``model`` and the optimizer at trainer step ``step``."""
        snap = TrainingSnapshot.capture(model, self.adapter.optimizer)
        self.snapshots = [*self.snapshots[-1:], (step, self.adapter.last_epoch, snap)]

    def observe(self, step: int, epoch: int, loss: float, model: nn.Module) -> dict | None:
        """Judge step ``step``'s loss: a rescue (returns its event) or maybe a snapshot."""
        if self.guard.observe(loss) == DIVERGED:
            return self.rescue(step, epoch, loss)
        if self.guard.healthy and (
            not self.snapshots or step - self.snapshots[-1][0] >= self.every
        ):
            self.snapshot(step, model)
        return None

    def rescue(self, step: int, epoch: int, loss: float) -> dict:
        guard, adapter = self.guard, self.adapter
        reason = guard_reason(guard.cause)
        if guard.exhausted or not self.snapshots:
            raise TrainingAborted(
                f"lrpilot guard: {reason} at step {step} after {guard.rescues} rescue(s); the "
                f"schedule was already scaled by {adapter.lr_scale:g}; lower the learning rate "
                "and rerun"
            )
        restored, schedule_step, snap = self.snapshots[0]
        self.snapshots = self.snapshots[:1]
        snap.restore(rng=False)
        adapter.step(schedule_step)  # back to the snapshot's schedule position
        adapter.set_lr_scale(adapter.lr_scale * self.factor)
        guard.record_rescue()
        return {
            "type": "event",
            "step": step,
            "epoch": epoch,
            "action": "guard_rescue",
            "reason": reason,
            "loss": loss,
            "restored_step": restored,
            "schedule_step": schedule_step,
            "lr_scale": adapter.lr_scale,
            "lr": float(adapter.optimizer.param_groups[0]["lr"]),
            "rescue": guard.rescues,
        }

    def abort_event(self, step: int, epoch: int, loss: float) -> dict[str, Any]:
        """The ``guard_abort`` event written before :meth:`rescue` raises."""
        return {
            "type": "event",
            "step": step,
            "epoch": epoch,
            "action": "guard_abort",
            "reason": guard_reason(self.guard.cause),
            "loss": loss,
            "rescues": self.guard.rescues,
            "lr_scale": self.adapter.lr_scale,
        }
