"""Accumulation plan: the memory batch and the optimization batch kept apart.

Given the per-device batch that fits in memory (``max_per_device``), the nominal
(effective) batch the recipe was tuned for and the number of processes, the plan picks

* ``accumulate = ceil(nominal / (max_per_device * processes))`` micro-batches per optimizer
  step (it tries a few larger values first to hit the nominal batch exactly),
* ``per_device = ceil(nominal / (processes * accumulate))`` samples per micro-batch,
* ``effective = per_device * processes * accumulate`` samples per optimizer step,

and the learning rate for ``effective`` under a named scaling rule from ``base_lr`` tuned at
``base_batch`` (default: the nominal batch). A micro-batch below 4 samples with BatchNorm
layers gets a warning: the batch statistics are unreliable; SyncBatchNorm (CUDA, several
processes) normalises over ``per_device * processes`` samples, GroupNorm does not depend on
the batch at all.

Reference: Ultralytics reaches a nominal batch of 64 with ``accumulate = round(64 / batch)``;
Goyal et al. (2017) for the linear rule.

>>> p = plan_accumulation(24, 64, lr=0.1)
>>> p.per_device, p.accumulate, p.effective
(16, 4, 64)
>>> p.lr
0.1
>>> plan_accumulation(8, 256, processes=2, lr=0.1, base_batch=64).lr
0.4
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lrpilot._distributed import has_batchnorm as has_batchnorm  # its home; re-exported
from lrpilot.batch.scaling import get_rule, scale_lr
from lrpilot.errors import check_int, check_range

MIN_BATCHNORM_BATCH = 4


@dataclass(frozen=True)
class AccumulationPlan:
    """What to run: ``per_device`` samples per micro-batch on each of ``processes``,
    ``accumulate`` micro-batches per optimizer step, ``effective`` samples per step, at
    learning rate ``lr`` (``None`` when no base LR was given). ``reasons`` says why in words;
    ``warnings`` lists what needs attention."""

    per_device: int
    processes: int
    accumulate: int
    effective: int
    nominal: int
    max_per_device: int
    rule: str
    base_batch: int
    base_lr: float | None
    lr: float | None
    reasons: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["warnings"] = list(self.warnings)
        return d


def _choose_accumulate(nominal: int, max_per_device: int, processes: int) -> int:
    a_min = max(1, math.ceil(nominal / (max_per_device * processes)))
    # Prefer an exact split when one exists within twice the minimum accumulation.
    for a in range(a_min, 2 * a_min + 1):
        if nominal % (processes * a) == 0 and nominal // (processes * a) <= max_per_device:
            return a
    return a_min


def _split_nominal(
    nominal: int, max_per_device: int, processes: int, warnings: list[str]
) -> tuple[int, int]:
    """``(per_device, accumulate)`` for the nominal batch (module doc)."""
    if nominal < processes:
        warnings.append(
            f"the nominal batch {nominal} is smaller than the number of processes {processes}; "
            f"each process needs at least one sample, so the effective batch is {processes}"
        )
        return 1, 1
    accumulate = _choose_accumulate(nominal, max_per_device, processes)
    return math.ceil(nominal / (processes * accumulate)), accumulate


def _lr_reasons(
    lr: float, base_batch: int, effective: int, rule: str, conservative: float
) -> tuple[float, list[str]]:
    """The LR for ``effective`` under the scaling rule, and why in words."""
    scaled = scale_lr(lr, base_batch, effective, rule=rule, conservative=conservative)
    if effective == base_batch:
        return scaled, [f"learning rate {lr:g} kept: the effective batch equals the base batch"]
    trimmed = f", trimmed by {conservative:.0%}" if conservative and effective > base_batch else ""
    reasons = [
        f"learning rate {lr:g} at batch {base_batch} becomes {scaled:.6g} at batch "
        f"{effective} under the {rule!r} rule" + trimmed
    ]
    if scaled > lr:
        reasons.append(
            "a raised learning rate wants a warmup (Goyal et al. used 5 epochs ramping "
            "up to it); lrpilot.batch.scale_warmup keeps the warmup's samples fixed"
        )
    return scaled, reasons


def _batchnorm_warning(per_device: int, processes: int, device: str) -> str:
    """What to do about BatchNorm on a micro-batch below ``MIN_BATCHNORM_BATCH``."""
    across = per_device * processes
    if device.startswith("cuda") and processes > 1 and across >= MIN_BATCHNORM_BATCH:
        advice = (
            f"convert it with torch.nn.SyncBatchNorm.convert_sync_batchnorm so the "
            f"statistics span {across} samples across processes, or use GroupNorm"
        )
    elif device.startswith("cuda") and processes > 1:
        advice = (
            f"even SyncBatchNorm would see only {across} samples; replace BatchNorm with GroupNorm"
        )
    else:
        advice = (
            "SyncBatchNorm needs CUDA and several processes (it does not help "
            "accumulation); replace BatchNorm with GroupNorm"
        )
    return (
        f"{per_device} samples per micro-batch with BatchNorm (below {MIN_BATCHNORM_BATCH}): "
        f"its batch statistics are unreliable; {advice}"
    )


def plan_accumulation(
    max_per_device: int,
    nominal: int,
    processes: int = 1,
    *,
    lr: float | None = None,
    base_batch: int | None = None,
    rule: str = "linear",
    conservative: float = 0.0,
    batchnorm: bool = False,
    device: str = "cpu",
) -> AccumulationPlan:
    """Plan per-device batch, accumulation and learning rate (see the module docstring).

    ``batchnorm``: whether the model has BatchNorm layers (see :func:`has_batchnorm`);
    ``device``: ``"cpu"`` or ``"cuda"`` (decides whether SyncBatchNorm can be advised).

    >>> p = plan_accumulation(2, 8, batchnorm=True)
    >>> p.per_device, p.accumulate, len(p.warnings)
    (2, 4, 1)
    """
    max_per_device = check_int("per-device batch", max_per_device, low=1)
    nominal = check_int("nominal batch", nominal, low=1)
    processes = check_int("processes", processes, low=1)
    get_rule(rule)  # unknown names raise listing the valid ones
    if lr is not None:
        check_range("lr", lr, low=0, low_inclusive=False)
    base_batch = nominal if base_batch is None else check_int("base_batch", base_batch, low=1)
    warnings: list[str] = []
    per_device, accumulate = _split_nominal(nominal, max_per_device, processes, warnings)
    effective = per_device * processes * accumulate
    if accumulate == 1:
        reasons = [
            f"the nominal batch {nominal} fits without accumulation: {per_device} per device "
            f"x {processes} process(es) (at most {max_per_device} per device fit in memory)"
        ]
    else:
        reasons = [
            f"at most {max_per_device} samples per device fit in memory, so the nominal batch "
            f"{nominal} is reached by accumulating {accumulate} micro-batches of {per_device} "
            f"on {processes} process(es)"
        ]
    if effective != nominal:
        warnings.append(
            f"the effective batch is {effective}, not the nominal {nominal} "
            f"({per_device} x {processes} x {accumulate} cannot equal it exactly)"
        )
    scaled = None
    if lr is not None:
        scaled, lr_reasons = _lr_reasons(lr, base_batch, effective, rule, conservative)
        reasons += lr_reasons
    if batchnorm and per_device < MIN_BATCHNORM_BATCH:
        warnings.append(_batchnorm_warning(per_device, processes, device))
    return AccumulationPlan(
        per_device=per_device,
        processes=processes,
        accumulate=accumulate,
        effective=effective,
        nominal=nominal,
        max_per_device=max_per_device,
        rule=rule,
        base_batch=base_batch,
        base_lr=None if lr is None else float(lr),
        lr=scaled,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
    )
