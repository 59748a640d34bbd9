"""Series extracted from a :class:`~lrpilot.history.History` and the robust statistics the
rules use.

Every statistic here is *scale-free*: it is unchanged when the loss is multiplied by a
positive constant or shifted by any constant (so negative losses work). The rules only
compare differences of the loss with other differences of the same loss: a drop with a
rise, a trend with the noise around it. Noise is measured with the median absolute
deviation (MAD), which ignores isolated spikes; trends with the Theil-Sen estimator (the
median of pairwise slopes), which tolerates up to 29% outliers.

References: Rousseeuw & Croux (1993), "Alternatives to the median absolute deviation";
Sen (1968), "Estimates of the regression coefficient based on Kendall's tau".

>>> mad_sigma([1.0, 2.0, 3.0, 4.0, 100.0])
1.4826
>>> round(theil_sen_slope([0, 1, 2, 3, 4], [0.0, 2.0, 4.0, 60.0, 8.0]), 6)
2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lrpilot.history import History

#: Consistency factor that makes the MAD estimate the standard deviation of Gaussian noise.
MAD_TO_SIGMA = 1.4826


def median(values: np.ndarray) -> float:
    """``np.median`` of a 1-d float array (``nan`` if it holds a NaN, ``nan`` when empty),
    by one sort: the same value, several times faster on the short series used here.

    >>> median(np.array([3.0, 1.0, 2.0, 10.0]))
    2.5
    """
    n = values.size
    if n == 0:
        return math.nan
    v = np.sort(values)
    if math.isnan(v[-1]):  # sort puts NaN last
        return math.nan
    mid = n // 2
    return float(v[mid]) if n % 2 else float((v[mid - 1] + v[mid]) / 2.0)


def mad_sigma(values) -> float:
    """Robust standard deviation: ``1.4826 * median(|v - median(v)|)`` over finite values
    (0.0 for fewer than two)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return 0.0
    return float(MAD_TO_SIGMA * median(np.abs(v - median(v))))


def step_noise(values) -> float:
    """Noise of a series around its local trend, from second differences:
    ``1.4826 * median(|v[i+1] - 2 v[i] + v[i-1]|) / sqrt(6)``.

    Second differences cancel any locally linear trend; for independent noise of standard
    deviation s they have deviation ``s * sqrt(6)``. The median of absolute values (not
    centred) keeps an alternating series noisy. 0.0 for fewer than three values.

    >>> step_noise([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]) > 1.0
    True
    >>> step_noise([5.0, 4.0, 3.0, 2.0, 1.0])
    0.0
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 3:
        return 0.0
    d2 = v[2:] - 2.0 * v[1:-1] + v[:-2]
    return float(MAD_TO_SIGMA * median(np.abs(d2)) / math.sqrt(6.0))


def theil_sen_slope(x, y) -> float:
    """Median of the slopes ``(y_j - y_i) / (x_j - x_i)`` over all pairs with ``x_i < x_j``
    (0.0 with fewer than two distinct x)."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if xa.size < 2:
        return 0.0
    i, j = np.triu_indices(xa.size, k=1)
    dx = xa[j] - xa[i]
    ok = dx != 0
    if not ok.any():
        return 0.0
    return median((ya[j] - ya[i])[ok] / dx[ok])


def binned_median(x, y, nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the points (in order) into ``nbins`` groups of (nearly) equal count and return
    each group's median x, median y and count. Medians ignore single spikes."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    nbins = max(1, min(int(nbins), xa.size))
    groups = np.array_split(np.arange(xa.size), nbins)
    xb = np.array([median(xa[g]) for g in groups])
    yb = np.array([median(ya[g]) for g in groups])
    nb = np.array([g.size for g in groups])
    return xb, yb, nb


def _sorted_unique(records: list[dict], key: str) -> list[dict]:
    """Records ordered by ``key``; a repeated key (a resumed run) keeps the last record."""
    by_key: dict[int, dict] = {}
    for index, record in enumerate(records):
        raw = record.get(key, index)
        try:
            k = int(raw)
        except (TypeError, ValueError):
            continue
        by_key[k] = record
    return [by_key[k] for k in sorted(by_key)]


_LOSSES = ("train_loss", "val_loss")


def _value(record: dict, key: str) -> float:
    value = record.get(key)
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class Curves:
    """Aligned numpy series of one run. Missing values are ``nan``; non-finite losses are
    kept (as ``nan`` or ``inf``) so that the NaN rule sees them.

    ``step_*`` come from step records that carry ``train_loss``; ``epoch_*`` from epoch
    records (one entry per epoch, ``epoch_step`` is the step at the end of the epoch);
    ``epoch_nonfinite`` marks epochs whose logged train or validation loss is not finite
    (a missing value is not).
    """

    step_x: np.ndarray
    step_loss: np.ndarray
    step_lr: np.ndarray
    step_grad: np.ndarray
    step_epoch: np.ndarray
    epoch_x: np.ndarray
    epoch_step: np.ndarray
    epoch_train: np.ndarray
    epoch_val: np.ndarray
    epoch_lr: np.ndarray
    epoch_nonfinite: np.ndarray
    events: list[dict] = field(default_factory=list)
    #: per-epoch validation accuracy (``val_accuracy``; ``nan`` where not logged)
    epoch_acc: np.ndarray = field(default_factory=lambda: np.array([]))

    @classmethod
    def from_history(cls, history: History) -> Curves:
        steps = [r for r in _sorted_unique(history.steps, "step") if "train_loss" in r]
        epochs = _sorted_unique(history.epochs, "epoch")
        return cls(
            step_x=np.array([float(r.get("step", i)) for i, r in enumerate(steps)]),
            step_loss=np.array([_value(r, "train_loss") for r in steps]),
            step_lr=np.array([_value(r, "lr") for r in steps]),
            step_grad=np.array([_value(r, "grad_norm") for r in steps]),
            step_epoch=np.array([_value(r, "epoch") for r in steps]),
            epoch_x=np.array([float(r.get("epoch", i)) for i, r in enumerate(epochs)]),
            epoch_step=np.array([_value(r, "step") for r in epochs]),
            epoch_train=np.array([_value(r, "train_loss") for r in epochs]),
            epoch_val=np.array([_value(r, "val_loss") for r in epochs]),
            epoch_lr=np.array([_value(r, "lr") for r in epochs]),
            epoch_nonfinite=np.array(
                [
                    any(r.get(k) is not None and not math.isfinite(_value(r, k)) for k in _LOSSES)
                    for r in epochs
                ],
                dtype=bool,
            ),
            events=list(history.events),
            epoch_acc=np.array([_value(r, "val_accuracy") for r in epochs]),
        )

    # ----------------------------------------------------------------- lookups
    def epoch_of_step(self, step: float) -> int | None:
        """The epoch in progress at ``step`` (from step records, else epoch ends)."""
        if self.step_x.size and np.isfinite(self.step_epoch).any():
            ok = np.isfinite(self.step_epoch)
            xs, es = self.step_x[ok], self.step_epoch[ok]
            i = int(np.searchsorted(xs, step, side="left"))
            i = min(i, xs.size - 1)
            return int(es[i])
        ok = np.isfinite(self.epoch_step)
        if ok.any():
            ends, eps = self.epoch_step[ok], self.epoch_x[ok]
            i = int(np.searchsorted(ends, step, side="left"))
            return int(eps[min(i, eps.size - 1)])
        return None

    def step_of_epoch(self, epoch: float) -> int | None:
        """The first step of ``epoch`` (from step records, else the previous epoch's end)."""
        ok = np.isfinite(self.step_epoch)
        if ok.any():
            hit = self.step_x[ok][self.step_epoch[ok] >= epoch]
            if hit.size:
                return int(hit[0])
        ok = np.isfinite(self.epoch_step)
        if ok.any():
            before = self.epoch_step[ok][self.epoch_x[ok] < epoch]
            return int(before[-1]) + 1 if before.size else 1
        return None

    def lr_series(self) -> tuple[np.ndarray, np.ndarray]:
        """``(step, lr)`` of the finite learning rates, step records first, else epochs."""
        ok = np.isfinite(self.step_lr)
        if ok.sum() >= 2:
            return self.step_x[ok], self.step_lr[ok]
        ok = np.isfinite(self.epoch_lr) & np.isfinite(self.epoch_step)
        return self.epoch_step[ok], self.epoch_lr[ok]

    def lr_at(self, step: float) -> float:
        """The learning rate in use at ``step`` (the nearest logged one; nan if none)."""
        xs, lrs = self.lr_series()
        if xs.size == 0:
            return math.nan
        return float(lrs[int(np.argmin(np.abs(xs - step)))])

    def peak_lr(self, until: float | None = None) -> float:
        """The largest logged learning rate (up to step ``until``); nan if none."""
        xs, lrs = self.lr_series()
        if until is not None:
            lrs = lrs[xs <= until]
        return float(lrs.max()) if lrs.size else math.nan

    def train_curve(self, min_points: int) -> tuple[np.ndarray, np.ndarray, str]:
        """The training-loss series the shape rules read: finite step losses when there
        are at least ``min_points``, else finite epoch means, with its level name."""
        ok = np.isfinite(self.step_loss)
        if ok.sum() >= min_points:
            return self.step_x[ok], self.step_loss[ok], "steps"
        ok = np.isfinite(self.epoch_train)
        x = np.where(np.isfinite(self.epoch_step), self.epoch_step, self.epoch_x)
        return x[ok], self.epoch_train[ok], "epochs"

    def guard_rescues(self) -> list[dict]:
        """Events recorded by the divergence guard (``action == "guard_rescue"``)."""
        return [e for e in self.events if e.get("action") == "guard_rescue"]
