"""The finder's calibrated policy: from an instability point to a peak LR and a schedule.

The curve analysis (:mod:`lrpilot.finder.decision`) measures ``lr_unstable``, where training
becomes unstable, at the probe batch ``b``. The suggestion is the recommended PEAK LR for
the intended schedule and optimizer at the training batch ``B``::

    suggestion = f(schedule) * r ** kappa(family) * lr_unstable,      r = B / b

* ``r ** kappa`` carries the instability point over to the training batch with the
  optimizer family's batch-size scaling rule (:data:`OPTIMIZER_FAMILIES`, the exponents of
  the optimizer registry :mod:`lrpilot.optim`): linear for SGD (``kappa = 1``; P. Goyal et
  al., "Accurate, Large Minibatch SGD", 2017) and square root for the Adam family
  (``kappa = 1/2``; S. Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient
  Algorithms", NeurIPS 2022). ``lrpilot find`` probes with ``b = B // 8``
  (:data:`~lrpilot.finder.protocol.PROBE_BATCH_DIVISOR`), so ``r = 8``.
* ``f(schedule)`` (:data:`SCHEDULE_FRACTIONS`) is one calibrated constant per schedule,
  shared by all optimizers and tasks, fitted by ``bench/finder_quality.py --calibrate`` with
  that protocol on digits-cnn and mnist1d-cnn (SGD, momentum 0.9) and mnist1d-mlp (AdamW):
  the value minimising the worst miss of the targets (accuracy within 0.5 point of the
  grid-best, LR within 1.5x of it). Results: ``bench/results/finder_quality_table.txt``;
  the history of the fit: ``bench/results/finder_decision_history.md``.
* The interval is ``(q_lo * lo, q_hi * hi) * r ** kappa`` where ``(lo, hi)`` is the
  interval of ``lr_unstable`` and ``(q_lo, q_hi)`` = :data:`CALIBRATION_RATIOS`, the
  smallest and largest best-LR / ``(r ** kappa * lr_unstable)`` measured over every
  benchmark task/optimizer pair: how far a task may sit from the fitted fraction.
* :func:`schedule_config` turns a suggestion into the schedule config it was calibrated
  for, in the form ``lrpilot fit`` and :func:`lrpilot.schedules.from_config` take.

>>> peak = suggest_peak_lr(0.05, "cosine", "sgd")  # 0.136 * 8 * 0.05
>>> schedule_config("cosine", round(peak, 6))
{'name': 'cosine', 'lr': 0.0544, 'warmup': {'epochs': 1}}
"""

from __future__ import annotations

import math
from typing import Any

from lrpilot.errors import ConfigError, check_range
from lrpilot.finder.protocol import PROBE_BATCH_DIVISOR
from lrpilot.optim import FAMILY_EXPONENTS

__all__ = [
    "CALIBRATION_RATIOS",
    "OPTIMIZER_FAMILIES",
    "SCHEDULE_FRACTIONS",
    "family_exponent",
    "schedule_config",
    "schedule_fraction",
    "suggest_peak_lr",
    "suggestion_interval",
]

#: Optimizer family -> batch-size scaling exponent ``kappa`` (the optimizer registry's):
#: ``"sgd"`` (SGD, with or without momentum) 1, ``"adam"`` (Adam, AdamW, NAdam, RAdam,
#: Adamax) 1/2.
OPTIMIZER_FAMILIES: dict[str, float] = dict(FAMILY_EXPONENTS)

#: ``f(schedule)``: the suggested peak LR as a fraction of ``r ** kappa * lr_unstable``,
#: per intended schedule (the shapes of :func:`schedule_config`: ``"one_cycle"`` = PyTorch
#: OneCycleLR with its momentum / beta1 cycle 0.95 -> 0.85 -> 0.95, 30% warm-up from
#: peak/25, cosine down to peak/25e4; ``"cosine"`` = linear warm-up from 0 over the first
#: epoch, then cosine to 0, momentum fixed). The one-cycle value is higher because momentum
#: is lowest (0.85) at the peak.
SCHEDULE_FRACTIONS: dict[str, float] = {
    "one_cycle": 0.207,
    "cosine": 0.136,
}

#: Per schedule, the smallest and largest best LR / ``(r ** kappa * median lr_unstable)``
#: over every benchmark task/optimizer pair with a usable curve (``bench/finder_quality.py
#: --holdout``).
CALIBRATION_RATIOS: dict[str, tuple[float, float]] = {
    "one_cycle": (0.069, 0.41),
    "cosine": (0.010, 0.35),
}


def family_exponent(family: str) -> float:
    """``kappa`` of an optimizer family; unknown names raise listing the valid ones.

    >>> family_exponent("adam"), family_exponent("sgd")
    (0.5, 1.0)
    """
    if family not in OPTIMIZER_FAMILIES:
        raise ConfigError(
            f"optimizer family {family!r} has no calibrated finder rule; valid: "
            + ", ".join(sorted(OPTIMIZER_FAMILIES))
        )
    return OPTIMIZER_FAMILIES[family]


def _transfer(family: str, batch_ratio: float) -> float:
    """``r ** kappa``: the instability point carried from the probe to the training batch."""
    kappa = family_exponent(family)
    ratio = check_range("batch_ratio", batch_ratio, low=0, low_inclusive=False)
    return float(float(ratio) ** kappa)


def schedule_fraction(schedule: str) -> float:
    """The calibrated fraction for ``schedule``; unknown names raise listing the valid ones."""
    if schedule not in SCHEDULE_FRACTIONS:
        raise ConfigError(
            f"schedule={schedule!r} has no calibrated finder rule; valid: "
            + ", ".join(sorted(SCHEDULE_FRACTIONS))
        )
    return SCHEDULE_FRACTIONS[schedule]


def suggest_peak_lr(
    lr_unstable: float | None,
    schedule: str,
    family: str,
    batch_ratio: float = PROBE_BATCH_DIVISOR,
) -> float | None:
    """``f(schedule) * batch_ratio ** kappa(family) * lr_unstable`` (module doc); ``None``
    when there is no instability point. ``batch_ratio`` = training batch / probe batch (8
    in the ``lrpilot find`` protocol the fractions were calibrated with).

    >>> suggest_peak_lr(0.1, "one_cycle", "sgd") == SCHEDULE_FRACTIONS["one_cycle"] * 8 * 0.1
    True
    >>> sgd = suggest_peak_lr(0.1, "cosine", "sgd")
    >>> round(sgd / suggest_peak_lr(0.1, "cosine", "adam"), 4)  # sqrt(8)
    2.8284
    >>> suggest_peak_lr(0.1, "cosine", "sgd", batch_ratio=1) == suggest_peak_lr(
    ...     0.1, "cosine", "adam", batch_ratio=1)
    True
    """
    fraction = schedule_fraction(schedule)
    transfer = _transfer(family, batch_ratio)
    if lr_unstable is None:
        return None
    return fraction * transfer * lr_unstable


def suggestion_interval(
    unstable_interval: tuple[float, float] | None,
    schedule: str,
    family: str,
    batch_ratio: float = PROBE_BATCH_DIVISOR,
) -> tuple[float, float] | None:
    """``(q_lo * lo, q_hi * hi) * batch_ratio ** kappa``: the measurement interval of
    ``lr_unstable`` times the spread of the calibration ratios (module doc).

    >>> lo, hi = suggestion_interval((0.1, 0.2), "one_cycle", "sgd", batch_ratio=1)
    >>> lo == CALIBRATION_RATIOS["one_cycle"][0] * 0.1, hi == CALIBRATION_RATIOS["one_cycle"][1] * 0.2
    (True, True)
    """
    schedule_fraction(schedule)
    transfer = _transfer(family, batch_ratio)
    if unstable_interval is None:
        return None
    q_lo, q_hi = CALIBRATION_RATIOS[schedule]
    return (q_lo * transfer * unstable_interval[0], q_hi * transfer * unstable_interval[1])


def schedule_config(schedule: str, peak: float, *, warmup_epochs: float = 1) -> dict[str, Any]:
    """The schedule config (``lrpilot fit``'s ``schedule:`` mapping, the input of
    :func:`lrpilot.schedules.from_config`) that a suggested ``peak`` LR was calibrated for:

    * ``"one_cycle"``: ``{"name": "one_cycle", "max_lr": peak}`` (PyTorch OneCycleLR's
      shape, momentum / beta1 cycled 0.95 -> 0.85 -> 0.95);
    * ``"cosine"``: ``{"name": "cosine", "lr": peak, "warmup": {"epochs": warmup_epochs}}``
      (linear warm-up from 0, then cosine to 0; calibrated with one epoch of warm-up).

    The lengths (``total_steps`` / ``steps_per_epoch``) come from the run, as for any
    schedule config. Unknown schedules raise listing the valid ones.

    >>> from lrpilot.schedules import from_config
    >>> fn = from_config(schedule_config("one_cycle", 0.4), steps_per_epoch=10, total_steps=100)
    >>> round(max(fn(s) for s in range(100)), 6)
    0.4
    """
    schedule_fraction(schedule)
    peak = check_range("peak", peak, low=0, low_inclusive=False)
    if not math.isfinite(peak):
        raise ConfigError(f"peak={peak!r} must be finite")
    if schedule == "one_cycle":
        return {"name": "one_cycle", "max_lr": float(peak)}
    check_range("warmup_epochs", warmup_epochs, low=0)
    return {"name": "cosine", "lr": float(peak), "warmup": {"epochs": warmup_epochs}}
