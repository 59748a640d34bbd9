"""The training engine: one run's objects and the optimizer step, without any I/O.

One optimizer step (:meth:`Engine.train_step`) = ``accumulate`` micro-batches of
``batch_size`` samples (the last group of an epoch may be shorter). Each micro-batch loss
is weighted by its share ``n_k / n`` of the step's samples, so the accumulated gradient is
``grad (1/n) sum_i loss_i``, the gradient one big batch of the same samples gives. The
engine owns the step counter; the schedule (:func:`lrpilot.schedules.attach`) is stepped
once after every update that happened (an fp16 ``GradScaler`` overflow skips the update and
the schedule step, counted in ``state.skipped_steps``). A *gate* (the divergence guard's
``observe``, installed by :class:`lrpilot.train._builtin.GuardCallback`) sees each step's
loss before the update and may veto it.

Everything is deterministic and in memory: :meth:`snapshot` / :meth:`restore` copy the
model, optimizer, schedule, data position, counters and RNGs to the CPU and back, so a
caller can branch from a state and come back (the autopilot). :func:`~lrpilot.train._plan.plan_run`
gives the schedule, steps and batch arithmetic of a config without building a model.

>>> from lrpilot.train import Engine, parse_config
>>> engine = Engine(parse_config({"task": "mnist1d-mlp", "epochs": 1, "device": "cpu"}))
>>> snap = engine.snapshot()
>>> a = [o.loss for o in engine.run_steps(3)]
>>> engine.restore(snap)
>>> a == [o.loss for o in engine.run_steps(3)]
True
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lrpilot import _distributed as distributed
from lrpilot._state import restore_snapshot, take_snapshot
from lrpilot.batch.noise import NoiseMonitor
from lrpilot.errors import ConfigError
from lrpilot.tasks import Task, get_task
from lrpilot.train._builders import (
    autocast_context,
    build_model,
    build_optimizer,
    build_param_groups,
    build_train_data,
    evaluate,
    grad_clearer,
    grad_norm,
    makes_sparse_grads,
    resolve_device,
    resolve_implementation,
    training_loss,
    wrap_model,
)
from lrpilot.train._callbacks import Callback, CallbackList, StepOutcome
from lrpilot.train._config import FitConfig
from lrpilot.train._data import BatchFetcher, DataOrder
from lrpilot.train._lagged import LaggedSteps, LateReader, PendingStep
from lrpilot.train._plan import RunPlan, plan_run
from lrpilot.train._rng import capture_rng, restore_rng, seed_everything

LOOP_STATE_VERSION = 1
OK, DIVERGED = "ok", "diverged"
#: tests only: ``True``/``False`` forces the lagged mode on/off for every new Engine
_FORCE_LAGGED: bool | None = None


@dataclass
class LoopState:
    """The engine's counters (plain data, saved in every checkpoint)."""

    step: int = 0  # optimizer steps completed (including skipped/discarded ones)
    epoch: int = 0  # epoch in progress
    micro: int = 0  # next micro-batch index within the epoch
    samples: int = 0  # training samples processed
    epoch_loss_sum: float = 0.0
    epoch_loss_samples: int = 0
    skipped_steps: int = 0  # fp16 GradScaler overflow skips
    elapsed: float = 0.0  # wall seconds in earlier segments (before a resume)
    train_time: float = 0.0  # seconds spent in training steps
    eval_time: float = 0.0  # seconds spent in the per-epoch validation
    events: list[dict] = field(default_factory=list)
    last_epoch_record: dict | None = None
    best_record: dict | None = None
    stopped_early: bool = False

    _KEYS = (
        "step",
        "epoch",
        "micro",
        "samples",
        "epoch_loss_sum",
        "epoch_loss_samples",
        "skipped_steps",
        "elapsed",
        "train_time",
        "last_epoch_record",
        "best_record",
        "stopped_early",
    )

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": LOOP_STATE_VERSION}
        out.update((key, getattr(self, key)) for key in self._KEYS)
        out["eval_time"] = self.eval_time
        out["events"] = [dict(e) for e in self.events]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != LOOP_STATE_VERSION:
            raise ConfigError(f"loop state version {state.get('version')!r} is not supported")
        for key in self._KEYS:
            setattr(self, key, state[key])
        self.eval_time = float(state.get("eval_time", 0.0))  # absent before it was counted
        self.events = [dict(e) for e in state["events"]]


class Engine(LaggedSteps):
    """One run's objects (``cfg, task, model, optimizer, adapter, device, state``) and
    the training step. Building seeds every RNG with ``cfg.seed`` first."""

    def __init__(
        self,
        cfg: FitConfig,
        task: Task | None = None,
        *,
        optimizer_factory: Callable[[list[dict]], torch.optim.Optimizer] | None = None,
        _lagged: bool | None = None,
    ) -> None:
        """``optimizer_factory(param_groups)``, when given, builds the optimizer instead of
        ``cfg.optimizer`` (an optimizer lrpilot has no config entry for, e.g. a benchmark's
        peer method); the schedule still drives its param groups' ``lr``."""
        self.cfg = cfg
        self.task = task if task is not None else get_task(cfg.task)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        self.model = wrap_model(build_model(self.task, cfg), cfg, self.device)
        groups, mults, self.group_labels = build_param_groups(
            self.model, cfg.layer_lr, cfg.optimizer.no_decay
        )
        self.loss_fn = training_loss(self.task, cfg)  # label smoothing; evaluation: the task's
        self.optimizer = self._build_optimizer(groups, optimizer_factory)
        self.data = build_train_data(cfg, self.task, self.device)
        self.plan = plan_run(cfg, self.task)
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.total_steps = self.plan.total_steps
        from lrpilot.schedules import attach

        self.plateau = self.plan.plateau
        self.adapter = attach(
            self.optimizer,
            self.plan.schedule,
            momentum=self.plan.momentum,
            multipliers=mults,
            plateau=self.plateau,
        )
        self.scaler = None
        if cfg.amp and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.noise = NoiseMonitor(self.model, **cfg.noise_scale) if cfg.noise_scale else None
        self.state = LoopState()
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        #: ``gate(loss, grad_norm) -> verdict`` before each update ("diverged": no update)
        self.gate: Callable[[float, float | None], str] | None = None
        #: receives every event record (:meth:`record_event`); the loop logs them
        self.on_event: Callable[[dict, str], None] | None = None
        self._micro: list[torch.Tensor] = []
        self._micro_epoch = -1
        self._batches: Iterator[Any] | None = None
        self._clear_grads = grad_clearer(self.optimizer)
        self._null = contextlib.nullcontext()
        self._ddp = distributed.current_env().distributed
        self._t0 = time.perf_counter()
        self.lagged = self._choose_lagged(_lagged if _lagged is not None else _FORCE_LAGGED)
        self._reader = LateReader(self.device)
        self._launched: deque[PendingStep] = deque()  # queued, values not read yet
        self._ready: deque[StepOutcome] = deque()  # read, not handed out yet
        self._zero = torch.zeros((), device=self.device)
        self._veto = torch.zeros((), device=self.device)

    def _build_optimizer(
        self,
        groups: list[dict],
        factory: Callable[[list[dict]], torch.optim.Optimizer] | None,
    ) -> torch.optim.Optimizer:
        """``factory(groups)``, else ``cfg.optimizer`` with its kernel resolved for the
        model's parameters (:func:`lrpilot.optim.resolve_implementation`)."""
        if factory is not None:
            return factory(groups)  # its own kernel: nothing of cfg.optimizer to resolve
        implementation = resolve_implementation(
            self.cfg.optimizer.implementation,
            [p for group in groups for p in group["params"]],
            sparse_grads=makes_sparse_grads(self.model),
        )
        return build_optimizer(self.cfg, groups, implementation)

    def _choose_lagged(self, forced: bool | None) -> bool:
        """Lagged mode (:meth:`advance`): by default on CUDA when the optimizer can skip a
        step on the device (PyTorch's fused kernels take ``found_inf``) and no noise
        monitor reads values on the host; ``forced`` (tests) turns it on or off."""
        able = bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
        able = able and self.noise is None
        if forced is None:
            return able and self.device.type == "cuda"
        if forced and not able:
            raise ValueError(
                "the lagged step needs a fused optimizer (optimizer.implementation: fused "
                "or auto) and no noise_scale"
            )
        return forced

    # ------------------------------------------------------------------ the step
    @property
    def micro_batches(self) -> list[torch.Tensor]:
        """The index lists of the epoch in progress (``len``: micro-batches per epoch)."""
        if self._micro_epoch != self.state.epoch:
            self._micro = self.data.order.micro_batches(self.state.epoch)
            self._micro_epoch = self.state.epoch
            self._batches = None
        return self._micro

    @property
    def epoch_done(self) -> bool:
        return self.state.micro >= len(self.micro_batches)

    def _next_gradients(self) -> tuple[int, int, int, torch.Tensor, torch.Tensor | None]:
        """The gradients of the next optimizer step's micro-batches (a new epoch's data order
        when the last one is used up): ``(step number, micro-batch index after the step,
        samples, loss, grad norm or None)``. The counters are the caller's to move on."""
        state = self.state
        if self.epoch_done:
            self.next_epoch()
        micro = self.micro_batches
        if self._batches is None:
            self._batches = self.data.fetch.iterate(micro[state.micro :])
        group = micro[state.micro : state.micro + self.cfg.accumulate]
        sizes = [idx.shape[0] for idx in group]
        n_step = sum(sizes)
        step_no = state.step + 1
        log_now = step_no % self.cfg.log_every == 0 or step_no == 1
        loss_t, norm_t = self._gradients(sizes, n_step, step_no, log_now)
        return step_no, state.micro + len(group), n_step, loss_t, norm_t

    def train_step(self) -> StepOutcome:
        """Exactly one optimizer step from the current data position (an epoch whose
        micro-batches are used up is left for the next, without epoch-end work)."""
        if self._launched:
            self.resolve()  # a lagged step still open: its values first
        state = self.state
        t_step = time.perf_counter()
        step_no, next_micro, n_step, loss_t, norm_t = self._next_gradients()
        loss_value = float(loss_t)
        norm_value = float(norm_t) if norm_t is not None else None
        lr_used = self.optimizer.param_groups[0]["lr"]
        self.last_lr = lr_used
        gate = self.gate
        verdict = OK
        if gate is not None:
            verdict = gate(loss_value, norm_value if self.scaler is None else None)
        skipped = verdict == DIVERGED
        if not skipped:
            skipped = self._update()
        elif self.scaler is not None:
            self.scaler.update()  # close this step's unscale_ (the state is restored)
        state.step = step_no
        state.micro = next_micro
        state.samples += n_step
        if verdict != DIVERGED:
            state.epoch_loss_sum += loss_value * n_step
            state.epoch_loss_samples += n_step
        state.train_time += time.perf_counter() - t_step
        return StepOutcome(
            step_no, state.epoch, loss_value, norm_value, lr_used, n_step, skipped, verdict
        )

    def _gradients(
        self, sizes: list[int], n_step: int, step_no: int, log_now: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward over the step's micro-batches; ``(loss, grad norm)`` as
        tensors on the device (the norm only on logged steps or when clipping)."""
        model, scaler, noise, amp = self.model, self.scaler, self.noise, self.cfg.amp
        loss_fn, batches, acc = self.loss_fn, self._batches, len(sizes)
        assert batches is not None
        self._clear_grads()
        loss_total: Any = None
        if noise is not None:
            noise.begin_step(step_no, n_step)
        for k, size in enumerate(sizes):
            inputs, targets = next(batches)
            # DDP: all-reduce once per optimizer step (no_sync before the last)
            with distributed.sync_context(model, k == acc - 1) if self._ddp else self._null:
                if amp:
                    with autocast_context(amp, self.device):
                        loss = loss_fn(model(inputs), targets)
                else:
                    loss = loss_fn(model(inputs), targets)
                weight = size / n_step if self.cfg.accumulate > 1 else 1.0
                scaled = loss * weight if self.cfg.accumulate > 1 else loss
                if noise is not None:
                    noise.before_backward()
                if scaler is not None:
                    scaler.scale(scaled).backward()
                else:
                    scaled.backward()
                if noise is not None:
                    noise.after_backward(weight, size)
            loss_total = scaled.detach() if loss_total is None else loss_total + scaled.detach()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if noise is not None:
            noise.end_step(scaler.get_scale() if scaler is not None else 1.0)
        norm_t = None
        if self.cfg.grad_clip is not None:
            norm_t = nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        elif log_now:
            norm_t = grad_norm(self.params)
        return (distributed.mean_over_processes(loss_total) if self._ddp else loss_total), norm_t

    def _update(self) -> bool:
        """Apply the update and step the schedule; ``True`` if fp16 overflow skipped it."""
        scaler = self.scaler
        if scaler is None:
            self.optimizer.step()
            self.adapter.step()
            return False
        scale_before = scaler.get_scale()
        self._prepare_momentum()  # an overflow at the first step must not leave garbage
        scaler.step(self.optimizer)
        scaler.update()
        if scaler.get_scale() < scale_before:
            self.state.skipped_steps += 1  # overflow: no update, no schedule step
            return True
        self.adapter.step()
        return False

    def next_epoch(self) -> None:
        """Move to the next epoch's start (the counters of the epoch start again)."""
        state = self.state
        state.epoch += 1
        state.micro = 0
        state.epoch_loss_sum = 0.0
        state.epoch_loss_samples = 0
        self._batches = None

    def run_steps(self, n: int, callbacks: Any = ()) -> list[StepOutcome]:
        """``n`` optimizer steps, crossing epochs as the data order says (no validation or
        other epoch-end work); ``callbacks``' ``on_step_end`` see each outcome, and the
        steps end early when one asks to stop."""
        calls = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
        self.model.train()
        out: list[StepOutcome] = []
        if self.lagged:
            for _ in range(n):
                self.advance()
                if self._hand_out(calls, out):
                    break
            self.resolve()
            self._hand_out(calls, out)
            return out
        for _ in range(n):
            outcome = self.train_step()
            out.append(outcome)
            control = calls.step_end(self, outcome)
            if control is not None and control.stop:
                break
        return out

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current weights (``val_loss``, ``val_<metric>``), the
        same on every process (rank 0's)."""
        t_eval = time.perf_counter()
        metrics = evaluate(self.model, self.task, self.data, self.cfg.amp, self.device)
        self.state.eval_time += time.perf_counter() - t_eval
        return distributed.broadcast_object(metrics)  # every process decides alike

    def end_epoch(self) -> dict:
        """Close the epoch in progress: validate, build its ``epoch`` record, move to the
        next epoch's start. Returns the record."""
        state = self.state
        metrics = self.evaluate()
        n = state.epoch_loss_samples
        record = {
            "type": "epoch",
            "epoch": state.epoch,
            "step": state.step,
            "lr": self.last_lr,
            "train_loss": state.epoch_loss_sum / n if n else float("nan"),
            **metrics,
            "time": self.elapsed(),
        }
        state.last_epoch_record = record
        self.next_epoch()
        return record

    def elapsed(self) -> float:
        return self.state.elapsed + (time.perf_counter() - self._t0)

    def record_event(self, event: dict, message: str = "") -> None:
        """Keep an event record (``summary.json``'s actions) and hand it to ``on_event``."""
        self.state.events.append(event)
        if self.on_event is not None:
            self.on_event(event, message)

    # ------------------------------------------------------------ state and branching
    def snapshot(self, reuse: dict | None = None, *, full: bool = True) -> dict:
        """CPU copy of the model, optimizer, schedule position, data position (epoch,
        micro-batch, the epoch's loss sums) and scaler; ``full`` adds the RNG states, the
        step counters and the schedule function (for :meth:`restore` to bring back after
        :meth:`set_schedule`). ``reuse``: a snapshot being dropped, whose buffers are
        filled instead of new ones. Without ``full`` it is checkpointable as is. Lagged
        mode: the queued steps are read first (:meth:`resolve`)."""
        if self._launched:
            self.resolve()
        state = self.state
        snap = take_snapshot(state.step, self.model, self.optimizer, reuse)
        snap.update(
            epoch=state.epoch,
            micro=state.micro,
            epoch_loss_sum=state.epoch_loss_sum,
            epoch_loss_samples=state.epoch_loss_samples,
            schedule=self.adapter.state_dict(),
            scaler=None if self.scaler is None else self.scaler.state_dict(),
        )
        if full:
            snap.update(
                rng=capture_rng(),
                schedule_fn=self.adapter.schedule,
                counters={"samples": state.samples, "skipped_steps": state.skipped_steps},
            )
        return snap

    def restore(self, snap: dict, *, weights_only: bool = False) -> None:
        """Put a :meth:`snapshot` back (the snapshot stays usable). A snapshot without the
        counters (the guard's) keeps the global step counting. ``weights_only``: only the
        model, optimizer and scaler state; the schedule and data positions stay, so the
        steps since the snapshot are not redone (queued lagged steps are dropped)."""
        restore_snapshot(snap, self.model, self.optimizer)
        if self.scaler is not None and snap["scaler"] is not None:
            self.scaler.load_state_dict(snap["scaler"])
        if weights_only:
            self._launched.clear()
            self._ready.clear()
            return
        if "schedule_fn" in snap:
            self.set_schedule(snap["schedule_fn"])
        self.adapter.load_state_dict(snap["schedule"])
        state = self.state
        state.epoch = snap["epoch"]
        state.micro = snap["micro"]
        state.epoch_loss_sum = snap["epoch_loss_sum"]
        state.epoch_loss_samples = snap["epoch_loss_samples"]
        if "counters" in snap:
            state.step = snap["step"]
            state.samples = snap["counters"]["samples"]
            state.skipped_steps = snap["counters"]["skipped_steps"]
        if "rng" in snap:
            restore_rng(snap["rng"])
        self._batches = None  # the data position changed: a new batch iterator
        self._launched.clear()  # lagged steps from after the snapshot: dropped
        self._ready.clear()

    def switch_data(self, dataset: Any, order: DataOrder) -> None:
        """Fetch training batches from ``dataset`` in ``order`` from now on (the task's
        ``train_set`` becomes ``dataset``; ``total_steps`` is ``order``'s). The caller
        guarantees that ``order`` gives the epoch in progress the same samples as before
        (:class:`~lrpilot.train._data.PhasedOrder`), so the run continues as it was."""
        if self._ddp:
            raise ConfigError("switching the training data is not supported under torchrun")
        if self._launched:
            self.resolve()
        self.task = replace(self.task, train_set=dataset)
        self.data = replace(
            self.data,
            order=order,
            fetch=BatchFetcher(dataset, self.device),
            num_train=len(dataset),
        )
        self.total_steps = order.total_steps(self.cfg.epochs)
        self.steps_per_epoch = order.steps_in_epoch(self.cfg.epochs - 1)
        self._micro_epoch = -1  # the epoch's index lists come from the new order
        self._batches = None

    def set_schedule(self, schedule: Callable[[int], float]) -> None:
        """Swap the ``step -> lr`` function; the step counter (and ``lr_scale``) stay."""
        self.adapter.schedule = schedule
        self.adapter.warmup_steps = int(getattr(schedule, "warmup_steps", 0))
        self.adapter.refresh()


__all__ = ["Callback", "Engine", "LoopState", "RunPlan", "plan_run"]
