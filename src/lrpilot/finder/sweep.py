"""The sweep: raise the learning rate step by step and record the raw loss.

Learning rates (``n = steps``, ``i = 0 .. n-1``):

* ``"exp"``:    ``lr_i = start * (end / start) ** (i / (n - 1))``
* ``"linear"``: ``lr_i = start + (end - start) * i / (n - 1)``

Every tested LR gets one optimizer step made of ``accumulate`` micro-batches. The loss
recorded for ``lr_i`` measures the *effect* of that step: the training loss of the next
batch, before the next update (one extra forward-only pass follows the last step), or the
loss on ``val_batch`` after the update when one is given. The loss before any update is
kept as ``initial_loss``. No smoothing happens here: the decision module works on the raw
record afterwards.

Stopping (:class:`DivergenceRule`): at the first non-finite loss, or when the median of the
last three losses ``med3`` exceeds ``L0 + factor * max(L0 - best, 10 * noise)``, where
``L0`` is the loss before the sweep, ``best`` the smallest ``med3`` so far, ``noise`` the
median absolute difference between consecutive losses and ``factor = 2``: the loss has
climbed above its start by twice what it had gained (or, if it gained nothing, by far more
than its noise). It compares differences only, so it works for negative losses, and the
median of three ignores a single spike. (``noise`` uses the losses up to the best window
only, so a climb does not inflate it.) The stop only saves compute: the decision is made
afterwards on the whole recorded curve (``lrpilot.finder.decision``).

>>> [round(lr, 6) for lr in sweep_lrs(1e-3, 1.0, 4, "exp")]
[0.001, 0.01, 0.1, 1.0]
>>> rule = DivergenceRule(initial_loss=-1.0)
>>> calm = [-1.2, -1.4, -1.6, 50.0, -1.8, -2.0, -2.1, -2.0, -2.1]  # one spike: ignored
>>> any(rule.update(x) for x in calm)
False
>>> [rule.update(x) for x in [4.0, 6.0]]  # level: -1 + 2 * max(1.1, 10 * 0.2) = 3
[False, True]
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrpilot.errors import ConfigError

SWEEP_MODES = ("exp", "linear")


def sweep_lrs(start: float, end: float, steps: int, mode: str) -> list[float]:
    """The learning rates tested, in order (see the module docstring)."""
    if mode not in SWEEP_MODES:
        raise ConfigError(f"mode={mode!r} is not one of {', '.join(SWEEP_MODES)}")
    if steps == 1:
        return [float(start)]
    out = []
    for i in range(steps):
        frac = i / (steps - 1)
        if mode == "exp":
            out.append(float(start * (end / start) ** frac))
        else:
            out.append(float(start + (end - start) * frac))
    out[-1] = float(end)
    return out


@dataclass
class DivergenceRule:
    """Online stop rule; ``update(loss)`` returns True when the sweep should stop.

    ``reason`` says why (``"non-finite loss"`` or ``"diverged"``).
    """

    initial_loss: float | None = None
    factor: float = 2.0
    noise_margin: float = 10.0
    window: int = 3
    reason: str = ""
    _losses: list[float] = field(default_factory=list)
    _best: float = math.inf
    _best_at: int = 0

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            self.reason = "non-finite loss"
            return True
        self._losses.append(loss)
        if len(self._losses) < self.window:
            return False
        med = statistics.median(self._losses[-self.window :])
        if med <= self._best:
            self._best = med
            self._best_at = len(self._losses)
        ref = self.initial_loss
        if ref is None or not math.isfinite(ref):
            ref = statistics.median(self._losses[: self.window])
        calm = self._losses[: self._best_at]  # the noise is measured before any climb
        diffs = [abs(b - a) for a, b in itertools.pairwise(calm)]
        noise = statistics.median(diffs) if diffs else 0.0
        level = ref + self.factor * max(ref - self._best, self.noise_margin * noise)
        if med > level:
            self.reason = "diverged"
            return True
        return False


@dataclass
class SweepRecord:
    """Raw result of one sweep."""

    lrs: list[float]
    losses: list[float]
    initial_loss: float
    samples: int  # samples passed through the model (forward passes, including evaluation)
    optimizer_steps: int  # steps actually applied (tested LRs)
    skipped_steps: int  # steps a GradScaler skipped (inf/NaN gradients); not tested LRs
    stop_reason: str  # "completed", "non-finite loss", "diverged", "too many skipped steps"


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ConfigError(
        f"train_loader must yield (inputs, targets) pairs, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
    )


def cycle(loader: Iterable) -> Iterator:
    """Batches of ``loader`` forever (a new pass starts when one is exhausted)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("train_loader yielded no batches")


def set_lr(optimizer: torch.optim.Optimizer, lr: float, multipliers: list[float]) -> None:
    """Set group ``g``'s LR to ``lr * multipliers[g]`` (tensor LRs are filled in place)."""
    for group, mult in zip(optimizer.param_groups, multipliers, strict=True):
        value = lr * mult
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


@dataclass
class _Sweep:
    """One sweep's objects and its record so far (:func:`run_sweep`)."""

    model: nn.Module
    loss_fn: Callable[[Any, Any], torch.Tensor]
    batches: Iterator
    accumulate: int
    autocast: Callable[[], Any]
    scaler: Any
    val_batch: Any
    rule: DivergenceRule
    device: torch.device
    samples: int = 0
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    initial: float = math.nan
    skipped: int = 0
    applied: int = 0
    stop: str = "completed"

    def _inputs(self, batch: Any) -> tuple[Any, Any]:
        inputs, targets = _split(batch)
        inputs, targets = _to_device(inputs, self.device), _to_device(targets, self.device)
        self.samples += _batch_size(inputs)
        return inputs, targets

    def forward_backward(self, with_grad: bool) -> float:
        """Mean training loss of the next ``accumulate`` batches (gradients when asked)."""
        total = 0.0
        for _ in range(self.accumulate):
            inputs, targets = self._inputs(next(self.batches))
            with torch.set_grad_enabled(with_grad), self.autocast():
                loss = self.loss_fn(self.model(inputs), targets)
            value = float(loss.detach().float())
            total += value
            if with_grad and math.isfinite(value):
                scaled = loss / self.accumulate
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return total / self.accumulate

    def evaluate(self) -> float:
        """The loss on ``val_batch`` in eval mode."""
        inputs, targets = self._inputs(self.val_batch)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                return float(self.loss_fn(self.model(inputs), targets).float())
        finally:
            self.model.train(was_training)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """One optimizer step; ``False`` when the GradScaler skipped it."""
        if self.scaler is None:
            optimizer.step()
            return True
        old_scale = float(self.scaler.get_scale())
        self.scaler.step(optimizer)
        self.scaler.update()
        return float(self.scaler.get_scale()) >= old_scale

    def record(self, lr: float, loss: float) -> bool:
        """Record the loss measured for ``lr``; ``True`` when the rule stops the sweep."""
        self.lrs.append(lr)
        self.losses.append(loss)
        if self.rule.update(loss):
            self.stop = self.rule.reason
            return True
        return False

    def record_train(self, train_loss: float, tested: float | None) -> bool:
        """Without ``val_batch``: the training loss measures the LR tested before it
        (``tested``), or is the initial loss; ``True`` when the sweep stops."""
        if tested is not None:
            return self.record(tested, train_loss)
        if not self.losses and math.isnan(self.initial):
            self.initial = train_loss
            self.rule.initial_loss = train_loss if math.isfinite(train_loss) else None
            if not math.isfinite(train_loss):
                self.stop = "non-finite loss"
                return True
        return False

    def run(
        self,
        optimizer: torch.optim.Optimizer,
        lrs: list[float],
        multipliers: list[float],
        max_skipped: int,
    ) -> None:
        """Test every LR in turn until the list ends or the sweep stops."""
        pending: int | None = None  # index of the LR whose effect the next forward measures
        i = 0
        while True:
            last = i >= len(lrs)
            if last and self.val_batch is not None:
                break
            optimizer.zero_grad(set_to_none=True)
            train_loss = self.forward_backward(with_grad=not last)
            tested = lrs[pending] if pending is not None else None
            if self.val_batch is None and self.record_train(train_loss, tested):
                break
            pending = None
            if last:
                break
            if not math.isfinite(train_loss):
                self.stop = "non-finite loss"
                break
            set_lr(optimizer, lrs[i], multipliers)
            if not self.step(optimizer):
                self.skipped += 1
                if self.skipped > max_skipped:
                    self.stop = "too many skipped steps"
                    break
                continue  # the same LR is tried again; it has not been tested yet
            self.applied += 1
            if self.val_batch is None:
                pending = i
            elif self.record(lrs[i], self.evaluate()):
                break
            i += 1


def run_sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batches: Iterator,
    lrs: list[float],
    multipliers: list[float],
    *,
    accumulate: int = 1,
    autocast: Callable[[], Any] = nullcontext,
    scaler: Any = None,
    val_batch: Any = None,
    max_skipped: int = 50,
    rule: DivergenceRule | None = None,
    device: torch.device | None = None,
) -> SweepRecord:
    """Run one sweep from the current state, in train mode (the caller snapshots and
    restores)."""
    sweep = _Sweep(
        model,
        loss_fn,
        batches,
        accumulate,
        autocast,
        scaler,
        val_batch,
        rule if rule is not None else DivergenceRule(),
        device or torch.device("cpu"),
    )
    model.train()
    if val_batch is not None:
        sweep.initial = sweep.evaluate()
        if not math.isfinite(sweep.initial):
            raise ConfigError(f"the loss on val_batch is {sweep.initial} before any update")
        sweep.rule.initial_loss = sweep.initial
    sweep.run(optimizer, lrs, multipliers, max_skipped)
    optimizer.zero_grad(set_to_none=True)
    return SweepRecord(
        lrs=sweep.lrs,
        losses=sweep.losses,
        initial_loss=sweep.initial,
        samples=sweep.samples,
        optimizer_steps=sweep.applied,
        skipped_steps=sweep.skipped,
        stop_reason=sweep.stop,
    )
