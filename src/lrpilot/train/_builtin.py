"""lrpilot's own callbacks: logging, the plateau controller, best weights and early
stopping, the divergence guard, checkpointing. :func:`lrpilot.fit` composes them in this
order (the user's callbacks go between the guard and checkpointing).

The guard's rule is the pure :class:`lrpilot.train._guard.DivergenceGuard`; here it is
wired to the engine: its ``observe`` is the engine's gate (a ``diverged`` step is not
applied; in the engine's lagged mode the gate sees a step one step late, a non-finite step
is vetoed on the device, and a snapshot is taken only after the gate has seen every step it
holds), and on a divergence :class:`GuardCallback` returns the engine to the older of
its last two snapshots of the epoch, multiplies the whole schedule by ``guard.factor`` and
records a ``guard_rescue`` event; after ``guard.max_rescues`` rescues the next divergence
raises :class:`lrpilot.errors.TrainingAborted`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lrpilot import _distributed as distributed
from lrpilot.errors import TrainingAborted
from lrpilot.train._builders import params_finite
from lrpilot.train._callbacks import Callback, Control, StepOutcome
from lrpilot.train._checkpoint import (
    BackgroundWriter,
    CheckpointManager,
    atomic_write_bytes,
    encode,
    with_checksum,
)
from lrpilot.train._early_stop import BestTracker
from lrpilot.train._engine import Engine
from lrpilot.train._guard import DIVERGED, OK, STALL_BLOCKS, DivergenceGuard, copy_into
from lrpilot.train._summary import steps_rewound

#: ``checkpoint_every: auto`` writes a checkpoint when this much wall time has passed since
#: the last one (checked after every optimizer step), and always at the end of the run
CHECKPOINT_SECONDS = 60.0
_RESCUED = Control(rescue=True, reason="guard rescue")


class LogCallback(Callback):
    """Step records (every ``log_every`` steps, step 1, and every step the guard does not
    call ``ok``), epoch records and events to ``metrics.jsonl``/TensorBoard and the
    progress display."""

    def __init__(self, logger: Any, progress: Any, log_every: int) -> None:
        self.logger, self.progress, self.log_every = logger, progress, log_every

    def write(self, record: dict) -> None:
        if self.logger is not None:
            self.logger.write(record)

    def event(self, event: dict, message: str) -> None:
        self.write(event)
        if message:
            self.progress.message(message)

    def on_step_end(self, engine: Engine, outcome: StepOutcome) -> None:
        step = outcome.step
        if step % self.log_every and step != 1 and outcome.verdict == OK:
            return
        record = {
            "type": "step",
            "step": step,
            "epoch": outcome.epoch,
            "lr": outcome.lr,
            "train_loss": outcome.loss,
        }
        if outcome.grad_norm is not None:
            record["grad_norm"] = outcome.grad_norm
        noise = engine.noise
        if noise is not None and math.isfinite(noise.value):
            record["noise_scale"] = noise.value
        self.write(record)
        self.progress.step(step, outcome.epoch, outcome.loss, outcome.lr)

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        self.write(record)
        self.progress.epoch(record)


class PlateauCallback(Callback):
    """Reports ``record[monitor]`` to the schedule's plateau controller once per epoch."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        engine.adapter.report(record[self.monitor])


class GuardCallback(Callback):
    """The divergence guard in the loop (rule: :mod:`lrpilot.train._guard`)."""

    def __init__(
        self,
        guard: DivergenceGuard,
        factor: float,
        snapshot_every: int,
        max_replay: int | None = None,
    ) -> None:
        self.guard, self.factor, self.snapshot_every = guard, factor, snapshot_every
        #: steps the rescues may run again in all (None: no limit; ``guard.max_replay``)
        self.max_replay = max_replay
        # the last two good states (a rescue restores the older one); CPU copies
        self.snapshots: list[dict] = []
        self._weights: list[Any] = []

    def on_fit_start(self, engine: Engine) -> None:
        engine.gate = self.guard.observe
        self._weights = [p.detach() for p in engine.model.parameters()]  # views: current
        if not self.snapshots:
            self.snapshots = [engine.snapshot(full=False)]

    def on_step_end(self, engine: Engine, outcome: StepOutcome) -> Control | None:
        if outcome.verdict == DIVERGED:
            self.rescue(engine, outcome)
            return _RESCUED
        state, every = engine.state, self.snapshot_every
        n_micro = len(engine.micro_batches)
        if (
            state.step - self.snapshots[-1]["step"] >= every
            and state.micro < n_micro
            # a first snapshot after the epoch's (or a rescue's) that no later one can
            # follow in this epoch is never the one a rescue returns to: skip it
            and (
                len(self.snapshots) == 2
                or -(-(n_micro - state.micro) // engine.cfg.accumulate) > every
            )
            and self.guard.healthy  # (checked first: resolve() is a host sync)
            # lagged mode: the guard sees every queued step before a snapshot of them
            and all(o.verdict != DIVERGED for o in engine.resolve())
            and self.guard.healthy
            and params_finite(self._weights)
        ):
            dropped = self.snapshots[0] if len(self.snapshots) == 2 else None
            self.snapshots = [self.snapshots[-1], engine.snapshot(dropped, full=False)]
        return None

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        # rescues never cross an epoch boundary; the older snapshot's buffers are reused
        reuse = self.snapshots[0] if self.snapshots else None
        self.snapshots = [engine.snapshot(reuse, full=False)]

    def reason(self, outcome: StepOutcome) -> str:
        guard, loss, norm = self.guard, outcome.loss, outcome.grad_norm
        if not math.isfinite(loss):
            return "non-finite loss"
        if norm is not None and not math.isfinite(norm):
            return "non-finite gradient norm"
        if guard.cause == "rebound":
            return (
                f"loss back above {guard.rebound_judged_at:.4g} in most of the last "
                f"{guard.horizon} "
                f"steps: {guard.rebound:.0%} of its progress from {guard.first_level:.4g} "
                f"to {guard.best_level:.4g} lost"
            )
        if guard.cause == "stalled":
            return (
                f"loss still at its starting level {guard.initial_level:.4g} "
                f"{STALL_BLOCKS * guard.horizon} steps after the last rescue (lowest block "
                f"median {guard._watch_best:.4g}, not below {guard.stall_level():.4g})"
            )
        return (
            f"loss far above its recent level in {guard.patience} of the last {guard.horizon} steps"
        )

    def rescue(self, engine: Engine, outcome: StepOutcome) -> None:
        """Go back to the older snapshot, lower the whole schedule, record it (or abort
        when the rescues are used up)."""
        guard, state, adapter = self.guard, engine.state, engine.adapter
        reason = self.reason(outcome)
        base = {"type": "event", "step": state.step, "epoch": state.epoch}
        if guard.exhausted:
            event = {**base, "action": "guard_abort", "reason": reason, "loss": outcome.loss}
            event.update(rescues=guard.rescues, lr_scale=adapter.lr_scale)
            engine.record_event(event)
            raise TrainingAborted(
                f"divergence guard: {reason} at step {state.step} after {guard.rescues} "
                f"rescue(s) (guard.max_rescues={guard.max_rescues}); the schedule was "
                f"already scaled by {adapter.lr_scale:g}; lower the learning rate "
                f"(optimizer.lr / schedule lr) and rerun"
            )
        # the newest snapshot may already hold the start of the trouble: back to the older
        snapshot = self.snapshots[0]
        self.snapshots = [snapshot]
        new_scale = adapter.lr_scale * self.factor
        replay = self.may_replay(engine, snapshot["step"])
        engine.restore(snapshot, weights_only=not replay)
        adapter.set_lr_scale(new_scale)  # re-writes the LRs (and momentum) now
        guard.record_rescue()
        event = {**base, "action": "guard_rescue", "reason": reason, "loss": outcome.loss}
        event.update(
            restored_step=snapshot["step"],
            replayed=replay,
            schedule_step=adapter.last_epoch,
            lr_scale=new_scale,
            lr=engine.optimizer.param_groups[0]["lr"],
            rescue=guard.rescues,
        )
        back = (
            f"back to the state of step {snapshot['step']}"
            if replay
            else f"the weights of step {snapshot['step']} put back, on from step {state.step} "
            f"(guard.max_replay={self.max_replay} leaves no room to run the steps again)"
        )
        engine.record_event(
            event,
            f"lrpilot fit: guard rescue {guard.rescues}/{guard.max_rescues} at step "
            f"{state.step} ({reason}); {back}, schedule scaled by {new_scale:g}",
        )

    def may_replay(self, engine: Engine, restored_step: int) -> bool:
        """Whether going back to the snapshot of ``restored_step`` keeps the steps run
        again within ``max_replay`` (:func:`~lrpilot.train._summary.steps_rewound` of the
        rescues so far and this one)."""
        if self.max_replay is None:
            return True
        rescues = [e for e in engine.state.events if e.get("action") == "guard_rescue"]
        rescues.append({"step": engine.state.step, "restored_step": restored_step})
        return steps_rewound(rescues) <= self.max_replay


class BestCallback(Callback):
    """Best-epoch tracking (``best.pt``, ``restore_best``) and early stopping."""

    def __init__(self, tracker: BestTracker, stopping: bool, guard: GuardCallback | None):
        self.tracker, self.stopping, self.guard = tracker, stopping, guard
        self.best_model: dict | None = None
        self.written = True

    def on_epoch_end(self, engine: Engine, record: dict) -> Control | None:
        improved = self.tracker.update(
            record[self.tracker.monitor], epoch=record["epoch"], step=record["step"]
        )
        if improved:
            engine.state.best_record = dict(record)
            # copied from the epoch-end guard snapshot when there is one (the same weights;
            # not under DDP, whose snapshot keys carry the wrapper's "module." prefix)
            model = distributed.unwrap(engine.model)
            source = (
                self.guard.snapshots[0]["model"]
                if self.guard is not None and model is engine.model
                else model.state_dict()
            )
            self.best_model = copy_into(self.best_model, source)
            self.written = False
        if self.stopping and self.tracker.should_stop:
            return Control(stop=True, reason="early_stopping")
        return None


class CheckpointCallback(Callback):
    """Checkpoints mid-epoch (``checkpoint_every``) from ``on_step_end``; the loop calls
    :meth:`epoch_end` after every epoch's callbacks. ``capture()`` builds the state;
    writes go to a background thread (:class:`BackgroundWriter`)."""

    def __init__(self, every: Any, ckpts: CheckpointManager, capture: Any, best: BestCallback):
        self.every, self.ckpts, self.capture, self.best = every, ckpts, capture, best
        self.by_steps, self.by_time = isinstance(every, int), every == "auto"
        self.writer = BackgroundWriter()
        self.logger: Any = None  # set by the loop (main process only)
        self.last = time.monotonic()
        self.engine: Any = None

    def on_fit_start(self, engine: Engine) -> None:
        self.engine = engine

    def on_step_end(self, engine: Engine, outcome: StepOutcome) -> None:
        if outcome.verdict == DIVERGED or engine.epoch_done:
            return
        if (
            outcome.step % self.every == 0
            if self.by_steps
            else self.by_time and time.monotonic() - self.last >= CHECKPOINT_SECONDS
        ):
            self.save()

    def epoch_end(self, last: bool) -> None:
        if last:
            self.writer.run_inline()  # the run ends: nothing left to overlap the writes with
        if last or not self.by_time or time.monotonic() - self.last >= CHECKPOINT_SECONDS:
            self.save()

    def save(self) -> None:
        """Capture the state now; write it (fsync, atomic rename) on the writer thread."""
        if self.logger is None:
            return
        self.last = time.monotonic()
        self.write_best()
        data = self.ckpts.encode(self.capture(self.logger.flush()))
        self.writer.submit(self._write, data)

    def _write(self, data: bytes) -> None:
        self.logger.fsync()  # the metrics the checkpoint refers to are on disk first
        self.ckpts.save(data)

    def write_best(self) -> None:
        """Queue ``checkpoints/best.pt`` if the best weights changed since the last write."""
        best = self.best
        if self.logger is None or best.written or best.best_model is None:
            return
        record = self.engine.state.best_record or {}
        payload = {
            "model": best.best_model,
            "epoch": record.get("epoch"),
            "step": record.get("step"),
            "monitor": best.tracker.monitor,
            "value": best.tracker.best,
        }
        self.writer.submit(atomic_write_bytes, encode(with_checksum(payload)), self.ckpts.best_path)
        best.written = True
