"""Late reads of a training step's values, so that the step needs no host sync on CUDA.

On CUDA, reading a tensor on the host (``float(loss)``) waits for the GPU to finish the
work queued so far: the CPU cannot queue the next step meanwhile and the GPU idles between
steps. The engine's *lagged* mode (:meth:`lrpilot.train.Engine.advance`) instead puts each
step's ``[loss, grad norm, overflow]`` into one small device tensor, copies it with
``non_blocking=True`` into a pinned host buffer and records a CUDA event after the copy
(:meth:`LateReader.push`). The host reads it (:meth:`LateReader.read`, which waits on that
event only) one step later, after the next step's kernels are queued, so the GPU always has
work while the host waits. On the CPU there is nothing to overlap: the tensor is read as is
(the lagged mode is used on the CPU only by the tests).

Reference: the CUDA programming guide, "Asynchronous concurrent execution" (pinned memory,
``cudaMemcpyAsync``, events); PyTorch's "A guide on good usage of non_blocking and
pin_memory()" (a device-to-host copy with ``non_blocking=True`` must be waited on, here by
an event, before the host reads it).

>>> reader = LateReader(torch.device("cpu"))
>>> late = reader.push(torch.tensor([0.5, 0.0, 0.0]))
>>> reader.read(late)
[0.5, 0.0, 0.0]
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lrpilot.train._callbacks import CallbackList, StepOutcome


@dataclass
class Late:
    """A value copied to the host, not read yet: the buffer and the event after the copy
    (``None`` on the CPU)."""

    buffer: torch.Tensor
    event: Any = None


@dataclass
class PendingStep:
    """A step whose update is queued but whose values the host has not read yet."""

    step: int
    epoch: int
    lr: float
    samples: int
    has_norm: bool
    values: Late


class LateReader:
    """A pool of pinned host buffers and CUDA events for :class:`Late` copies."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._free: dict[int, list[Late]] = {}  # by size

    def push(self, values: torch.Tensor) -> Late:
        """Start the copy of ``values`` to the host (no wait); :meth:`read` it later."""
        if not self.cuda:
            return Late(values)
        free = self._free.setdefault(values.numel(), [])
        late = free.pop() if free else None
        if late is None or late.buffer.shape != values.shape:
            late = Late(
                torch.empty(values.shape, dtype=values.dtype, pin_memory=True),
                torch.cuda.Event(),
            )
        late.buffer.copy_(values, non_blocking=True)
        late.event.record()
        return late

    def read(self, late: Late) -> list[float]:
        """The values (waits for the copy's event only: later work stays queued)."""
        if late.event is None:
            return late.buffer.tolist()
        event = late.event
        while not event.query():  # polls; never a device-wide or stream sync
            time.sleep(0)
        out = late.buffer.tolist()
        self._free[late.buffer.numel()].append(late)  # read: the buffer may take the next copy
        return out


#: lagged mode: the host reads a step's values this many steps after it was queued
LAG = 1
OK, DIVERGED = "ok", "diverged"


class LaggedSteps:
    """The lagged step of :class:`lrpilot.train.Engine` (a base class of it, kept here
    for the engine module's size; it uses the engine's attributes)."""

    # set by Engine.__init__
    cfg: Any
    state: Any
    model: Any
    optimizer: Any
    scaler: Any
    adapter: Any
    params: list
    gate: Any
    last_lr: float
    epoch_done: bool
    _reader: LateReader
    _launched: deque
    _ready: deque
    _zero: torch.Tensor
    _veto: torch.Tensor
    _next_gradients: Callable[[], tuple[int, int, int, torch.Tensor, torch.Tensor | None]]

    def advance(self) -> None:
        """Lagged mode: queue one optimizer step without any host sync and read the values
        of the steps queued ``LAG`` steps earlier (all of them once the epoch's data is used
        up). Their outcomes wait for :meth:`next_outcome`.

        A step's ``[loss, grad norm, fp16 overflow]`` travels to the host late
        (:mod:`lrpilot.train._lagged`); a non-finite loss (or measured norm, without a
        GradScaler) is vetoed on the device, through the fused optimizer's ``found_inf``
        (as a GradScaler skips an overflow), so no such update is applied although the gate
        sees it a step later. The gate's other ``"diverged"`` verdicts come a step late:
        the guard's rescue then returns to a snapshot taken before them (snapshots are taken
        only when :meth:`resolve` has shown the gate every step, see
        :class:`lrpilot.train._builtin.GuardCallback`). fp16: the schedule steps at queue
        time; a step found skipped by overflow steps it back when read, so the schedule
        counts applied updates as in :meth:`train_step` (only the one step queued in
        between used the LR one step further).
        """
        t_step = time.perf_counter()
        self._launch()
        launched = self._launched
        while len(launched) > LAG:
            self._resolve_one(launched.popleft())
        if self.epoch_done:
            while launched:
                self._resolve_one(launched.popleft())
        self.state.train_time += time.perf_counter() - t_step

    def resolve(self) -> list[StepOutcome]:
        """Read every queued step now (a host sync in lagged mode; nothing to do otherwise);
        the gate sees them; their outcomes (returned) also wait for :meth:`next_outcome`."""
        if not self._launched:
            return []
        t0 = time.perf_counter()
        out = [self._resolve_one(p) for p in self._launched]
        self._launched.clear()
        self.state.train_time += time.perf_counter() - t0
        return out

    def next_outcome(self) -> StepOutcome | None:
        """The oldest read outcome not yet handed out (``None``: none)."""
        return self._ready.popleft() if self._ready else None

    @property
    def pending(self) -> int:
        """Steps queued whose values were not read yet."""
        return len(self._launched)

    def outcomes_state(self) -> list[dict]:
        """The read outcomes not yet handed out, as plain data (checkpoints keep them)."""
        return [{k: getattr(o, k) for k in StepOutcome.__dataclass_fields__} for o in self._ready]

    def load_outcomes_state(self, outcomes: list[dict]) -> None:
        self._launched.clear()
        self._ready = deque(StepOutcome(**o) for o in outcomes)

    def _launch(self) -> None:
        """Queue one step (the data position and counters move on at once)."""
        state = self.state
        step_no, next_micro, n_step, loss_t, norm_t = self._next_gradients()
        lr_used = self.optimizer.param_groups[0]["lr"]
        self.last_lr = lr_used
        check = loss_t if norm_t is None or self.scaler is not None else loss_t + norm_t
        found = self._update_on_device(check)
        if norm_t is None and found is None:  # most steps: the loss alone, no extra kernel
            values = loss_t.float().reshape(1)
        else:
            zero = self._zero
            values = torch.stack(
                [
                    loss_t.float(),
                    zero if norm_t is None else norm_t.float(),
                    zero if found is None else found.float(),
                ]
            )
        late = self._reader.push(values)
        self._launched.append(
            PendingStep(step_no, state.epoch, lr_used, n_step, norm_t is not None, late)
        )
        state.step = step_no
        state.micro = next_micro
        state.samples += n_step

    def _update_on_device(self, check: torch.Tensor) -> torch.Tensor | None:
        """The update, skipped on the device when ``check`` is not finite (with a gate) or
        the GradScaler found an overflow; returns the overflow flag (fp16) or ``None``."""
        opt, scaler = self.optimizer, self.scaler
        found = None
        if scaler is not None:  # unscale_ was called: its per-device flags are set
            found = sum(scaler._found_inf_per_device(opt).values())
        skip = found
        if self.gate is not None:
            veto = self._veto  # nan * 0 and inf * 0 are nan: 1.0; else 0.0 (two kernels)
            torch.ne(check * 0, 0, out=veto)
            skip = veto if found is None else torch.maximum(veto, found)
        if skip is None:
            opt.step()
        else:
            self._prepare_momentum()
            opt.found_inf, opt.grad_scale = skip, None  # fused kernels: skip when 1
            try:
                opt.step()
            finally:
                del opt.found_inf, opt.grad_scale
        if scaler is not None:
            scaler.update()
        self.adapter.step()
        return found

    def _prepare_momentum(self) -> None:
        """Fused SGD creates its momentum buffers *uninitialised* at the first step and
        fills them in the kernel, which a skipped step does not run: zeros instead (with
        ``dampening = 0`` the first update ``0 * momentum + grad`` is the same)."""
        opt = self.optimizer
        if not isinstance(opt, torch.optim.SGD) or not self.params:
            return
        if opt.state.get(self.params[0], {}).get("momentum_buffer") is not None:
            return  # made at the first step (and restored with the optimizer state)
        for group in opt.param_groups:
            if not group.get("momentum"):
                continue
            for p in group["params"]:
                state = self.optimizer.state[p]
                if p.grad is not None and state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )

    def _resolve_one(self, pending: PendingStep) -> StepOutcome:
        values = self._reader.read(pending.values)
        loss, norm, found = values if len(values) == 3 else (values[0], 0.0, 0.0)
        norm_value = norm if pending.has_norm else None
        verdict = OK
        if self.gate is not None:
            verdict = self.gate(loss, norm_value if self.scaler is None else None)
        skipped = verdict == DIVERGED
        state = self.state
        if not skipped:
            if found:  # fp16 overflow: no update; the schedule goes back one step
                state.skipped_steps += 1
                self.adapter.step(self.adapter.last_epoch - 1)
                skipped = True
            state.epoch_loss_sum += loss * pending.samples
            state.epoch_loss_samples += pending.samples
        outcome = StepOutcome(
            pending.step,
            pending.epoch,
            loss,
            norm_value,
            pending.lr,
            pending.samples,
            skipped,
            verdict,
        )
        self._ready.append(outcome)
        return outcome

    def _hand_out(self, calls: CallbackList, out: list[StepOutcome]) -> bool:
        """Every read outcome to ``calls``; whether one of them asked to stop."""
        stop = False
        while (outcome := self.next_outcome()) is not None:
            out.append(outcome)
            control = calls.step_end(self, outcome)
            stop = stop or (control is not None and control.stop)
        return stop


__all__ = ["LAG", "LaggedSteps", "Late", "LateReader", "PendingStep"]
