"""Diagnosis rules: one pure function per kind, registered in :mod:`lrpilot.diagnosis.registry`.

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

# ---------------------------------------------------------------- diverged
#: The loss came back up by more than this fraction of its drop (and NOISE_Z noise).
REBOUND_FRACTION = 0.5
#: A blow-up: the highest raw loss exceeds ``init`` by this many noise deviations ...
BLOWUP_Z = 25.0
#: ... and the run ended less than NOISE_Z group errors below ``init`` (no recovery).
#: No progress at all while the median loss sits this many (single-point) noise
#: deviations above ``init``: the steps make the loss worse, the LR is too high.
ABOVE_START_Z = 3.0

#: A rebound is a divergence only when the rise is sustained: every smoothed point in the
#: last REBOUND_SUSTAIN of the run stays above the best by the rise margin (a loss that
#: swings back down is oscillating, not diverging) ...
REBOUND_SUSTAIN = 0.25
#: ... or when the rise gave back at least this fraction of the drop (progress lost). In
#: the corpus, oscillating runs end at most 0.46 of their drop above the best, divergent
#: warmups at least 1.06 above it, runs that collapse to chance level about 1.0.
REBOUND_LOST = 0.8

#: Divergence-guard rescues that make a divergence on their own (a single rescue after
#: which the loss kept falling is a transient spike the guard handled).
GUARD_MIN_RESCUES = 2

# ---------------------------------------------------------------- oscillating
#: Mean returned swing per epoch (:func:`_swing`) over a window of epochs, as a fraction
#: of the drop, summed over the validation loss and the epoch-mean training loss. Set on
#: the corpus seeds 0-8 (with an earlier ``digits-cnn`` oscillating config, LR 0.1; see
#: bench/diagnosis_corpus.py) at the geometric mean of the highest score of a run without
#: oscillation in which this finding would not be hidden (0.018, a plateau) and the lowest
#: score of an oscillating run found by its epoch values (0.031).
OSC_SWING_RATIO = 0.024
#: Fewest epochs for judging oscillation (three in the second half).
MIN_OSC_EPOCHS = 6
#: The windows the swing is measured over (the larger ratio counts): ``"late"`` from the
#: epoch before the second half (oscillation that starts late, not diluted by the early
#: descent), ``"run"`` from epoch 1 on (oscillation that starts early and calms down;
#: the first move, out of the first epoch's value, is left out).
OSC_WINDOWS = ("late", "run")
#: Or: the smoothed step-level training loss (group medians, from the second group on)
#: swings by more than this fraction of the drop per group beyond the swing its
#: sampling noise alone makes, ``SWING_NOISE * noise_bin``. Set like OSC_SWING_RATIO, on
#: the same runs: geometric mean of 0.003 (highest without oscillation) and 0.023 (the
#: one oscillating run whose epoch values swing too little) ...
OSC_STEP_SWING = 0.008
#: ... the mean of :func:`_swing` over series of independent Gaussian values of standard
#: deviation s is about ``SWING_NOISE * s`` (seeded simulation, 4000 series each: 0.41
#: for 29 values, the usual number of groups; 0.36 for 9, 0.42 for 99).
SWING_NOISE = 0.41

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

# ---------------------------------------------------------------- advice defaults
#: Divide the learning rate by this when the loss blew up or went NaN.
DIVERGED_FACTOR = 10.0
#: Divide it by this when it rebounded or needed guard rescues but recovered.
REBOUND_FACTOR = 3.0


def _fmt(value: float) -> str:
    """Compact number for advice text: 3 significant digits."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


# ====================================================================== rules


def rule_nan(ctx: Context) -> Finding | None:
    """Any logged training or validation loss that is NaN or infinite."""
    c = ctx.curves
    bad_steps = c.step_x[~np.isfinite(c.step_loss)]
    bad_epochs = c.epoch_x[c.epoch_nonfinite]
    if bad_steps.size == 0 and bad_epochs.size == 0:
        return None
    if bad_steps.size:
        step: int | None = int(bad_steps[0])
        epoch = c.epoch_of_step(bad_steps[0])
    else:
        epoch = int(bad_epochs[0])
        step = c.step_of_epoch(epoch)
    limit = math.inf if step is None else step
    last_finite = c.step_loss[np.isfinite(c.step_loss) & (c.step_x < limit)]
    peak = c.peak_lr(until=step)
    evidence = {
        "first_nonfinite_step": step,
        "first_nonfinite_epoch": epoch,
        "nonfinite_step_records": int(bad_steps.size),
        "nonfinite_epochs": int(bad_epochs.size),
        "last_finite_loss": float(last_finite[-1]) if last_finite.size else math.nan,
        "lr_at_nan": c.lr_at(step) if step is not None else math.nan,
        "peak_lr": peak,
    }
    if math.isfinite(peak):
        advice = (
            f"lower the peak learning rate from {_fmt(peak)} to about "
            f"{_fmt(peak / DIVERGED_FACTOR)} or lower, and clip gradients (grad_clip 1.0)"
        )
    else:
        advice = "lower the learning rate about 10x and clip gradients (grad_clip 1.0)"
    return Finding(
        "nan",
        "critical",
        step=step,
        epoch=epoch,
        evidence=evidence,
        advice=advice,
        summary="the loss became NaN/inf: training broke down",
    )


def _sustained(t: TrainProfile, margin: float) -> bool:
    """Every smoothed point in the last ``REBOUND_SUSTAIN`` of the run (at least two
    groups) lies more than ``margin`` above the best: the rise has lasted."""
    span = float(t.xb[-1] - t.x[0]) or 1.0
    tail = t.mb[t.xb >= t.xb[-1] - REBOUND_SUSTAIN * span]
    if tail.size < 2:
        tail = t.mb[-2:]
    return bool(np.all(tail - t.best > margin))


def rule_diverged(ctx: Context) -> Finding | None:
    """The loss blew up without recovering, rose back well above its best and stayed
    there, or the divergence guard had to rescue the run.

    A rebound (the smoothed loss ends more than ``REBOUND_FRACTION`` of its drop above
    its best) counts only when it is sustained, i.e. the whole last ``REBOUND_SUSTAIN``
    of the run stays above the best, or when it gave back ``REBOUND_LOST`` of the drop:
    bounded swings that come back down are oscillation (:func:`rule_oscillating`)."""
    c, t = ctx.curves, ctx.train
    rescues = c.guard_rescues()
    reason = None
    start_x = None
    if t is not None:
        rebound = t.end - t.best
        tail_low = float(np.min(t.mb[-2:])) - t.best
        late = t.y[t.y.size // 2 :]
        spread = max(t.noise, mad_sigma(late), 1e-12 * max(1.0, abs(t.init)))
        blowup = float(np.max(t.y)) - t.init
        margin = max(NOISE_Z * t.noise_bin, 0.1 * rebound)
        if (
            t.drop > 0
            and rebound > REBOUND_FRACTION * t.unit
            and tail_low > NOISE_Z * t.noise_bin
            and (rebound >= REBOUND_LOST * t.unit or _sustained(t, margin))
        ):
            reason = "rebound"
            # where the rise starts: the first group after the best clearly above it
            after = np.where((t.xb > t.best_x) & (t.mb - t.best > margin))[0]
            start_x = float(t.xb[after[0]]) if after.size else t.best_x
        elif blowup > BLOWUP_Z * spread and t.init - t.end < NOISE_Z * t.noise_bin:
            reason = "blowup"
            start_x = float(t.x[int(np.argmax(t.y > t.init + BLOWUP_Z * spread))])
        elif (
            t.drop <= NOISE_Z * t.noise_bin
            and float(np.median(t.y)) - t.init > ABOVE_START_Z * t.noise
        ):
            reason = "above_start"
            start_x = float(t.x[0])
    if reason is None and len(rescues) < GUARD_MIN_RESCUES:
        return None
    if reason is None:
        reason = "guard"
        start_x = float(rescues[0].get("step", c.step_x[0] if c.step_x.size else 1))
    step = int(start_x) if start_x is not None else None
    peak = c.peak_lr(until=step) if step is not None else c.peak_lr()
    recovered = t is not None and reason != "blowup" and t.init - t.end > NOISE_Z * t.noise_bin
    factor = REBOUND_FACTOR if recovered else DIVERGED_FACTOR
    evidence: dict = {"reason": reason, "guard_rescues": len(rescues), "peak_lr": peak}
    if t is not None:
        evidence.update(
            initial_loss=t.init,
            best_loss=t.best,
            final_loss=t.end,
            max_loss=float(np.max(t.y)),
        )
    summaries = {
        "rebound": "the training loss rose back well above its best level",
        "blowup": "the training loss blew up and never got back below its start",
        "above_start": "the training loss never fell below its start and ran above it",
        "guard": f"the divergence guard had to rescue the run {len(rescues)} time(s)",
    }
    lr_text = (
        f"lower the peak learning rate from {_fmt(peak)} to about {_fmt(peak / factor)}"
        if math.isfinite(peak)
        else f"lower the learning rate about {factor:g}x"
    )
    run_peak = c.peak_lr()
    if math.isfinite(run_peak) and math.isfinite(peak) and run_peak > 1.5 * peak:
        # still warming up when it broke: the configured peak is higher still
        lr_text += f" (it broke at {_fmt(peak)} on the way to the configured peak {_fmt(run_peak)})"
        evidence["run_peak_lr"] = run_peak
    if reason == "rebound":
        lr_text += " (or decay it earlier), and consider warmup or grad_clip 1.0"
    return Finding(
        "diverged",
        "warning" if recovered else "critical",
        step=step,
        epoch=ctx.epoch_at(step) if step is not None else None,
        evidence=evidence,
        advice=lr_text,
        summary=summaries[reason],
    )


def _swing(values: np.ndarray) -> float:
    """Mean returned excursion per move of a series: the series is cut into maximal runs
    of rising and of falling moves; every rise that is followed by a fall counts with
    ``min(rise, following fall)`` (how much of it came back); the sum is divided by the
    number of moves. A monotone series scores 0, and so does a fall followed by a
    sustained rise (a V: the rise never came back) or a final rise; bounded swings up
    and back down score their size. Unchanged by shifting, linear in scaling.

    >>> _swing(np.array([3.0, 2.0, 1.0])), _swing(np.array([1.0, 2.0, 3.0]))
    (0.0, 0.0)
    >>> _swing(np.array([3.0, 1.0, 3.0]))  # a V: the rise did not come back
    0.0
    >>> _swing(np.array([3.0, 2.0, 2.5, 1.0]))  # the 0.5 rise came back: 0.5 / 3 moves
    0.16666666666666666
    """
    d = np.diff(np.asarray(values, dtype=float))
    if d.size == 0:
        return 0.0
    moves = d[d != 0]
    if moves.size < 2:
        return 0.0
    up = moves > 0
    starts = np.concatenate([[0], np.nonzero(up[1:] != up[:-1])[0] + 1])
    sums = np.add.reduceat(moves, starts)
    rising = sums > 0
    returned = rising[:-1] & ~rising[1:]
    total = np.minimum(sums[:-1][returned], -sums[1:][returned]).sum()
    return float(total) / d.size


def _window_start(window: str, n: int) -> int:
    """First index of an oscillation window over ``n`` epoch values (see OSC_WINDOWS)."""
    return n // 2 - 1 if window == "late" else 1


def rule_oscillating(ctx: Context) -> Finding | None:
    """The loss swings up and back down. Either from epoch to epoch: over a window of epochs
    (the second half of the run from the epoch before it, or the whole run from epoch 1,
    whichever scores higher; see ``OSC_WINDOWS``), the mean returned swing per epoch
    (:func:`_swing`) of the validation loss, as a fraction of its drop, plus that of the
    epoch-mean training loss, as a fraction of its drop, is at least ``OSC_SWING_RATIO``:

        swing(v) / drop_val + swing(train_mean) / drop_train >= OSC_SWING_RATIO,
        swing(s) = sum over rises followed by a fall of min(rise, fall) / number of moves

    or along the smoothed step-level training loss (group medians ``mb``, from the
    second group on), beyond what the sampling noise of the group medians explains:

        (swing(mb) - SWING_NOISE * noise_bin) / drop_train >= OSC_STEP_SWING

    Only excursions that came back count, not the net trend: a converging run only
    falls and a steady rise (divergence, overfitting) never comes back, both score 0; a
    plateau wobbles a little; bounded large swings are oscillation. Epoch values average
    many batches, and the step criterion subtracts the swing that the group medians'
    own noise makes, so this is instability of the weights, not the sampling noise of
    small batches. Every term is a ratio of differences of the same loss (scale- and
    shift-free). The boundary with ``diverged``: a rise that lasts to the end of the run
    is a divergence (see :func:`rule_diverged`), which then hides this finding."""
    c, t, val = ctx.curves, ctx.train, ctx.val
    if t is None or t.drop <= NOISE_Z * t.noise_bin:
        return None  # no real progress: rises cannot be compared with a drop
    ok = np.isfinite(c.epoch_train)
    train_epochs, train_series = c.epoch_x[ok], c.epoch_train[ok]
    n = max(train_series.size, 0 if val is None else val.v.size)
    if n < MIN_OSC_EPOCHS:
        return None
    series: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    if train_series.size >= MIN_OSC_EPOCHS:
        series["training"] = (train_epochs, train_series, t.unit)
    if val is not None and val.v.size >= MIN_OSC_EPOCHS:
        series["validation"] = (val.epochs, val.v, val.unit)
    best: tuple[float, str, dict[str, float]] | None = None
    for window in OSC_WINDOWS:
        parts = {
            name: _swing(v[_window_start(window, v.size) :]) / unit
            for name, (_, v, unit) in series.items()
        }
        ratio = sum(parts.values())
        if best is None or ratio > best[0]:
            best = (ratio, window, parts)
    step_swing = None
    if t.level == "steps" and t.mb.size >= 3:
        step_swing = (_swing(t.mb[1:]) - SWING_NOISE * t.noise_bin) / t.unit
    epoch_hit = best is not None and best[0] >= OSC_SWING_RATIO
    step_hit = step_swing is not None and step_swing >= OSC_STEP_SWING
    if not (epoch_hit or step_hit):
        return None
    ratio, window, parts = best if best is not None else (0.0, "late", {})
    epoch: int | None
    if epoch_hit:
        # the finding starts at the first rise inside the window of the largest swing
        name = max(parts, key=parts.__getitem__)
        epochs, values, _ = series[name]
        i0 = _window_start(window, values.size)
        rises = np.where(np.diff(values[i0:]) > 0)[0]
        epoch = int(epochs[i0 + 1 + int(rises[0])]) if rises.size else int(epochs[i0])
        start = c.step_of_epoch(epoch)
        how = f"it swings on average by {ratio:.0%} of its drop per epoch"
    else:
        # the first clear rise of the smoothed training loss
        window = "steps"
        rises = np.where(np.diff(t.mb[1:]) > NOISE_Z * t.noise_bin)[0]
        x0 = float(t.xb[2 + int(rises[0])]) if rises.size else float(t.xb[1])
        epoch = ctx.epoch_at(x0)
        start = int(x0)
        how = (
            f"the smoothed training loss swings by {step_swing:.0%} of its drop per "
            "point beyond its sampling noise"
        )
    lr = c.lr_at(start) if start is not None else c.peak_lr()
    evidence = {
        "swing_ratio": ratio,
        "window": window,
        "step_swing_ratio": step_swing,
        **{f"{k}_swing_ratio": v for k, v in parts.items()},
        "lr": lr,
    }
    lr_text = f"from {_fmt(lr)} to about {_fmt(lr / 3)}" if math.isfinite(lr) else "about 3x"
    return Finding(
        "oscillating",
        "warning",
        step=start,
        epoch=epoch,
        evidence=evidence,
        advice=(
            f"lower the learning rate {lr_text}, or use a 4x larger batch with the same "
            "learning rate, and decay the learning rate towards the end"
        ),
        summary=(f"the loss keeps swinging up and back down: from epoch {epoch} {how}"),
    )


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
            f"stop at epoch {best_epoch} where validation loss was lowest "
            f"({_fmt(float(v[val.best_i]))}; early_stopping with patience 3), or add "
            "regularisation: weight decay 5e-4 (SGD) / 0.05 (AdamW), data augmentation, "
            "more training data"
        ),
        summary=(
            f"validation loss rose from {_fmt(float(v[val.best_i]))} at epoch {best_epoch} "
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
    where = f"epoch {epoch}" if epoch is not None else f"step {int(start_x)}"
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
