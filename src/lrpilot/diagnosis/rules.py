"""Diagnosis rules: one pure function per kind, registered in :mod:`lrpilot.diagnosis.registry`
(``nan``, ``diverged`` and ``oscillating`` live in :mod:`lrpilot.diagnosis.stability`).

Each rule reads a :class:`~lrpilot.diagnosis.context.Context` (the run's curves plus a few
robust summaries computed once; see its module for the notation ``init``, ``drop``,
``noise``, ``unit``) and returns a :class:`~lrpilot.diagnosis.finding.Finding` or
``None``. A rule also declares what data it needs; ``diagnose`` skips a rule whose data
is missing and says "not enough data" when no shape rule could run. All thresholds are
the named constants below; every comparison is between differences of the same loss, so
the verdicts do not change when the loss is scaled or shifted (negative losses work).
The one exception is documented at :func:`rule_too_slow`.

The symptom -> cause table the rules encode (loss rising: LR too high; barely moving: LR
too low; violent oscillation: LR too high or batch too small; validation rising while
training falls: overfitting; both still falling at the end: underfitting; flat at a
constant LR: decay due) follows Smith (2018), "A disciplined approach to neural network
hyper-parameters" (arXiv:1803.09820), Prechelt (1998), "Early Stopping - But When?", and
Goodfellow, Bengio & Courville (2016), *Deep Learning*, ch. 11 (practical methodology).

>>> from lrpilot.diagnosis import RULES, get_rule
>>> sorted(RULES)[:3]
['diverged', 'nan', 'oscillating']
>>> get_rule("nope")
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: unknown diagnosis rule 'nope'; valid: diverged, nan, oscillating, overfitting, plateau, too_slow, underfitting
"""

from __future__ import annotations

import math

import numpy as np

from lrpilot.diagnosis.context import (
    MIN_OVERFIT_EPOCHS,
    MIN_TRAIN_EPOCHS,
    MIN_TRAIN_POINTS,
    NOISE_Z,
    Context,
    TrainProfile,
)
from lrpilot.diagnosis.curves import Curves, binned_median, mad_sigma, theil_sen_slope
from lrpilot.diagnosis.finding import Finding
from lrpilot.diagnosis.registry import Rule, register_rule
from lrpilot.diagnosis.stability import (
    ABOVE_START_Z,
    BLOWUP_Z,
    MIN_OSC_EPOCHS,
    _epoch_text,
    _fmt,
    rule_diverged,
    rule_nan,
    rule_oscillating,
)

# ---------------------------------------------------------------- too slow
#: The drop over the middle third of the run is at least this fraction of the drop over
#: the first third (per unit of summed learning rate): the curve has not bent.
SLOW_STRAIGHTNESS = 0.5
#: For a non-negative loss, a "slow" straight run lost at most this fraction of its
#: initial value.
SLOW_MAX_DROP = 0.25
#: Or: the median gradient norms of GRAD_GROUPS equal groups of steps stayed within
#: this ratio (the weights barely moved; real progress changes the gradient norm more).
GRAD_FLAT_RATIO = 2.0
GRAD_GROUPS = 8
#: ... and below this fraction the learning rate is far too low (10x advice, not 3x).
SLOW_TINY_DROP = 0.05
#: Suggested LR factor when the curve is straight, and when the loss barely moved.
SLOW_FACTOR = 3.0
STUCK_FACTOR = 10.0

# ---------------------------------------------------------------- overfitting
#: Validation loss rose above its best by this fraction of its drop (and NOISE_Z noise)
#: while the training loss kept falling.
OVERFIT_RISE = 0.2

# ---------------------------------------------------------------- underfitting
#: Projected further drop if the run went on as long again at the slope of its second
#: half, as a fraction of the drop so far, for the training and the validation loss.
UNDERFIT_GAIN = 0.2
UNDERFIT_VAL_GAIN = 0.15

# ---------------------------------------------------------------- plateau
#: Level above the end level, and trend gain to the end, from the plateau start on, as a
#: fraction of the drop.
PLATEAU_TOLERANCE = 0.1
#: The plateau covers at least this fraction of the run ...
PLATEAU_MIN_FRACTION = 0.3
#: ... and at least this many epochs (when epochs are logged): decay decisions are made
#: per epoch ...
PLATEAU_MIN_EPOCHS = 2
#: ... with a constant learning rate (max/min within this ratio).
PLATEAU_LR_RATIO = 1.1


def _third_drops(t: TrainProfile, c: Curves) -> tuple[float, float, float, float]:
    """Drops of the smoothed loss over the first and the middle third of the run, and the
    summed learning rate (LR integral) over each (their lengths when no LR is logged).
    The middle third is used, not the last, because a final LR decay makes the loss fall
    quickly for a small LR integral in every run."""
    k = t.mb.size
    a, b = max(1, k // 3), max(2, (2 * k) // 3)
    b = min(b, k - 1)
    d_first = t.init - float(t.mb[a])
    d_mid = float(t.mb[a]) - float(t.mb[b])
    xs, lrs = c.lr_series()
    if xs.size >= 2 and np.all(lrs > 0):

        def lr_integral(x0: float, x1: float) -> float:
            grid = np.linspace(x0, x1, 64)
            return float(np.mean(np.interp(grid, xs, lrs)) * max(x1 - x0, 1e-12))

        return d_first, d_mid, lr_integral(t.x[0], t.xb[a]), lr_integral(t.xb[a], t.xb[b])
    return d_first, d_mid, float(t.xb[a] - t.x[0]), float(t.xb[b] - t.xb[a])


def _grad_norm_range(c: Curves) -> float | None:
    """Largest over smallest median gradient norm among ``GRAD_GROUPS`` equal groups of
    the logged steps (``None`` when fewer than ``3 * GRAD_GROUPS`` positive values)."""
    g = c.step_grad[np.isfinite(c.step_grad) & (c.step_grad > 0)]
    if g.size < 3 * GRAD_GROUPS:
        return None
    _, medians, _ = binned_median(np.arange(g.size), g, GRAD_GROUPS)
    return float(medians.max() / medians.min())


def rule_too_slow(ctx: Context) -> Finding | None:
    """The learning rate is too low: the loss barely moved (its drop is within
    ``NOISE_Z`` group errors and it never rose either), or it fell along a straight or
    accelerating line (per unit of summed learning rate the middle third fell at least
    ``SLOW_STRAIGHTNESS`` times as much as the first third; a well-tuned run bends)
    without ever blowing up, while the weights barely moved: the gradient norm (when
    logged) stayed within ``GRAD_FLAT_RATIO`` over the run, or, for a non-negative loss,
    the loss fell by less than ``SLOW_MAX_DROP`` of its initial value (the distance to
    the natural floor 0). That last test is not shift-invariant, so with negative losses
    the gradient-norm test decides, or the shape alone when no gradient norm is logged.
    Both ratios are unchanged by scaling the loss."""
    c, t = ctx.curves, ctx.train
    if t is None:
        return None
    lr = c.peak_lr()
    d_first, d_mid, w_first, w_mid = _third_drops(t, c)
    spread = max(t.noise, mad_sigma(t.y[t.y.size // 2 :]), 1e-12 * max(1.0, abs(t.init)))
    calm = float(np.max(t.y)) - t.init < BLOWUP_Z * spread
    significant = t.drop > NOISE_Z * t.noise_bin
    stuck = not significant and calm and float(np.median(t.y)) <= t.init + ABOVE_START_Z * t.noise
    rate_first = d_first / max(w_first, 1e-300)
    rate_mid = d_mid / max(w_mid, 1e-300)
    grad_range = _grad_norm_range(c)
    if grad_range is not None and grad_range <= GRAD_FLAT_RATIO:
        small = True  # the weights barely moved
    elif bool(np.min(t.y) >= 0):
        small = t.drop <= SLOW_MAX_DROP * t.init
    else:  # negative losses have no natural floor: the gradient norm or the shape decides
        small = grad_range is None
    straight = (
        significant
        and calm
        and small
        and d_mid > 0
        and rate_mid >= SLOW_STRAIGHTNESS * max(rate_first, 0.0)
    )
    if not (stuck or straight):
        return None
    tiny = stuck or (not bool(np.min(t.y) < 0) and t.drop <= SLOW_TINY_DROP * t.init)
    factor = STUCK_FACTOR if tiny else SLOW_FACTOR
    evidence = {
        "drop": t.drop,
        "initial_loss": t.init,
        "noise_bin": t.noise_bin,
        "first_third_drop": d_first,
        "middle_third_drop": d_mid,
        "straightness": rate_mid / rate_first if rate_first > 0 else math.inf,
        "grad_norm_range": grad_range,
        "peak_lr": lr,
    }
    lr_text = (
        f"raise the learning rate from {_fmt(lr)} to about {_fmt(lr * factor)}"
        if math.isfinite(lr)
        else f"raise the learning rate about {factor:g}x"
    )
    summary = (
        "the loss barely moved"
        if stuck
        else "the loss is falling slowly along a straight line: the step size limits progress"
    )
    return Finding(
        "too_slow",
        "warning",
        step=int(t.x[0]),
        epoch=ctx.epoch_at(t.x[0]),
        evidence=evidence,
        advice=lr_text + " (check it with an LR range test: lrpilot find)",
        summary=summary,
    )


def rule_overfitting(ctx: Context) -> Finding | None:
    """Validation loss rose above its best by more than ``OVERFIT_RISE`` of its drop (and
    noise) while the training loss kept falling."""
    val = ctx.val
    if val is None or val.v.size < MIN_OVERFIT_EPOCHS or val.best_i >= val.v.size - 1:
        return None
    v = val.v
    end = float(np.median(v[-3:])) if v.size >= 3 else float(v[-1])
    rise = end - float(v[val.best_i])
    after = v[val.best_i :]
    slope = theil_sen_slope(np.arange(after.size), after)
    if rise <= max(OVERFIT_RISE * val.unit, NOISE_Z * val.noise) or slope <= 0:
        return None
    train = val.train
    train_fell = True
    if np.isfinite(train[val.best_i]) and np.isfinite(train[-1]):
        train_fell = train[-1] < train[val.best_i]
    elif ctx.train is not None:
        train_fell = ctx.train.end <= ctx.train.best + NOISE_Z * ctx.train.noise_bin
    if not train_fell:
        return None
    best_epoch = int(val.epochs[val.best_i])
    evidence = {
        "best_epoch": best_epoch,
        "best_val_loss": float(v[val.best_i]),
        "final_val_loss": float(v[-1]),
        "rise_fraction": rise / val.unit,
        "train_loss_at_best": float(train[val.best_i]),
        "final_train_loss": float(train[-1]),
    }
    step = ctx.curves.step_of_epoch(best_epoch + 1)
    return Finding(
        "overfitting",
        "warning",
        step=step,
        epoch=best_epoch + 1,
        evidence=evidence,
        advice=(
            f"stop after epoch {_epoch_text(best_epoch)} where validation loss was lowest "
            f"({_fmt(float(v[val.best_i]))}; early_stopping with patience 3), or add "
            "regularisation: weight decay 5e-4 (SGD) / 0.05 (AdamW), data augmentation, "
            "more training data"
        ),
        summary=(
            f"validation loss rose from {_fmt(float(v[val.best_i]))} at epoch "
            f"{_epoch_text(best_epoch)} "
            f"to {_fmt(float(v[-1]))} while training loss kept falling"
        ),
    )


def _late_gain(x: np.ndarray, y: np.ndarray, unit: float) -> float:
    """Projected further drop, as a fraction of ``unit``, if the run went on as long
    again at the Theil-Sen slope of its second half (positive: still falling)."""
    h = min(y.size // 2, y.size - 2)
    slope = theil_sen_slope(x[h:], y[h:])
    return -slope * float(x[-1] - x[0]) / unit


def rule_underfitting(ctx: Context) -> Finding | None:
    """Training stopped while still improving: going on as long again at the slope of
    the second half would lower the training loss by more than ``UNDERFIT_GAIN`` of its
    drop so far, and the validation loss (when logged) by more than
    ``UNDERFIT_VAL_GAIN``, which is lowest in the last two epochs. A well-trained run does most of its learning early."""
    c, t, val = ctx.curves, ctx.train, ctx.val
    if t is None or t.drop <= NOISE_Z * t.noise_bin:
        return None
    gain = _late_gain(t.xb, t.mb, t.unit)
    if gain <= UNDERFIT_GAIN:
        return None
    val_gain = None
    if val is not None:
        # epoch 0's value already includes a full epoch of training: measure the
        # validation drop from the initial training loss when that is higher
        steps = np.where(np.isfinite(val.steps), val.steps, val.epochs)
        x = np.concatenate([[t.x[0]], steps])
        y = np.concatenate([[max(t.init, val.v[0])], val.v])
        val_gain = _late_gain(x, y, val.unit)
        if val_gain <= UNDERFIT_VAL_GAIN or val.best_i < val.v.size - 2:
            return None
    # a curve that has hardly bent may also mean a small step size (see rule_too_slow)
    d_first, d_mid, w_first, w_mid = _third_drops(t, c)
    rate_first, rate_mid = d_first / max(w_first, 1e-300), d_mid / max(w_mid, 1e-300)
    lr = c.peak_lr()
    lr_note = ""
    if rate_first > 0 and rate_mid >= SLOW_STRAIGHTNESS * rate_first and math.isfinite(lr):
        lr_note = (
            f"; the curve has hardly bent, so also check whether a higher learning rate "
            f"than {_fmt(lr)} trains faster (lrpilot find)"
        )
    epochs_run = int(c.epoch_x[-1]) + 1 if c.epoch_x.size else None
    more = (
        f"train for about {2 * epochs_run} epochs instead of {epochs_run}"
        if epochs_run
        else "train about twice as long"
    )
    return Finding(
        "underfitting",
        "warning",
        step=int(t.x[-1]),
        epoch=ctx.epoch_at(t.x[-1]),
        evidence={
            "late_train_gain": gain,
            "late_val_gain": val_gain,
            "final_train_loss": t.end,
            "epochs_run": epochs_run,
        },
        advice=f"{more} (keep the schedule's shape), or use a larger model{lr_note}",
        summary=(
            "training stopped while the loss was still falling: as long again would lower "
            f"it by about {gain:.0%} of its drop so far"
        ),
    )


def _flat_from(x: np.ndarray, y: np.ndarray, unit: float, noise: float) -> int | None:
    """First index from which ``y`` stays flat to the end, or ``None``: for that index and
    every later one, the level is within ``PLATEAU_TOLERANCE * unit + 2 * noise`` of the
    end level (median of the last quarter) and so is the drop along the Theil-Sen trend
    from there to the end."""
    k = y.size
    if k < 3:
        return None
    end_level = float(np.median(y[k - max(2, k // 4) :]))
    allowed = PLATEAU_TOLERANCE * unit + 2 * noise
    first = None
    for j in range(k - 2, -1, -1):  # from the end back to the first index that is not flat
        if y[j] - end_level > allowed:
            break
        if -theil_sen_slope(x[j:], y[j:]) * float(x[-1] - x[j]) > allowed:
            break
        first = j
    return first


def rule_plateau(ctx: Context) -> Finding | None:
    """The loss stopped improving at a constant learning rate: from the plateau start on,
    the smoothed training loss and (when logged) the validation loss stay within
    ``PLATEAU_TOLERANCE`` of their drop of the end level with no falling trend (see
    :func:`_flat_from`); the plateau covers at least ``PLATEAU_MIN_FRACTION`` of the run
    and ``PLATEAU_MIN_EPOCHS`` epochs, and the learning rate stayed within
    ``PLATEAU_LR_RATIO``. A decay would help. The start is the latest of the training
    and validation plateau starts and the last change of the learning rate (a guard
    rescue's cut, a step decay)."""
    c, t, val = ctx.curves, ctx.train, ctx.val
    if t is None or t.drop <= NOISE_Z * t.noise_bin:
        return None
    j = _flat_from(t.xb, t.mb, t.unit, t.noise_bin)
    if j is None:
        return None
    start_x = float(t.xb[j])
    if val is not None:
        steps = np.where(np.isfinite(val.steps), val.steps, val.epochs)
        jv = _flat_from(steps, val.v, val.unit, val.noise)
        if jv is None:
            return None
        # the plateau starts after the epoch whose end first reached the flat level
        start_x = max(start_x, float(steps[jv]))
    xs, lrs = c.lr_series()
    if xs.size:  # always true when run through diagnose (see _needs_lr)
        # a plateau is judged at a constant learning rate: after its last change
        if lrs.min() <= 0:
            return None
        changed = (np.maximum.accumulate(lrs[::-1]) / np.minimum.accumulate(lrs[::-1]))[::-1]
        constant_from = float(xs[int(np.argmax(changed <= PLATEAU_LR_RATIO))])
        start_x = max(start_x, constant_from)
    span = float(t.x[-1] - t.x[0]) or 1.0
    fraction = float(t.x[-1] - start_x) / span
    if fraction < PLATEAU_MIN_FRACTION:
        return None
    epoch = ctx.epoch_at(start_x)
    last_epoch = ctx.epoch_at(t.x[-1])
    if epoch is not None and last_epoch is not None and last_epoch - epoch + 1 < PLATEAU_MIN_EPOCHS:
        return None
    window = lrs[xs >= start_x]
    lr = float(window[0]) if window.size else math.nan
    where = f"epoch {_epoch_text(epoch)}" if epoch is not None else f"step {int(start_x)}"
    return Finding(
        "plateau",
        "info",
        step=int(start_x),
        epoch=epoch,
        evidence={
            "plateau_fraction": fraction,
            "final_loss": t.end,
            "drop": t.drop,
            "lr": lr,
        },
        advice=(
            f"start decay or reduce on plateau at {where} (the learning rate stayed at "
            f"{_fmt(lr)}): e.g. cosine to 0 from there, or ReduceLROnPlateau factor 0.1 "
            "patience 2"
        ),
        summary=f"the loss stopped improving from {where} at a constant learning rate",
    )


# ====================================================================== registry


def _needs_nothing(ctx: Context) -> str | None:
    return None


def _needs_train(ctx: Context) -> str | None:
    if ctx.train is None:
        return (
            f"fewer than {MIN_TRAIN_POINTS} finite logged training losses and fewer than "
            f"{MIN_TRAIN_EPOCHS} epochs"
        )
    return None


def _needs_val(ctx: Context) -> str | None:
    if ctx.val is None or ctx.val.v.size < MIN_OVERFIT_EPOCHS:
        return f"fewer than {MIN_OVERFIT_EPOCHS} epochs with a validation loss"
    return None


def _needs_lr(ctx: Context) -> str | None:
    reason = _needs_train(ctx)
    if reason is not None:
        return reason
    if ctx.curves.lr_series()[0].size < 2:
        return "no learning rate logged (a plateau is judged at a constant learning rate)"
    return None


def _needs_epochs(ctx: Context) -> str | None:
    reason = _needs_train(ctx)
    if reason is not None:
        return reason
    c = ctx.curves
    n = max(int(np.isfinite(c.epoch_val).sum()), int(np.isfinite(c.epoch_train).sum()))
    if n < MIN_OSC_EPOCHS:
        return f"fewer than {MIN_OSC_EPOCHS} epochs"
    return None


for _rule in (
    Rule("nan", rule_nan, _needs_nothing),
    Rule("diverged", rule_diverged, _needs_nothing),
    Rule("oscillating", rule_oscillating, _needs_epochs),
    Rule("overfitting", rule_overfitting, _needs_val),
    Rule("too_slow", rule_too_slow, _needs_train),
    Rule("underfitting", rule_underfitting, _needs_train),
    Rule("plateau", rule_plateau, _needs_lr),
):
    register_rule(_rule)
