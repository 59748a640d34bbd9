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
    device = device or torch.device("cpu")
    samples = 0

    def forward_backward(with_grad: bool) -> float:
        nonlocal samples
        total = 0.0
        for _ in range(accumulate):
            inputs, targets = _split(next(batches))
            inputs, targets = _to_device(inputs, device), _to_device(targets, device)
            samples += _batch_size(inputs)
            with torch.set_grad_enabled(with_grad), autocast():
                loss = loss_fn(model(inputs), targets)
            value = float(loss.detach().float())
            total += value
            if with_grad and math.isfinite(value):
                scaled = loss / accumulate
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
        return total / accumulate

    def evaluate() -> float:
        nonlocal samples
        inputs, targets = _split(val_batch)
        inputs, targets = _to_device(inputs, device), _to_device(targets, device)
        samples += _batch_size(inputs)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast():
                return float(loss_fn(model(inputs), targets).float())
        finally:
            model.train(was_training)

    model.train()
    rec_lrs: list[float] = []
    rec_losses: list[float] = []
    skipped = 0
    applied = 0
    stop = "completed"
    initial = evaluate() if val_batch is not None else math.nan
    if rule is None:
        rule = DivergenceRule()
    if val_batch is not None:
        if not math.isfinite(initial):
            raise ConfigError(f"the loss on val_batch is {initial} before any update")
        rule.initial_loss = initial
    pending: int | None = None  # index of the LR whose effect the next forward measures
    i = 0
    while True:
        last = i >= len(lrs)
        if last and val_batch is not None:
            break
        optimizer.zero_grad(set_to_none=True)
        train_loss = forward_backward(with_grad=not last)
        if val_batch is None:
            if pending is not None:
                rec_lrs.append(lrs[pending])
                rec_losses.append(train_loss)
                if rule.update(train_loss):
                    stop = rule.reason
                    break
            elif not rec_losses and math.isnan(initial):
                initial = train_loss
                rule.initial_loss = initial if math.isfinite(initial) else None
                if not math.isfinite(train_loss):
                    stop = "non-finite loss"
                    break
        pending = None
        if last:
            break
        if not math.isfinite(train_loss):
            stop = "non-finite loss"
            break
        set_lr(optimizer, lrs[i], multipliers)
        if scaler is not None:
            old_scale = float(scaler.get_scale())
            scaler.step(optimizer)
            scaler.update()
            if float(scaler.get_scale()) < old_scale:
                skipped += 1
                if skipped > max_skipped:
                    stop = "too many skipped steps"
                    break
                continue  # the same LR is tried again; it has not been tested yet
        else:
            optimizer.step()
        applied += 1
        if val_batch is not None:
            rec_lrs.append(lrs[i])
            loss = evaluate()
            rec_losses.append(loss)
            if rule.update(loss):
                stop = rule.reason
                break
        else:
            pending = i
        i += 1
    optimizer.zero_grad(set_to_none=True)
    return SweepRecord(
        lrs=rec_lrs,
        losses=rec_losses,
        initial_loss=initial,
        samples=samples,
        optimizer_steps=applied,
        skipped_steps=skipped,
        stop_reason=stop,
    )
