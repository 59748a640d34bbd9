"""``find_lr``: the LR range test that restores everything and says how sure it is."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from lrpilot.errors import ConfigError, check_int, check_range
from lrpilot.finder.decision import analyze_curve
from lrpilot.finder.policy import (
    family_exponent,
    schedule_fraction,
    suggest_peak_lr,
    suggestion_interval,
)
from lrpilot.finder.protocol import PROBE_BATCH_DIVISOR
from lrpilot.finder.result import FinderResult, confidence_label
from lrpilot.finder.snapshot import TrainingSnapshot
from lrpilot.finder.sweep import SWEEP_MODES, DivergenceRule, cycle, run_sweep, sweep_lrs
from lrpilot.optim import family_classes


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """``torch.Generator`` objects a DataLoader (or its samplers) draws from."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


#: torch optimizer classes (and their subclasses) -> optimizer family of the suggestion rule
#: (``lrpilot.finder.policy.OPTIMIZER_FAMILIES``): the optimizer registry's classes
#: (:mod:`lrpilot.optim`) and NAdam, RAdam, Adamax.
OPTIMIZER_CLASSES: dict[type[torch.optim.Optimizer], str] = family_classes()


def optimizer_family_of(optimizer: torch.optim.Optimizer) -> str:
    """The suggestion rule's family of ``optimizer`` (an instance of a class in
    :data:`OPTIMIZER_CLASSES` or a subclass); others raise, naming the class and what to pass.

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.zeros(1))]
    >>> optimizer_family_of(torch.optim.AdamW(p)), optimizer_family_of(torch.optim.SGD(p, lr=0.1))
    ('adam', 'sgd')
    """
    for cls, family in OPTIMIZER_CLASSES.items():
        if isinstance(optimizer, cls):
            return family
    names = ", ".join(cls.__name__ for cls in OPTIMIZER_CLASSES)
    raise ConfigError(
        f"no calibrated finder rule for optimizer {type(optimizer).__name__}; supported: "
        f"{names}; pass optimizer_family='sgd' or 'adam' to use one of their rules"
    )


def _multipliers(optimizer: torch.optim.Optimizer) -> list[float]:
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    if lrs[0] > 0:
        return [lr / lrs[0] for lr in lrs]
    if all(lr == 0 for lr in lrs):
        return [1.0] * len(lrs)
    raise ConfigError(
        "the first parameter group's lr is 0 while others are not: the per-group LR "
        f"ratios are undefined (group lrs: {lrs})"
    )


def find_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    train_loader: Iterable,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    mode: str = "exp",
    val_batch: Any = None,
    accumulate: int = 1,
    amp: bool = False,
    repeats: int = 1,
    schedule: str = "one_cycle",
    optimizer_family: str | None = None,
    batch_ratio: float = PROBE_BATCH_DIVISOR,
    scaler: Any = None,
    divergence_factor: float = 2.0,
) -> FinderResult:
    """Run an LR range test, restore everything, and recommend a peak LR.

    The first parameter group's LR is swept from ``start_lr`` to ``end_lr`` over ``steps``
    optimizer steps (``mode="exp"``: geometric, ``"linear"``: arithmetic); other groups keep
    their ratio to the first. Each step uses ``accumulate`` micro-batches from
    ``train_loader`` (cycled if it runs out). The loss recorded for an LR is the loss after
    that step (next training batch, or ``val_batch`` in eval mode when given); the sweep
    stops at a non-finite loss or a robust divergence (``lrpilot.finder.sweep``).
    ``repeats`` runs the whole sweep again from the same starting state on later batches;
    the curves are pooled.

    The decision (``lrpilot.finder.decision``) finds ``lr_unstable``, where training
    becomes unstable, and the suggestion is the recommended PEAK learning rate for the
    intended ``schedule`` and the optimizer::

        suggestion = f(schedule) * batch_ratio ** kappa(optimizer_family) * lr_unstable

    ``batch_ratio`` is the training batch divided by the batch of ``train_loader`` (the probe
    batch); ``kappa`` is 1 for the ``"sgd"`` family (linear batch scaling) and 1/2 for
    ``"adam"`` (square-root scaling). ``optimizer_family`` defaults to the family of
    ``optimizer``'s class (:data:`OPTIMIZER_CLASSES`; other optimizers must name one).
    Schedules are those of ``lrpilot.schedules.from_config``: ``"one_cycle"`` (``{"name":
    "one_cycle", "max_lr": peak}``, momentum cycled) and ``"cosine"`` (``{"name": "cosine",
    "lr": peak, "warmup": {"epochs": 1}}``). ``result.suggest(other_schedule)`` gives it for
    another schedule without a new sweep. ``f`` was calibrated (``bench/finder_quality.py``)
    with the protocol of ``lrpilot.finder.protocol.probe_plan``: a loader with batch =
    training batch // 8 (``batch_ratio=8``, the default), ``start_lr=1e-5``, ``end_lr=10``
    and half an epoch of samples. Other sweeps and ratios measure ``lr_unstable`` the same
    way, but the calibration is only checked for that protocol.

    ``amp=True`` runs the forward pass under autocast (bfloat16 on CPU, float16 on CUDA
    with a ``torch.amp.GradScaler``, the given ``scaler`` or a fresh one). A step the
    scaler skips (inf/NaN gradients) is counted in ``skipped_steps`` and its LR is tried
    again; it is not counted as tested.

    Model parameters, buffers and gradients, train/eval modes, the optimizer state
    (including every group's LR), the scaler and all RNG states (Python, NumPy, torch CPU
    and CUDA, the loader's generators) are snapshotted to CPU memory first and restored in a
    ``finally`` block, also when the sweep raises.

    Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks" (2017),
    for the range test; the instability-point rule is lrpilot's (see the decision module).

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(256, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> loader = DataLoader(TensorDataset(x, y[:, None]), batch_size=32, shuffle=True)
    >>> before = model.weight.detach().clone()
    >>> res = find_lr(model, opt, torch.nn.functional.mse_loss, loader, start_lr=1e-4,
    ...               end_lr=10, steps=40)
    >>> res.verdict, 0.1 < res.lr_unstable < 2.0, torch.equal(model.weight, before)
    ('ok', True, True)
    >>> opt.param_groups[0]["lr"]
    0.01
    """
    start_lr, end_lr, steps = _check_sweep(start_lr, end_lr, steps, mode, amp)
    accumulate = check_int("accumulate", accumulate, low=1)
    repeats = check_int("repeats", repeats, low=1)
    divergence_factor = check_range(
        "divergence_factor", divergence_factor, low=0, low_inclusive=False
    )
    schedule_fraction(schedule)  # validates the name before any work
    optimizer_family = _family(optimizer, optimizer_family)
    batch_ratio = check_range("batch_ratio", batch_ratio, low=0, low_inclusive=False)
    multipliers = _multipliers(optimizer)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    autocast, scaler = _precision(device, amp, scaler)
    lrs = sweep_lrs(start_lr, end_lr, steps, mode)
    snapshot = TrainingSnapshot.capture(model, optimizer, scaler, _loader_generators(train_loader))
    records = []
    try:
        batches = cycle(train_loader)
        for r in range(repeats):
            if r:
                snapshot.restore(rng=False)  # same start, but new batches and dropout masks
            records.append(
                run_sweep(
                    model,
                    optimizer,
                    loss_fn,
                    batches,
                    lrs,
                    multipliers,
                    accumulate=accumulate,
                    autocast=autocast,
                    scaler=scaler,
                    val_batch=val_batch,
                    rule=DivergenceRule(factor=divergence_factor),
                    device=device,
                )
            )
    finally:
        snapshot.restore()
    return combine_records(records, schedule, optimizer_family, batch_ratio)


def _check_sweep(
    start_lr: float, end_lr: float, steps: int, mode: str, amp: bool
) -> tuple[float, float, int]:
    """The sweep's range and length, checked: ``(start_lr, end_lr, steps)``."""
    start_lr = check_range("start_lr", start_lr, low=0, low_inclusive=False)
    end_lr = check_range("end_lr", end_lr, low=0, low_inclusive=False)
    if end_lr <= start_lr:
        raise ConfigError(f"end_lr={end_lr!r} must be greater than start_lr={start_lr!r}")
    steps = check_int("steps", steps, low=5)
    if mode not in SWEEP_MODES:
        raise ConfigError(f"mode={mode!r} is not one of {', '.join(SWEEP_MODES)}")
    if not isinstance(amp, bool):
        raise ConfigError(f"amp must be True or False, got {amp!r}")
    return start_lr, end_lr, steps


def _family(optimizer: object, optimizer_family: str | None) -> str:
    """The suggestion rule's optimizer family: the one given, else ``optimizer``'s."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if optimizer_family is None:
        optimizer_family = optimizer_family_of(optimizer)
    family_exponent(optimizer_family)
    return optimizer_family


def _precision(device: torch.device, amp: bool, scaler: Any) -> tuple[Callable[[], Any], Any]:
    """``(autocast context factory, scaler)``: bfloat16 autocast on CPU, float16 with a
    GradScaler (the given one or a fresh one) on CUDA, nothing without ``amp``."""
    if not amp:
        return nullcontext, scaler
    if device.type == "cuda":
        if scaler is None:
            scaler = torch.amp.GradScaler("cuda")
        return partial(torch.autocast, "cuda", dtype=torch.float16), scaler
    return partial(torch.autocast, device.type, dtype=torch.bfloat16), scaler


def _repeat_intervals(records: list, analysis: Any) -> tuple[list[float | None], Any]:
    """Each repeat's own ``lr_unstable`` (``None`` unless its verdict is ok), and the pooled
    interval widened to contain them."""
    per_repeat: list[float | None] = []
    if len(records) > 1:
        for rec in records:
            a = analyze_curve(rec.lrs, rec.losses, rec.initial_loss)
            per_repeat.append(a.lr_unstable if a.verdict == "ok" else None)
    else:
        per_repeat.append(analysis.lr_unstable if analysis.verdict == "ok" else None)
    interval = analysis.interval
    if analysis.verdict == "ok" and interval is not None:
        known = [v for v in per_repeat if v is not None]
        interval = (min([interval[0], *known]), max([interval[1], *known]))
    return per_repeat, interval


def combine_records(
    records: list,
    schedule: str,
    optimizer_family: str,
    batch_ratio: float = PROBE_BATCH_DIVISOR,
) -> FinderResult:
    """Pool the repeats' curves and decide (a pure function of the records)."""
    pairs = sorted(
        ((lr, loss) for rec in records for lr, loss in zip(rec.lrs, rec.losses, strict=True)),
        key=lambda p: p[0],
    )
    lrs = [p[0] for p in pairs]
    losses = [p[1] for p in pairs]
    initials = [rec.initial_loss for rec in records if math.isfinite(rec.initial_loss)]
    initial = float(np.mean(initials)) if initials else math.nan
    analysis = analyze_curve(lrs, losses, initial if initials else None)
    per_repeat, interval = _repeat_intervals(records, analysis)
    ok = analysis.verdict == "ok"
    suggest_peak_lr(None, schedule, optimizer_family, batch_ratio)  # validates the inputs
    suggestion = (
        suggest_peak_lr(analysis.lr_unstable, schedule, optimizer_family, batch_ratio)
        if ok
        else None
    )
    sugg_interval = (
        suggestion_interval(interval, schedule, optimizer_family, batch_ratio) if ok else None
    )
    return FinderResult(
        lrs=lrs,
        losses=losses,
        smoothed=list(analysis.smoothed),
        slope=list(analysis.slope),
        initial_loss=initial,
        verdict=analysis.verdict,
        message=analysis.message,
        lr_unstable=analysis.lr_unstable,
        unstable_interval=interval,
        schedule=schedule,
        suggestion=suggestion,
        suggestion_interval=sugg_interval,
        confidence=confidence_label(sugg_interval) if ok else "none",
        optimizer_family=optimizer_family,
        batch_ratio=float(batch_ratio),
        lr_min_loss=analysis.lr_min_loss,
        noise=analysis.noise,
        loss_scale=analysis.scale,
        repeat_lr_unstable=per_repeat,
        samples=sum(rec.samples for rec in records),
        optimizer_steps=sum(rec.optimizer_steps for rec in records),
        skipped_steps=sum(rec.skipped_steps for rec in records),
        stop_reasons=[rec.stop_reason for rec in records],
    )
