"""Diagnosis rules for an unstable run: ``nan``, ``diverged`` and ``oscillating`` (each a
pure function of a :class:`~lrpilot.diagnosis.context.Context`; see
:mod:`lrpilot.diagnosis.rules` for the notation, the references and the registration).
"""

from __future__ import annotations

import math

import numpy as np

from lrpilot.diagnosis.chance import chance_epochs
from lrpilot.diagnosis.context import (
    NOISE_Z,
    Context,
    TrainProfile,
)
from lrpilot.diagnosis.curves import mad_sigma
from lrpilot.diagnosis.finding import Finding

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

#: A smaller rebound still counts when the loss jumped to a higher level and stayed there:
#: from the first smoothed point clearly above the best to the end (at least
#: REBOUND_SUSTAIN of the run) every point stays above the best by the margin, and the end
#: is at least this fraction of the drop above the best (seen on a small transformer at 4x
#: its best LR: 2.3 -> 3.0-3.4, never recovered; a swing that comes back down is
#: oscillation).
JUMP_FRACTION = 0.25

#: A run that made no progress but first rose above its start by this many noise deviations
#: and ended at chance level died (a constant prediction): its learning rate was too high,
#: not too low. A run at too low a learning rate never rises clearly above its start (seen:
#: mnist1d-mlp, AdamW at LR 0.3 logged every 10 steps, 18 deviations at step 10, then 6
#: epochs at chance; a Gaussian series' maximum over a few hundred points is about 3).
DEAD_RISE_Z = 10.0

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

# ---------------------------------------------------------------- advice defaults
#: Divide the learning rate by this when the loss blew up or went NaN.
DIVERGED_FACTOR = 10.0
#: Divide it by this when it rebounded or needed guard rescues but recovered.
REBOUND_FACTOR = 3.0


def _epoch_text(epoch: int | None) -> str:
    """An epoch index (0-based in records) as text, counted from 1 like the progress lines."""
    return "?" if epoch is None else str(epoch + 1)


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


def _ends_at_chance(c) -> bool:  # type: ignore[no-untyped-def]
    """The last logged epoch is at chance level (:mod:`lrpilot.diagnosis.chance`)."""
    _, at = chance_epochs(c)
    return bool(at) and c.epoch_x.size > 0 and at[-1] == int(c.epoch_x[-1])


def _died(t: TrainProfile, c) -> bool:  # type: ignore[no-untyped-def]
    """No real progress, a rise above the start by ``DEAD_RISE_Z`` noise deviations, and
    the run ends at chance level (see ``DEAD_RISE_Z``)."""
    if t.drop > NOISE_Z * t.noise_bin:
        return False
    spread = max(t.noise, mad_sigma(t.y[t.y.size // 2 :]), 1e-12 * max(1.0, abs(t.init)))
    return float(np.max(t.y)) - t.init > DEAD_RISE_Z * spread and _ends_at_chance(c)


def _jumped(t: TrainProfile, margin: float) -> bool:
    """The loss rose to a higher level and stayed there (see ``JUMP_FRACTION``): every
    smoothed point from the first one after the best that is more than ``margin`` above it
    to the end stays above it by ``margin``, that stretch covers at least
    ``REBOUND_SUSTAIN`` of the run, and the end is ``JUMP_FRACTION`` of the drop above."""
    if t.end - t.best <= JUMP_FRACTION * t.unit:
        return False
    after = np.where((t.xb > t.best_x) & (t.mb - t.best > margin))[0]
    if after.size == 0:
        return False
    span = float(t.xb[-1] - t.x[0]) or 1.0
    stretch = t.mb[after[0] :]
    long_enough = float(t.xb[-1] - t.xb[after[0]]) >= REBOUND_SUSTAIN * span
    return long_enough and bool(np.all(stretch - t.best > margin))


def _sustained(t: TrainProfile, margin: float) -> bool:
    """Every smoothed point in the last ``REBOUND_SUSTAIN`` of the run (at least two
    groups) lies more than ``margin`` above the best: the rise has lasted."""
    span = float(t.xb[-1] - t.x[0]) or 1.0
    tail = t.mb[t.xb >= t.xb[-1] - REBOUND_SUSTAIN * span]
    if tail.size < 2:
        tail = t.mb[-2:]
    return bool(np.all(tail - t.best > margin))


def _curve_divergence(t: TrainProfile) -> tuple[str | None, float | None]:
    """``(reason, where it starts)`` when the training curve alone shows a divergence
    (``rebound``, ``jump``, ``blowup``, ``above_start``; see :func:`rule_diverged`), else
    ``(None, None)``."""
    rebound = t.end - t.best
    tail_low = float(np.min(t.mb[-2:])) - t.best
    late = t.y[t.y.size // 2 :]
    spread = max(t.noise, mad_sigma(late), 1e-12 * max(1.0, abs(t.init)))
    blowup = float(np.max(t.y)) - t.init
    margin = max(NOISE_Z * t.noise_bin, 0.1 * rebound)
    # where a rise starts: the first group after the best clearly above it
    after = np.where((t.xb > t.best_x) & (t.mb - t.best > margin))[0]
    rise_x = float(t.xb[after[0]]) if after.size else t.best_x
    rose = t.drop > 0 and tail_low > NOISE_Z * t.noise_bin
    if (
        rose
        and rebound > REBOUND_FRACTION * t.unit
        and (rebound >= REBOUND_LOST * t.unit or _sustained(t, margin))
    ):
        return "rebound", rise_x
    if rose and _jumped(t, margin):
        return "jump", rise_x
    if blowup > BLOWUP_Z * spread and t.init - t.end < NOISE_Z * t.noise_bin:
        return "blowup", float(t.x[int(np.argmax(t.y > t.init + BLOWUP_Z * spread))])
    if t.drop <= NOISE_Z * t.noise_bin and float(np.median(t.y)) - t.init > ABOVE_START_Z * t.noise:
        return "above_start", float(t.x[0])
    return None, None


def _divergence(c, t: TrainProfile | None, rescues: list[dict]):  # type: ignore[no-untyped-def]
    """``(reason, where it starts)`` of a divergence (:func:`rule_diverged`), or
    ``(None, None)``: the curve's own reasons first, then a run that died at chance
    (``dead``), one the guard rescued that ended at chance (``chance``), and repeated
    rescues (``guard``)."""
    reason, start_x = _curve_divergence(t) if t is not None else (None, None)
    if reason is not None:
        return reason, start_x
    if t is not None and _died(t, c):
        spread = max(t.noise, mad_sigma(t.y[t.y.size // 2 :]), 1e-12 * max(1.0, abs(t.init)))
        return "dead", float(t.x[int(np.argmax(t.y > t.init + DEAD_RISE_Z * spread))])
    first = float(rescues[0].get("step", c.step_x[0] if c.step_x.size else 1)) if rescues else None
    if rescues and _ends_at_chance(c):
        return "chance", first  # the guard saw a divergence, and the run never left chance
    if len(rescues) >= GUARD_MIN_RESCUES:
        return "guard", first
    return None, None


def rule_diverged(ctx: Context) -> Finding | None:
    """The loss blew up without recovering, rose back well above its best and stayed
    there, or the divergence guard had to rescue the run.

    A rebound (the smoothed loss ends more than ``REBOUND_FRACTION`` of its drop above
    its best) counts only when it is sustained, i.e. the whole last ``REBOUND_SUSTAIN``
    of the run stays above the best, or when it gave back ``REBOUND_LOST`` of the drop:
    bounded swings that come back down are oscillation (:func:`rule_oscillating`)."""
    c, t = ctx.curves, ctx.train
    rescues = c.guard_rescues()
    reason, start_x = _divergence(c, t, rescues)
    if reason is None:
        return None
    step = int(start_x) if start_x is not None else None
    peak = c.peak_lr(until=step) if step is not None else c.peak_lr()
    recovered = (
        t is not None
        and reason not in ("blowup", "chance", "dead")
        and t.init - t.end > NOISE_Z * t.noise_bin
    )
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
        "jump": "the training loss jumped to a higher level and stayed there",
        "dead": (
            "the training loss rose above its start, then sat at chance level: the network "
            "died (a constant prediction)"
        ),
        "blowup": "the training loss blew up and never got back below its start",
        "above_start": "the training loss never fell below its start and ran above it",
        "guard": f"the divergence guard had to rescue the run {len(rescues)} time(s)",
        "chance": (
            f"the divergence guard rescued the run {len(rescues)} time(s) and it ended at "
            "chance level (a constant prediction: the rescue did not save it)"
        ),
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
    if reason in ("rebound", "jump"):
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


_Series = dict[str, tuple[np.ndarray, np.ndarray, float]]


def _osc_series(ctx: Context) -> _Series | None:
    """``name -> (epochs, values, unit)`` of the epoch series long enough to judge
    (``None`` when none is): the epoch-mean training loss without the epochs the guard
    rescued, and the validation loss."""
    c, t, val = ctx.curves, ctx.train, ctx.val
    assert t is not None
    # an epoch the divergence guard rescued holds a spike the guard already handled (and
    # steps it ran twice): its training mean is not evidence of oscillation
    rescued = [e["epoch"] for e in c.guard_rescues() if isinstance(e.get("epoch"), int)]
    ok = np.isfinite(c.epoch_train) & ~np.isin(c.epoch_x, rescued)
    train_epochs, train_series = c.epoch_x[ok], c.epoch_train[ok]
    n = max(train_series.size, 0 if val is None else val.v.size)
    if n < MIN_OSC_EPOCHS:
        return None
    series: _Series = {}
    if train_series.size >= MIN_OSC_EPOCHS:
        series["training"] = (train_epochs, train_series, t.unit)
    if val is not None and val.v.size >= MIN_OSC_EPOCHS:
        series["validation"] = (val.epochs, val.v, val.unit)
    return series


def _best_window(series: _Series) -> tuple[float, str, dict[str, float]] | None:
    """``(summed swing ratio, window, ratio per series)`` of the window that scores
    highest (``OSC_WINDOWS``)."""
    best: tuple[float, str, dict[str, float]] | None = None
    for window in OSC_WINDOWS:
        parts = {
            name: _swing(v[_window_start(window, v.size) :]) / unit
            for name, (_, v, unit) in series.items()
        }
        ratio = sum(parts.values())
        if best is None or ratio > best[0]:
            best = (ratio, window, parts)
    return best


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
    is a divergence (see :func:`rule_diverged`), which then hides this finding. The
    training means of epochs with a divergence-guard rescue are left out: the spike the
    guard undid is not a swing of the weights."""
    c, t = ctx.curves, ctx.train
    if t is None or t.drop <= NOISE_Z * t.noise_bin:
        return None  # no real progress: rises cannot be compared with a drop
    series = _osc_series(ctx)
    if series is None:
        return None
    best = _best_window(series)
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
        summary=(
            f"the loss keeps swinging up and back down: from epoch {_epoch_text(epoch)} {how}"
        ),
    )
