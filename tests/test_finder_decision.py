"""Pure decision functions on synthetic curves with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lrpilot.errors import ConfigError
from lrpilot.finder.core import combine_records
from lrpilot.finder.decision import (
    BOOTSTRAP,
    HOLD,
    MARGIN,
    NOISY_DROP,
    RISE,
    _bootstrap_crossings,
    _crossing,
    _level,
    analyze_curve,
    median3,
    smooth_curve,
)
from lrpilot.finder.policy import (
    CALIBRATION_RATIOS,
    OPTIMIZER_FAMILIES,
    SCHEDULE_FRACTIONS,
    suggest_peak_lr,
    suggestion_interval,
)
from lrpilot.finder.protocol import PROBE_BATCH_DIVISOR
from lrpilot.finder.sweep import SweepRecord

LRS = [10 ** (-5 + 0.05 * i) for i in range(121)]  # 1e-5 .. 10, 20 points per decade


def _u_curve(lr_break=0.1, noise=0.0, seed=0, l0=2.3, floor=0.8, offset=0.0):
    """Falls from l0 to floor around 1e-3, then climbs by 3 * (l0 - floor) per decade from
    lr_break: the level floor + 0.5 * (l0 - floor) is crossed at lr_break * 10 ** (1 / 6)."""
    rng = np.random.default_rng(seed)
    out = []
    for lr in LRS:
        x = math.log10(lr)
        y = floor + (l0 - floor) / (1 + math.exp(6 * (x + 3)))
        if lr > lr_break:
            y += 3.0 * (l0 - floor) * (x - math.log10(lr_break))
        out.append(y + offset + noise * rng.standard_normal())
    return out


def test_crossing_matches_closed_form_and_interval_contains_it():
    a = analyze_curve(LRS, _u_curve(), initial_loss=2.3)
    # level = 0.8 + 0.5 * 1.5 = 1.55: 4.5 * (x - x_break) = 0.75 -> x = x_break + 1/6
    exact = 0.1 * 10 ** (1 / 6)
    assert a.verdict == "ok"
    assert abs(math.log10(a.lr_unstable / exact)) < 0.05
    assert a.interval[0] <= a.lr_unstable <= a.interval[1]


def test_same_answer_for_negative_losses():
    # negative losses are analysed on the linear scale, which does not see an offset
    pos = analyze_curve(LRS, _u_curve(), initial_loss=2.3, scale="linear")
    neg = analyze_curve(LRS, _u_curve(offset=-100.0), initial_loss=2.3 - 100.0)
    assert neg.verdict == "ok" and neg.scale == "linear"
    assert neg.lr_unstable == pytest.approx(pos.lr_unstable, rel=1e-6)


def test_positive_losses_are_analysed_on_the_log_scale_which_ignores_units():
    # ln(loss): an MSE in other units (the loss times a constant) gives the same answer
    base = analyze_curve(LRS, _u_curve(noise=0.02, seed=6), initial_loss=2.3)
    scaled = analyze_curve(
        LRS, [1000.0 * v for v in _u_curve(noise=0.02, seed=6)], initial_loss=2300.0
    )
    assert base.scale == "log" and base.verdict == "ok"
    assert scaled.lr_unstable == pytest.approx(base.lr_unstable, rel=1e-9)
    assert scaled.interval == pytest.approx(base.interval, rel=1e-9)
    # closed form on the log scale: the level is the geometric mean sqrt(2.3 * 0.8) (half of
    # the progress in ln), crossed where 0.8 + 4.5 * (x - x_break) reaches it
    exact = 0.1 * 10 ** ((math.sqrt(2.3 * 0.8) - 0.8) / 4.5)
    clean = analyze_curve(LRS, _u_curve(), initial_loss=2.3)
    assert abs(math.log10(clean.lr_unstable / exact)) < 0.05
    # smoothed and slope are reported in loss units
    assert min(clean.smoothed) == pytest.approx(0.8, abs=0.02)
    with pytest.raises(ConfigError, match="scale='log' needs positive losses"):
        analyze_curve(LRS, _u_curve(offset=-100.0), initial_loss=-97.7, scale="log")
    with pytest.raises(ConfigError, match="scale='cubic' is not one of auto, log, linear"):
        analyze_curve(LRS, _u_curve(), initial_loss=2.3, scale="cubic")


def test_single_spike_is_ignored():
    clean = _u_curve(noise=0.02, seed=1)
    spiky = list(clean)
    spiky[40] += 50.0  # one absurd batch at lr = 1e-3
    spiky[70] = 1e6
    a, b = analyze_curve(LRS, clean, 2.3), analyze_curve(LRS, spiky, 2.3)
    assert b.verdict == "ok"
    assert b.lr_unstable == pytest.approx(a.lr_unstable, rel=0.05)


def test_noise_gives_a_wider_interval_that_still_covers_the_truth():
    exact = 0.1 * 10 ** (1 / 6)
    quiet = analyze_curve(LRS, _u_curve(noise=0.01, seed=2), 2.3)
    noisy = analyze_curve(LRS, _u_curve(noise=0.3, seed=2), 2.3)
    width = [math.log10(x.interval[1] / x.interval[0]) for x in (quiet, noisy)]
    assert width[1] > width[0]
    assert noisy.interval[0] <= exact * 1.3 and noisy.interval[1] >= exact / 1.3


def test_interval_of_a_real_sweep_stays_near_its_crossing():
    """A recorded ``lrpilot find`` sweep (mnist1d-cnn, SGD, probe batch 8): the loss is quiet
    for three decades (residuals about 0.003) and noisy near the instability (about 0.1).
    A bootstrap that moved the late residuals into the quiet start faked crossings there:
    the interval's low end was 1.1e-4 x lr_unstable. Residuals that keep their place give
    an interval around the crossing."""
    path = Path(__file__).parent / "data" / "finder_curve_mnist1d_cnn.json"
    curve = json.loads(path.read_text())
    losses = [math.nan if v is None else v for v in curve["losses"]]
    a = analyze_curve(curve["lrs"], losses, curve["initial_loss"], scale="linear")
    assert a.verdict == "ok" and a.lr_unstable == pytest.approx(0.1292, rel=1e-3)
    assert 0.5 * a.lr_unstable <= a.interval[0] <= a.lr_unstable <= a.interval[1]
    assert a.interval[1] <= 5 * a.lr_unstable


def test_bootstrap_of_a_curve_without_residuals_is_the_curve():
    """Wild bootstrap: ``smoothed + sign * residual``; with zero residuals every replicate is
    the curve itself (smoothed once more), so every replicate crosses where it does."""
    x = np.log10(np.asarray(LRS))
    smoothed, _, _ = smooth_curve(x, _u_curve())
    again, _, _ = smooth_curve(x, smoothed)
    crossing = _crossing(x, again, _level(2.3, float(again.min()), 1e-3, RISE, MARGIN), HOLD)
    boots = _bootstrap_crossings(
        x, smoothed, np.zeros_like(x), 2.3, 1e-3, RISE, MARGIN, HOLD, None, float(x[-1])
    )
    assert boots.shape == (BOOTSTRAP,)
    assert crossing is not None and np.all(boots == crossing)


def test_deterministic():
    y = _u_curve(noise=0.2, seed=3)
    assert analyze_curve(LRS, y, 2.3) == analyze_curve(LRS, y, 2.3)


def test_verdict_flat():
    rng = np.random.default_rng(0)
    y = list(2.3 + 0.01 * rng.standard_normal(len(LRS)))
    a = analyze_curve(LRS, y, 2.3)
    assert a.verdict == "flat" and a.lr_unstable is None and "moved" in a.message


def test_verdict_noisy_when_the_drop_is_within_four_noise_units():
    # the loss falls by 0.3 and climbs at the end, measured with noise 0.2 (as a batch-8 sweep
    # of a task with noisy labels): no instability point is trusted
    # (the linear scale, where the drop and the noise are in loss units)
    y = _u_curve(noise=0.2, seed=4, floor=2.0)
    a = analyze_curve(LRS, y, 2.3, scale="linear")
    assert a.verdict == "noisy" and a.lr_unstable is None and a.interval is None
    j = int(np.argmin(a.smoothed))
    assert max(max(a.smoothed[: j + 1]), 2.3) - a.smoothed[j] < NOISY_DROP * a.noise
    assert a.lr_min_loss is not None and "times its noise" in a.message
    # the same curve measured 10x more precisely is usable, and the rule is the only change
    clean = analyze_curve(LRS, _u_curve(noise=0.02, seed=4, floor=2.0), 2.3, scale="linear")
    assert clean.verdict == "ok" and 2.3 - min(clean.smoothed) >= NOISY_DROP * clean.noise
    # the drop counts from the highest level before the minimum, not only from L0: a loss
    # measured far above the initial loss at first (find_lr's own doctest) that then falls
    # clearly is not noisy, although L0 - Lmin is under 4 sigma here
    noisy_dip = _u_curve(noise=0.2, seed=4, floor=2.0)  # "noisy" above
    raised = [v + (3.0 if i < 30 else 0.0) for i, v in enumerate(noisy_dip)]
    b = analyze_curve(LRS, raised, 2.1, scale="linear")
    assert b.verdict == "ok" and 2.1 - min(b.smoothed) < NOISY_DROP * b.noise
    # a loss that climbs from the first LRs is still "diverged at once", not "noisy"
    rising = [2.3 + 0.5 * i + 0.2 * math.sin(i) for i in range(len(LRS))]
    assert analyze_curve(LRS, rising, 2.3, scale="linear").verdict == "diverged at once"
    assert analyze_curve(LRS, rising, 2.3).verdict == "diverged at once"


def test_verdict_never_diverged():
    y = [2.3 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 3))) for lr in LRS]
    a = analyze_curve(LRS, y, 2.3)
    assert a.verdict == "never diverged" and a.lr_unstable is None and "end_lr" in a.message


def test_verdict_diverged_at_once():
    y = [2.3 + 0.5 * i for i in range(len(LRS))]
    assert analyze_curve(LRS, y, 2.3).verdict == "diverged at once"
    nan_first = [math.nan, *y[1:]]
    a = analyze_curve(LRS, nan_first, 2.3)
    assert a.verdict == "diverged at once" and a.lr_unstable is None


def test_verdict_too_short_and_empty():
    assert analyze_curve(LRS[:3], [2.3, 2.2, 2.1], 2.3).verdict == "too short"
    assert analyze_curve([], [], None).verdict == "too short"


def test_nan_after_progress_brackets_the_instability():
    y = _u_curve()
    k = next(i for i, lr in enumerate(LRS) if lr > 0.1)  # NaN right where the climb starts
    y = y[:k] + [math.nan] * (len(y) - k)
    a = analyze_curve(LRS, y, 2.3)
    assert a.verdict == "ok"
    assert LRS[k - 1] <= a.lr_unstable <= LRS[k]
    assert a.interval == pytest.approx((LRS[k - 1], LRS[k]))


def test_bad_inputs():
    with pytest.raises(ConfigError, match="differ in length"):
        analyze_curve([1e-3, 1e-2], [1.0], None)
    with pytest.raises(ConfigError, match="> 0"):
        analyze_curve([0.0, 1e-2], [1.0, 1.0], None)
    with pytest.raises(ConfigError, match="one_cycle"):
        suggest_peak_lr(0.1, "linear", "sgd")
    with pytest.raises(ConfigError, match=r"'lion'.*adam, sgd"):
        suggest_peak_lr(0.1, "cosine", "lion")
    for bad in (0.0, -8.0, math.nan):
        with pytest.raises(ConfigError, match="batch_ratio"):
            suggest_peak_lr(0.1, "cosine", "sgd", batch_ratio=bad)
    with pytest.raises(ConfigError, match="'lion'"):
        combine_records([], "cosine", "lion")


def test_smoothing_is_centred_and_exact_on_lines():
    x = np.linspace(-4, 0, 41)
    s, slope, _ = smooth_curve(x, 3 * x + 1)
    assert np.allclose(s, 3 * x + 1) and np.allclose(slope, 3.0)
    # A symmetric bump stays where it is (an EMA would shift it to the right).
    bump = np.exp(-((x + 2) ** 2) / 0.1)
    s, _, _ = smooth_curve(x, bump)
    assert x[int(np.argmax(s))] == pytest.approx(-2.0)
    assert median3([1.0, 9.0, 1.0, 1.0]).tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
@pytest.mark.parametrize("ratio", [1.0, 2.0, 8.0, 12.5])
def test_suggestion_closed_form_per_optimizer_family(schedule, ratio):
    f = SCHEDULE_FRACTIONS[schedule]
    assert OPTIMIZER_FAMILIES == {"sgd": 1.0, "adam": 0.5}  # linear / square-root scaling
    sgd = suggest_peak_lr(0.04, schedule, "sgd", ratio)
    adam = suggest_peak_lr(0.04, schedule, "adam", ratio)
    assert sgd == pytest.approx(f * ratio * 0.04, rel=1e-12)
    assert adam == pytest.approx(f * math.sqrt(ratio) * 0.04, rel=1e-12)
    assert sgd / adam == pytest.approx(math.sqrt(ratio), rel=1e-12)
    assert suggest_peak_lr(None, schedule, "adam", ratio) is None
    lo, hi = CALIBRATION_RATIOS[schedule]
    assert lo <= f <= hi  # the fitted fraction lies within the calibration tasks' spread
    assert suggestion_interval((0.01, 0.05), schedule, "adam", ratio) == pytest.approx(
        (lo * math.sqrt(ratio) * 0.01, hi * math.sqrt(ratio) * 0.05), rel=1e-12
    )
    assert suggestion_interval(None, schedule, "sgd", ratio) is None


def test_default_batch_ratio_is_the_protocol_divisor():
    assert PROBE_BATCH_DIVISOR == 8
    assert suggest_peak_lr(0.1, "cosine", "sgd") == suggest_peak_lr(0.1, "cosine", "sgd", 8)


@pytest.mark.parametrize("family, ratio", [("sgd", 8.0), ("adam", 8.0), ("adam", 2.0)])
def test_suggestion_is_the_documented_rule_and_result_serialises(family, ratio):
    lrs = LRS[:90]
    losses = _u_curve()[:90]
    rec = SweepRecord(lrs, losses, 2.3, 90 * 8, 89, 2, "diverged")
    res = combine_records([rec], "cosine", family, ratio)
    assert res.verdict == "ok"
    transfer = ratio ** (1.0 if family == "sgd" else 0.5)
    assert res.optimizer_family == family and res.batch_ratio == ratio
    assert res.suggestion == pytest.approx(
        SCHEDULE_FRACTIONS["cosine"] * transfer * res.lr_unstable, rel=1e-12
    )
    assert res.suggest("one_cycle") == pytest.approx(
        SCHEDULE_FRACTIONS["one_cycle"] * transfer * res.lr_unstable, rel=1e-12
    )
    lo, hi = CALIBRATION_RATIOS["cosine"]
    assert res.suggestion_interval == pytest.approx(
        (lo * transfer * res.unstable_interval[0], hi * transfer * res.unstable_interval[1])
    )
    assert res.suggestion_interval[0] <= res.suggestion <= res.suggestion_interval[1]
    assert res.confidence in ("high", "medium", "low")
    d = json.loads(json.dumps(res.to_dict()))
    for key in (
        "lrs",
        "losses",
        "smoothed",
        "lr_unstable",
        "suggestion",
        "verdict",
        "samples",
        "optimizer_family",
        "batch_ratio",
    ):
        assert key in d
    assert d["skipped_steps"] == 2
    with pytest.raises(ConfigError):
        res.suggest("warmup_only")


def test_repeats_are_pooled_and_spread_widens_the_interval():
    a = SweepRecord(LRS, _u_curve(lr_break=0.1, noise=0.02, seed=1), 2.3, 0, 0, 0, "completed")
    b = SweepRecord(LRS, _u_curve(lr_break=0.2, noise=0.02, seed=2), 2.3, 0, 0, 0, "completed")
    res = combine_records([a, b], "one_cycle", "sgd")
    assert res.verdict == "ok"
    r1, r2 = res.repeat_lr_unstable
    assert r1 < r2
    assert res.unstable_interval[0] <= r1 and res.unstable_interval[1] >= r2
    assert r1 <= res.lr_unstable <= r2
    assert len(res.lrs) == 2 * len(LRS)


def test_unusable_curve_gives_no_number():
    rec = SweepRecord(LRS, [2.3] * len(LRS), 2.3, 0, 0, 0, "completed")
    res = combine_records([rec], "one_cycle", "adam")
    assert res.verdict == "flat"
    assert res.suggestion is None and res.suggestion_interval is None
    assert res.confidence == "none"
    assert res.suggest("cosine") is None
