"""What the rules read: the run's curves plus robust summaries computed once.

Notation (training curve = finite step losses, or epoch means when fewer than
``MIN_TRAIN_POINTS`` steps were logged; smoothed by medians of ``BIN_POINTS``-point
groups):

* ``init``: the first raw loss, or the median of the first three when lower (a loss that
  jumps at the second step keeps the first as its start); ``best``: lowest smoothed
  loss; ``end``: last smoothed loss; ``drop = init - best``.
* ``noise``: ``1.4826 * median(|second difference of loss|) / sqrt(6)``;
  ``noise_bin = 1.2533 * noise / sqrt(points per group)`` (the standard error of a
  group median).
* ``unit = max(drop, NOISE_Z * noise_bin)``: the scale every other change is compared to.
  For the validation loss the drop is measured from the larger of its first value and
  the initial training loss.

>>> from lrpilot.history import History
>>> recs = [{"type": "step", "step": s, "lr": 0.1, "train_loss": 2.0 / s} for s in range(1, 41)]
>>> ctx = Context.build(Curves.from_history(History.from_records(recs)))
>>> ctx.train.init, round(ctx.train.drop, 3), ctx.val is None
(1.0, 0.947, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lrpilot.diagnosis.curves import Curves, binned_median, step_noise

# ---------------------------------------------------------------- data requirements
#: Fewest finite training losses (step records) for the step-level shape rules; with
#: fewer, epoch means are used instead.
MIN_TRAIN_POINTS = 12
#: Fewest finite epoch means for the epoch-level fallback of the training curve.
MIN_TRAIN_EPOCHS = 4
#: Fewest epochs with a finite validation loss for the validation rules, and for the
#: overfitting rule.
MIN_VAL_EPOCHS = 3
MIN_OVERFIT_EPOCHS = 4
#: Points per smoothing group, and the bounds on the number of groups.
BIN_POINTS = 5
MIN_BINS = 4
MAX_BINS = 30
#: A change smaller than this many group-median standard errors is noise.
NOISE_Z = 4.0


@dataclass(frozen=True)
class TrainProfile:
    """Robust summary of the training curve (see the module notation)."""

    x: np.ndarray
    y: np.ndarray
    level: str
    xb: np.ndarray
    mb: np.ndarray
    init: float
    best: float
    best_x: float
    end: float
    drop: float
    noise: float
    noise_bin: float
    unit: float

    @classmethod
    def build(cls, curves: Curves) -> TrainProfile | None:
        x, y, level = curves.train_curve(MIN_TRAIN_POINTS)
        need = MIN_TRAIN_POINTS if level == "steps" else MIN_TRAIN_EPOCHS
        if y.size < need:
            return None
        nbins = int(np.clip(y.size // BIN_POINTS, MIN_BINS, MAX_BINS))
        xb, mb, nb = binned_median(x, y, nbins)
        init = min(float(y[0]), float(np.median(y[:3])))
        best_i = int(np.argmin(mb))
        noise = step_noise(y)
        noise_bin = 1.2533 * noise / math.sqrt(float(np.median(nb)))
        drop = init - float(mb[best_i])
        unit = max(drop, NOISE_Z * noise_bin, 1e-12 * max(1.0, abs(init)))
        return cls(
            x=x,
            y=y,
            level=level,
            xb=xb,
            mb=mb,
            init=init,
            best=float(mb[best_i]),
            best_x=float(xb[best_i]),
            end=float(mb[-1]),
            drop=drop,
            noise=noise,
            noise_bin=noise_bin,
            unit=unit,
        )


@dataclass(frozen=True)
class ValProfile:
    """Robust summary of the per-epoch validation loss."""

    epochs: np.ndarray
    steps: np.ndarray
    v: np.ndarray
    train: np.ndarray
    best_i: int
    noise: float
    unit: float

    @classmethod
    def build(cls, curves: Curves, train: TrainProfile | None) -> ValProfile | None:
        ok = np.isfinite(curves.epoch_val)
        if ok.sum() < MIN_VAL_EPOCHS:
            return None
        v = curves.epoch_val[ok]
        best_i = int(np.argmin(v))
        noise = step_noise(v) if v.size >= 4 else 0.0
        top = v[0] if train is None else max(v[0], train.init)
        unit = max(top - v[best_i], NOISE_Z * noise, 1e-12 * max(1.0, abs(v[0])))
        return cls(
            epochs=curves.epoch_x[ok],
            steps=curves.epoch_step[ok],
            v=v,
            train=curves.epoch_train[ok],
            best_i=best_i,
            noise=noise,
            unit=unit,
        )


@dataclass(frozen=True)
class Context:
    """What every rule reads: the curves and their summaries (``None`` when too short)."""

    curves: Curves
    train: TrainProfile | None
    val: ValProfile | None

    @classmethod
    def build(cls, curves: Curves) -> Context:
        train = TrainProfile.build(curves)
        return cls(curves=curves, train=train, val=ValProfile.build(curves, train))

    def epoch_at(self, step: float) -> int | None:
        return self.curves.epoch_of_step(step)
