"""Decisions on a recorded LR-sweep curve: pure, deterministic functions of ``(lr, loss)``.

Nothing here trains or plots; the calibrated suggestion built on the result lives in
:mod:`lrpilot.finder.policy`. The measurements behind each choice below are in
``bench/results/finder_decision_history.md``. The steps, for ``x = log10(lr)``:

0. **Scale**: when every finite loss is positive (and the initial loss too), the steps below
   run on ``y = ln(loss)`` (``scale="auto"``; ``"log"`` and ``"linear"`` force one): the
   batch-to-batch spread of a loss such as the MSE grows with its level, and on the log
   scale it is about constant, so one noise estimate fits the whole curve, and the answer
   does not depend on the loss's units. Negative losses use ``y = loss`` (the answer then
   does not depend on an offset). ``smoothed`` and ``slope`` are reported in loss units
   either way; ``noise`` in the units analysed.
1. **Smoothing** (centred, no lag): a running median of 3 removes single spikes, a blow-up
   is capped at ``L0 + 2 * max(L0 - min, 10 * roughness)`` so that it cannot leak backwards,
   then a local-linear Gaussian kernel regression in ``x`` with bandwidth ``h`` decades
   (default ``h = 2 * median spacing``, at least 0.05)::

       (a_j, b_j) = argmin sum_i w_ij (y_i - a - b (x_i - x_j))^2,   w_ij = exp(-(x_i - x_j)^2 / (2 h^2))

   ``smoothed_j = a_j`` and the derivative ``dy/dlog10(lr) = b_j`` (no lag and no bias at
   the ends, unlike an EMA). The curve ends at the first non-finite loss.
2. **Noise**: ``sigma = 1.4826 * median|y_i - smoothed_i|`` (robust residual scale, with
   ``y`` capped as above).
3. **Instability point**: with ``L0`` the (scaled) loss before the first update and
   ``Lmin`` the smallest smoothed value, the level is ``Lmin + max(RISE * (L0 - Lmin),
   MARGIN * sigma)`` (``RISE = 0.5``: half of the progress is lost again, on the log scale
   the geometric mean ``sqrt(L0 * Lmin)`` of the losses; ``MARGIN = 3``: or, when the loss
   barely fell, a rise well above the noise). ``lr_unstable`` is where the smoothed curve,
   having stayed at or below that level for ``BELOW_HOLD = 0.1`` decade (or from the first
   LR on), first climbs above it and stays above for at least ``HOLD = 0.4`` decades of LR
   (or to the end of the sweep), interpolated linearly in ``x``. Shorter excursions are
   noise; a later recovery does not undo the instability (a peak LR beyond it is risky). If
   the loss turns non-finite first, ``lr_unstable`` is halfway (in ``x``) between the last
   finite and the first non-finite LR.
4. **Interval**: the 10%..90% range of the same crossing over ``BOOTSTRAP`` wild-bootstrap
   curves ``smoothed_i + v_i * r_i`` (``r_i`` the residual where it was measured; ``v_i = +-1``
   with equal odds, one sign per block of ``2h`` so that neighbouring residuals stay
   correlated; fixed seed: deterministic), widened by half an LR step on each side. Each
   residual keeps its place, and with it its size (a sweep is quiet at small LRs and noisy
   near the instability). Reference: X. Shao, "The dependent wild bootstrap", JASA 2010. The
   interval measures the noise of this one curve, not the spread between sweeps with other
   initial weights and batches; ``repeats > 1`` pools repeats and widens it by their spread.
5. **Verdicts** instead of a made-up number: ``"flat"`` (the smoothed loss never moves more
   than ``4 sigma``), ``"diverged at once"`` (unstable within the first three tested LRs),
   ``"noisy"`` (the loss fell by less than ``NOISY_DROP = 4`` times its noise,
   ``max(L0, highest smoothed loss before the minimum) - Lmin < 4 sigma``, the same
   tolerance as "flat": the instability level is then set by the noise and its crossing is
   noise too, even one within the first LRs unless the loss was smallest there),
   ``"never diverged"`` (no lasting climb by the end of the sweep), ``"too short"`` (fewer
   than 5 finite points) and ``"ok"``.

Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks" (2017), for
the range test; the instability-point rule is lrpilot's.

>>> import math
>>> lrs = [10 ** (-4 + 0.1 * i) for i in range(41)]
>>> losses = [2.0 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 2.5))) for lr in lrs]
>>> losses = [y + max(0.0, 40 * (lr - 0.03)) for y, lr in zip(losses, lrs)]
>>> a = analyze_curve(lrs, losses, initial_loss=2.0)
>>> exact = 0.03 + 0.75 / 40  # Lmin + 0.5 * (L0 - Lmin) = 1.25 is crossed here
>>> a.verdict, abs(math.log10(a.lr_unstable / exact)) < 0.05  # within half an LR step
('ok', True)
>>> a.interval[0] <= a.lr_unstable <= a.interval[1]
True
>>> analyze_curve(lrs, [2.0] * 41, initial_loss=2.0).verdict
'flat'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lrpilot.errors import ConfigError

RISE = 0.5
MIN_POINTS = 5
MARGIN = 3.0
BOOTSTRAP = 100
HOLD = 0.4  # decades a climb must last to count (a shorter one is noise)
BELOW_HOLD = 0.1  # decades the curve must stay at or below the level before a climb counts
LOSS_SCALES = ("auto", "log", "linear")
NOISY_DROP = 4.0  # the loss fell by less than this many noise units: verdict "noisy"
VERDICTS = ("ok", "flat", "noisy", "never diverged", "diverged at once", "too short")


def _spacing(x: np.ndarray) -> float:
    """Median gap between distinct sorted ``x`` (pooled repeats repeat the same LRs)."""
    u = np.unique(np.asarray(x, dtype=float))
    return float(np.median(np.diff(u))) if u.size > 1 else 0.0


def median3(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Centred running median of 3 (the ends are kept).

    >>> median3([1.0, 9.0, 1.0, 2.0]).tolist()
    [1.0, 1.0, 2.0, 2.0]
    """
    y = np.asarray(values, dtype=float)
    if y.size < 3:
        return y.copy()
    out = y.copy()
    out[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return out


def smooth_curve(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    bandwidth: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local-linear Gaussian smoothing of finite ``y`` against ``x``.

    Returns ``(smoothed, slope, n_eff)`` at every ``x`` (NaN where the fit is undefined).

    >>> s, b, _ = smooth_curve([0, 1, 2, 3, 4], [1, 3, 5, 7, 9])
    >>> [round(float(v), 6) for v in s], [round(float(v), 6) for v in b]
    ([1.0, 3.0, 5.0, 7.0, 9.0], [2.0, 2.0, 2.0, 2.0, 2.0])
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    n = xs.size
    smoothed = np.full(n, np.nan)
    slope = np.full(n, np.nan)
    n_eff = np.zeros(n)
    ok = np.isfinite(ys) & np.isfinite(xs)
    if ok.sum() < 2:
        smoothed[ok] = ys[ok]
        return smoothed, slope, n_eff
    xo, yo = xs[ok], ys[ok]
    if bandwidth is None:
        spacing = _spacing(xo) or 0.1
        bandwidth = max(2.0 * float(spacing), 0.05)
    d = xo[None, :] - xs[:, None]  # rows: evaluation points, columns: data points
    w = np.exp(-0.5 * (d / bandwidth) ** 2)
    sw, swd, swdd = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    swy, swdy = w @ yo, (w * d) @ yo
    det = sw * swdd - swd * swd
    n_eff[:] = sw
    good = det > 1e-12 * np.maximum(sw * swdd, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        smoothed = np.where(good, (swdd * swy - swd * swdy) / det, swy / sw)
        slope = np.where(good, (sw * swdy - swd * swy) / det, 0.0)
    return smoothed, slope, n_eff


@dataclass(frozen=True)
class CurveAnalysis:
    """What :func:`analyze_curve` decides (all LRs in absolute units)."""

    smoothed: tuple[float, ...]
    slope: tuple[float, ...]  # d smoothed / d log10(lr)
    noise: float
    verdict: str
    lr_unstable: float | None
    interval: tuple[float, float] | None  # range of lr_unstable
    lr_min_loss: float | None  # LR at the smallest smoothed loss
    message: str
    scale: str = "linear"  # what was analysed: "log" (ln of the loss) or "linear"; the
    # noise is in those units, smoothed and slope always in loss units


def _crossing(
    x: np.ndarray, s: np.ndarray, level: float, hold: float | None = HOLD, start: int = 0
) -> float | None:
    """Where ``s`` first climbs above ``level`` and stays above it for ``hold`` decades of
    ``x`` (or to the end of the curve; non-finite counts as above). Candidates come after
    ``start`` and after the curve has stayed at or below ``level`` for ``BELOW_HOLD``
    decades (a single dip of noise does not count), or was there at the first LR (a loss
    that climbs at once); ``hold=None`` asks for a climb that lasts
    to the end. Interpolated linearly; ``None`` when there is no such climb.
    """
    above = ~np.isfinite(s) | (s > level)
    n = x.size
    first_below: int | None = None
    for k in (np.flatnonzero(~above[start:]) + start).tolist():
        end = int(np.searchsorted(x, x[k] + BELOW_HOLD, side="right"))
        if k == 0 or not above[k:end].any():  # the first LR: a loss that climbs at once
            first_below = int(k)
            break
    if n == 0 or first_below is None:
        return None
    for k in range(first_below + 1, n):
        if not above[k] or above[k - 1]:
            continue
        end = n if hold is None else int(np.searchsorted(x, x[k] + hold, side="right"))
        if above[k:end].all():
            prev = k - 1
            if not np.isfinite(s[k]) or s[k] == s[prev]:
                return float(x[k])
            t = min(max((level - s[prev]) / (s[k] - s[prev]), 0.0), 1.0)
            return float(x[prev] + t * (x[k] - x[prev]))
    return None


def _level(l0: float, lmin: float, noise: float, rise: float, margin: float) -> float:
    """The loss level whose lasting crossing marks the instability (module doc, step 3)."""
    return lmin + max(rise * max(l0 - lmin, 0.0), margin * noise)


def _bootstrap_crossings(
    x: np.ndarray,
    smoothed: np.ndarray,
    resid: np.ndarray,
    l0: float,
    noise: float,
    rise: float,
    margin: float,
    hold: float | None,
    bandwidth: float | None,
    x_end: float,
) -> np.ndarray:
    """Crossing points of ``BOOTSTRAP`` block wild-bootstrap curves (module doc, step 4;
    fixed seed, so the result is deterministic). A curve without a crossing counts as
    ``x_end``."""
    n = x.size
    if n < MIN_POINTS or BOOTSTRAP <= 0:
        return np.empty(0)
    spacing = _spacing(x)
    bw = bandwidth if bandwidth is not None else max(2.0 * spacing, 0.05)
    block = int(min(max(1, round(2.0 * bw / spacing)), n)) if spacing > 0 else 1
    rng = np.random.default_rng(0)
    n_blocks = -(-n // block) + 1
    out = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        # one sign per block; the block boundaries move by a random offset every replicate
        offset = int(rng.integers(0, block))
        signs = np.repeat(rng.choice((-1.0, 1.0), size=n_blocks), block)[offset : offset + n]
        s_star, _, _ = smooth_curve(x, smoothed + signs * resid, bw)
        j = int(np.nanargmin(s_star))
        level = _level(l0, float(s_star[j]), noise, rise, margin)
        cross = _crossing(x, s_star, level, hold)
        out[b] = x_end if cross is None else cross
    return out


def _scaled(
    lrs: Sequence[float], losses: Sequence[float], initial_loss: float | None, scale: str
) -> tuple[np.ndarray, np.ndarray, float | None, bool]:
    """Check the inputs and choose the analysed scale (module doc, step 0). Returns the LRs,
    the analysed losses, the analysed initial loss (``None`` when not given or not finite)
    and whether the log scale is used."""
    lr = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if lr.shape != y.shape:
        raise ConfigError(f"lrs and losses differ in length: {lr.size} vs {y.size}")
    if np.any(~np.isfinite(lr)) or np.any(lr <= 0):
        raise ConfigError("learning rates must be finite and > 0")
    if scale not in LOSS_SCALES:
        raise ConfigError(f"scale={scale!r} is not one of {', '.join(LOSS_SCALES)}")
    finite_y = y[np.isfinite(y)]
    positive = bool(np.all(finite_y > 0)) and (
        initial_loss is None or not math.isfinite(initial_loss) or initial_loss > 0
    )
    if scale == "log" and not positive:
        raise ConfigError("scale='log' needs positive losses; use 'linear' or 'auto'")
    use_log = scale == "log" or (scale == "auto" and positive)
    l0 = initial_loss if initial_loss is not None and math.isfinite(initial_loss) else None
    if use_log:  # every finite loss is positive; inf and NaN stay what they are
        y = np.log(y)
        l0 = math.log(l0) if l0 is not None else None
    return lr, y, (float(l0) if l0 is not None else None), use_log


@dataclass(frozen=True)
class _Fit:
    """The smoothed finite part of a curve (module doc, steps 1-2)."""

    first_bad: int | None  # index of the first non-finite loss
    filtered: np.ndarray  # running median of 3, blow-up capped
    capped: np.ndarray  # the raw losses, blow-up capped
    smoothed: np.ndarray
    slope: np.ndarray


def _fit(x: np.ndarray, y: np.ndarray, l0: float | None, bandwidth: float | None) -> _Fit:
    """Smooth the curve up to its first non-finite loss (module doc, step 1)."""
    finite = np.isfinite(y)
    first_bad = int(np.argmin(finite)) if not finite.all() else None
    # Only the part before the first non-finite loss is a curve.
    cut = first_bad if first_bad is not None else y.size
    xc, yc = x[:cut], y[:cut]
    filtered = median3(yc)
    capped = yc
    if cut >= MIN_POINTS:
        # Cap the blow-up so that it cannot leak backwards through the kernel.
        ref = l0 if l0 is not None else float(filtered[0])
        rough = float(1.4826 * np.median(np.abs(np.diff(filtered)))) if cut > 1 else 0.0
        cap = ref + 2.0 * max(ref - float(filtered.min()), 10.0 * rough)
        filtered = np.minimum(filtered, cap)
        capped = np.minimum(yc, cap)
    smoothed, slope, _ = smooth_curve(xc, filtered, bandwidth)
    return _Fit(first_bad, filtered, capped, smoothed, slope)


def _verdict_maker(fit: _Fit, n: int, use_log: bool) -> Callable[..., CurveAnalysis]:
    """A function ``(verdict, lr_u, interval, lr_min, noise, message)`` that builds the
    :class:`CurveAnalysis` of this fit, with the curve reported in loss units: the smoothed
    loss and ``d loss / d log10(lr) = loss * d ln(loss) / d log10(lr)``."""
    pad = np.full(n - fit.smoothed.size, np.nan)
    shown_smoothed = np.exp(fit.smoothed) if use_log else fit.smoothed
    shown_slope = shown_smoothed * fit.slope if use_log else fit.slope
    smoothed_all = tuple(float(v) for v in np.concatenate([shown_smoothed, pad]))
    slope_all = tuple(float(v) for v in np.concatenate([shown_slope, pad]))
    scale_used = "log" if use_log else "linear"

    def result(verdict, lr_u=None, interval=None, lr_min=None, noise=0.0, message=""):
        return CurveAnalysis(
            smoothed_all, slope_all, float(noise), verdict, lr_u, interval, lr_min, message,
            scale_used,
        )  # fmt: skip

    return result


def _too_short(result: Callable[..., CurveAnalysis], fit: _Fit, lr: np.ndarray) -> CurveAnalysis:
    """The verdict on a curve with fewer than ``MIN_POINTS`` finite points."""
    if fit.first_bad is not None and fit.first_bad <= 2:
        return result(
            "diverged at once",
            message=f"the loss was non-finite at the {fit.first_bad + 1}. tested LR "
            f"({lr[fit.first_bad]:.3g}); lower start_lr",
        )
    return result(
        "too short",
        message=f"only {fit.smoothed.size} finite points (need {MIN_POINTS}); use more steps",
    )


def _locate(
    x: np.ndarray,
    fit: _Fit,
    level: float,
    stats: tuple[float, float, float, float, float | None, float | None],
) -> tuple[float, float, float] | None:
    """``(x_unstable, lo_x, hi_x)`` in log10 LR (module doc, steps 3-4), or ``None`` when
    the loss never climbed. ``stats``: ``(l0, noise, rise, margin, hold, bandwidth)``."""
    l0, noise, rise, margin, hold, bandwidth = stats
    xc = x[: fit.smoothed.size]
    x_cross = _crossing(xc, fit.smoothed, level, hold)
    bad = fit.first_bad
    if x_cross is None and bad is not None:
        # The loss became non-finite before the smoothed curve climbed: the instability lies
        # between the last finite and the first non-finite LR.
        return 0.5 * (x[bad - 1] + x[bad]), x[bad - 1], x[bad]
    if x_cross is None:
        return None
    x_end = 0.5 * (x[bad - 1] + x[bad]) if bad is not None else xc[-1]
    resid = fit.filtered - fit.smoothed
    boots = _bootstrap_crossings(
        xc, fit.smoothed, resid, l0, noise, rise, margin, hold, bandwidth, x_end
    )
    q_lo, q_hi = np.quantile(boots, [0.1, 0.9]) if boots.size else (x_cross, x_cross)
    step = _spacing(x)
    return x_cross, min(float(q_lo), x_cross) - 0.5 * step, max(float(q_hi), x_cross) + 0.5 * step


def _noisy_message(unit: str, drop: float, noise: float) -> str:
    """Why a curve whose loss barely fell has no instability point (verdict ``"noisy"``)."""
    return (
        f"the {unit} fell by only {drop:.3g}, {drop / noise:.1f} times its noise "
        f"{noise:.3g} (need {NOISY_DROP:g}): an instability point would be noise; probe "
        "with a larger batch, more repeats or a fixed val_batch"
    )


def analyze_curve(
    lrs: Sequence[float],
    losses: Sequence[float],
    initial_loss: float | None = None,
    *,
    rise: float = RISE,
    margin: float = MARGIN,
    hold: float | None = HOLD,
    bandwidth: float | None = None,
    scale: str = "auto",
) -> CurveAnalysis:
    """Smooth the raw curve, find the instability point and give a verdict (module doc).

    ``scale``: ``"log"`` analyses ``ln(loss)``, ``"linear"`` the loss itself, ``"auto"``
    (default) the log when every finite loss (and the initial loss) is positive."""
    lr, y, l0_given, use_log = _scaled(lrs, losses, initial_loss, scale)
    x = np.log10(lr) if lr.size else lr
    fit = _fit(x, y, l0_given, bandwidth)
    result = _verdict_maker(fit, y.size, use_log)
    if fit.smoothed.size < MIN_POINTS:
        return _too_short(result, fit, lr)
    smoothed = fit.smoothed
    l0 = l0_given if l0_given is not None else float(smoothed[0])
    jmin = int(np.nanargmin(smoothed))
    lmin, lr_min = float(smoothed[jmin]), float(lr[jmin])
    span = float(np.nanmax(smoothed) - lmin)
    tiny = 1e-9 * max(1.0, abs(l0))  # rounding floor for exactly smooth curves
    noise = max(float(1.4826 * np.median(np.abs(fit.capped - smoothed))), tiny)
    unit = "log loss" if use_log else "loss"
    if fit.first_bad is None and span <= 4.0 * noise and abs(l0 - lmin) <= 4.0 * noise:
        return result(
            "flat",
            lr_min=lr_min,
            noise=noise,
            message=f"the {unit} moved by at most {span:.3g} (noise {noise:.3g}); widen the "
            "LR range or check that the model trains",
        )
    level = _level(l0, lmin, noise, rise, margin)
    # how far the loss fell: from its highest level before the minimum (or the start)
    drop = max(float(np.nanmax(smoothed[: jmin + 1])), l0) - lmin
    noisy = drop < NOISY_DROP * noise
    noisy_message = _noisy_message(unit, drop, noise)
    found = _locate(x, fit, level, (l0, noise, rise, margin, hold, bandwidth))
    if found is None:
        if noisy:
            return result("noisy", lr_min=lr_min, noise=noise, message=noisy_message)
        shown_level = math.exp(level) if use_log else level
        message = (
            f"the loss did not climb back up to {shown_level:.4g} by {lr[-1]:.3g}; raise end_lr"
        )
        return result("never diverged", lr_min=lr_min, noise=noise, message=message)
    x_cross, lo_x, hi_x = found
    lr_u = float(10**x_cross)
    interval = (float(10**lo_x), float(10**hi_x))
    # a loss that never fell (smallest at the first LRs) and climbs at once; a noisy curve's
    # early crossing is noise, not this
    if x_cross <= x[min(2, x.size - 1)] and (not noisy or jmin <= 2):
        message = f"unstable already at {lr_u:.3g}, within the first tested LRs; lower start_lr"
        return result("diverged at once", lr_u, interval, lr_min, noise, message)
    if noisy:
        return result("noisy", lr_min=lr_min, noise=noise, message=noisy_message)
    return result("ok", lr_u, interval, lr_min, noise, "")
