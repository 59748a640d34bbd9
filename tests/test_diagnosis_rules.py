"""Each diagnosis rule on small recorded histories, and the "not enough data" cases.

The histories are built from simple closed-form curves plus seeded noise (unit tests of
the rules; the quality benchmark uses real runs, see bench/diagnosis_quality.py).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lrpilot.diagnosis import KINDS, RULES, Finding, diagnose, get_rule
from lrpilot.diagnosis.context import Context
from lrpilot.diagnosis.curves import Curves, mad_sigma, median, step_noise, theil_sen_slope
from lrpilot.diagnosis.stability import OSC_STEP_SWING, OSC_SWING_RATIO, SWING_NOISE, _swing
from lrpilot.errors import ConfigError
from lrpilot.history import History

STEPS_PER_EPOCH = 50


def make_history(
    train,
    val=None,
    lr=0.1,
    noise=0.02,
    seed=0,
    epochs=None,
    events=(),
) -> History:
    """Step records for ``train(t)`` (t in [0, 1]) plus noise, epoch records with the mean
    train loss and ``val(t)`` at each epoch end; ``lr`` is a constant or ``lr(t)``."""
    rng = np.random.default_rng(seed)
    epochs = epochs or 10
    total = epochs * STEPS_PER_EPOCH
    records: list[dict] = []
    per_epoch: list[float] = []
    for s in range(1, total + 1):
        t = (s - 1) / (total - 1)
        epoch = (s - 1) // STEPS_PER_EPOCH
        lr_s = lr(t) if callable(lr) else lr
        loss = float(train(t) + noise * rng.standard_normal())
        per_epoch.append(loss)
        records.append({"type": "step", "step": s, "epoch": epoch, "lr": lr_s, "train_loss": loss})
        if s % STEPS_PER_EPOCH == 0:
            rec = {
                "type": "epoch",
                "epoch": epoch,
                "step": s,
                "lr": lr_s,
                "train_loss": float(np.mean(per_epoch)),
            }
            if val is not None:
                rec["val_loss"] = float(val(t) + 0.5 * noise * rng.standard_normal())
            records.append(rec)
            per_epoch = []
    records.extend(dict(e, type="event") for e in events)
    return History.from_records(records)


def healthy_curve(t):
    return 0.1 + 2.2 * math.exp(-12 * t)


def cosine_lr(t):
    return 0.05 * (1 + math.cos(math.pi * t))


def kinds(history):
    return [f.kind for f in diagnose(history)]


def _context(history):
    return Context.build(Curves.from_history(history))


# ---------------------------------------------------------------- statistics


def test_robust_statistics_against_closed_forms():
    assert mad_sigma([1, 2, 3, 4, 100]) == pytest.approx(1.4826)
    # Gaussian noise: both estimators recover the standard deviation within 10%
    rng = np.random.default_rng(0)
    v = 0.3 * rng.standard_normal(4000) + np.linspace(5, 0, 4000)
    assert step_noise(v) == pytest.approx(0.3, rel=0.1)
    assert mad_sigma(0.3 * rng.standard_normal(4000)) == pytest.approx(0.3, rel=0.1)
    # Theil-Sen ignores an outlier that moves least squares
    x = np.arange(10.0)
    y = 2 * x + 1
    y[7] = 500
    assert theil_sen_slope(x, y) == pytest.approx(2.0)
    assert step_noise([1.0, 2.0]) == 0.0 and theil_sen_slope([1], [2]) == 0.0


def test_median_is_numpys_median_bit_for_bit():
    rng = np.random.default_rng(1)
    for n in range(1, 40):
        for trial in range(5):
            v = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)
            if trial == 1:
                v = np.round(v, 1)  # ties
            if trial == 2:
                v[rng.integers(n)] = np.inf
            if trial == 3:
                v[rng.integers(n)] = np.nan
            expected = float(np.median(v))
            got = median(v)
            assert (math.isnan(expected) and math.isnan(got)) or got == expected, (n, trial)
    assert math.isnan(median(np.array([])))


# ---------------------------------------------------------------- one test per rule


def test_healthy_cosine_run_is_healthy():
    h = make_history(healthy_curve, val=lambda t: 0.25 + 2.0 * math.exp(-12 * t), lr=cosine_lr)
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["healthy"]
    assert findings[0].severity == "info"


def test_nan_reports_first_nonfinite_step_and_lowers_peak_lr():
    h = make_history(healthy_curve, lr=0.3)
    for r in h.steps[120:]:
        r["train_loss"] = float("nan")
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["nan"]
    f = findings[0]
    assert f.step == 121 and f.epoch == 2 and f.severity == "critical"
    assert "from 0.3 to about 0.03" in f.advice


def test_nan_in_validation_only_is_found():
    h = make_history(healthy_curve, val=lambda t: 0.3 + 2 * math.exp(-10 * t), lr=cosine_lr)
    h.epochs[6]["val_loss"] = float("inf")
    f = diagnose(h)[0]
    assert f.kind == "nan" and f.epoch == 6


def test_diverged_rebound_after_improving():
    # falls, then climbs back to near its start: LR too high for the later phase
    h = make_history(lambda t: 0.3 + 2 * math.exp(-20 * t) + 1.8 * max(0.0, t - 0.5) * 2, lr=0.3)
    findings = diagnose(h)
    assert findings[0].kind == "diverged"
    assert findings[0].evidence["reason"] == "rebound"
    assert "from 0.3 to about" in findings[0].advice
    assert findings[0].step > 250  # starts in the second half


def test_diverged_blowup_then_stuck():
    def curve(t):
        return 2.3 if t < 0.01 else (80.0 if t < 0.03 else 2.35)

    h = make_history(curve, lr=1.0, noise=0.01)
    f = diagnose(h)[0]
    assert f.kind == "diverged" and f.evidence["reason"] == "blowup"
    assert f.severity == "critical"
    assert "from 1 to about 0.1" in f.advice


def test_repeated_guard_rescues_are_a_divergence():
    rescue = {"epoch": 0, "action": "guard_rescue", "lr_scale": 0.5}
    h = make_history(
        healthy_curve, lr=cosine_lr, events=[dict(rescue, step=40), dict(rescue, step=90)]
    )
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["diverged"]
    assert findings[0].evidence["guard_rescues"] == 2
    assert findings[0].step == 40
    assert findings[0].severity == "warning"  # the loss recovered after the rescues


def test_single_guard_rescue_with_recovery_is_not_a_divergence():
    rescue = {"step": 40, "epoch": 0, "action": "guard_rescue", "lr_scale": 0.5}
    h = make_history(healthy_curve, lr=cosine_lr, events=[rescue])
    assert kinds(h) == ["healthy"]


def test_too_slow_straight_line():
    h = make_history(lambda t: 2.3 - 0.3 * t, lr=1e-4, noise=0.01)
    f = diagnose(h)[0]
    assert f.kind == "too_slow"
    assert "from 0.0001 to about 0.0003" in f.advice


def test_too_slow_barely_moving():
    h = make_history(lambda t: 2.3 - 0.002 * t, lr=1e-5, noise=0.02)
    f = diagnose(h)[0]
    assert f.kind == "too_slow"
    assert "from 1e-05 to about 0.0001" in f.advice


def test_oscillating_validation_loss():
    # the validation loss alternates by +-0.3 around its trend from epoch to epoch
    h = make_history(
        lambda t: 0.6 + 1.7 * math.exp(-10 * t),
        val=lambda t: 0.9 + 1.4 * math.exp(-10 * t) + 0.3 * (-1) ** min(int(t * 20), 19),
        lr=0.05,
        epochs=20,
    )
    f = diagnose(h)[0]
    assert f.kind == "oscillating"
    assert f.evidence["validation_swing_ratio"] > f.evidence["training_swing_ratio"]
    assert f.epoch == 10
    assert "from 0.05 to about 0.0167" in f.advice


def _swing_reference(values) -> float:
    # independent re-computation with a plain loop: walk the moves, track the current
    # rise; when a fall follows a rise, the part of the rise it undoes is returned
    v = [float(x) for x in values]
    moves = [b - a for a, b in itertools.pairwise(v) if b != a]
    n_moves = max(len(v) - 1, 1)
    runs: list[float] = []
    for m in moves:
        if runs and (runs[-1] > 0) == (m > 0):
            runs[-1] += m
        else:
            runs.append(m)
    returned = sum(min(a, -b) for a, b in itertools.pairwise(runs) if a > 0 and b < 0)
    return returned / n_moves


@pytest.mark.parametrize(
    "series,expected",
    [
        ([3.0, 2.0, 1.0], 0.0),  # monotone
        ([1.0, 2.0, 3.0], 0.0),
        ([3.0, 1.0, 3.0], 0.0),  # a V: the rise never came back
        ([3.0, 2.0, 2.5, 1.0], 0.5 / 3),
        ([0.0, 1.0, 0.0, 1.0, 0.0], 2.0 / 4),
        ([2.0, 2.0, 3.0, 3.0, 2.5], 0.5 / 4),  # flat moves count as moves only
        ([5.0], 0.0),
    ],
)
def test_swing_counts_only_returned_rises(series, expected):
    assert _swing_reference(series) == pytest.approx(expected)
    assert _swing(np.array(series)) == pytest.approx(expected)


def test_swing_matches_reference_on_random_series():
    rng = np.random.default_rng(3)
    for n in (2, 3, 7, 30):
        for _ in range(20):
            v = np.round(rng.standard_normal(n), 1)  # rounding makes some flat moves
            assert _swing(v) == pytest.approx(_swing_reference(v))


def test_swing_noise_constant_matches_simulation():
    # SWING_NOISE is the mean swing of 29 independent standard normal values
    rng = np.random.default_rng(11)
    mean = np.mean([_swing(rng.standard_normal(29)) for _ in range(2000)])
    assert mean == pytest.approx(SWING_NOISE, abs=0.02)


def _swinging_val(amplitude):
    # validation loss converging with +-amplitude alternation from epoch to epoch
    return lambda t: 0.9 + 1.4 * math.exp(-10 * t) + amplitude * (-1) ** min(int(t * 20), 19)


def test_swing_ratio_matches_recomputation_and_threshold():
    # sweep the alternation amplitude across the threshold: the rule's ratio equals the
    # formula recomputed from the epoch records, and it reports iff ratio >= threshold
    outcomes = set()
    for amplitude in (0.0, 0.02, 0.04, 0.06, 0.08, 0.12, 0.3):
        h = make_history(healthy_curve, val=_swinging_val(amplitude), lr=0.05, epochs=20)
        ctx = _context(h)
        train = [r["train_loss"] for r in h.epochs]
        val = [r["val_loss"] for r in h.epochs]
        half = len(val) // 2
        expected = max(
            _swing_reference(train[start:]) / ctx.train.unit
            + _swing_reference(val[start:]) / ctx.val.unit
            for start in (half - 1, 1)  # the late window and the run from epoch 1
        )
        t = ctx.train
        step = (_swing_reference(t.mb[1:]) - SWING_NOISE * t.noise_bin) / t.unit
        f = get_rule("oscillating").check(ctx)
        reported = f is not None
        assert reported == (expected >= OSC_SWING_RATIO or step >= OSC_STEP_SWING), amplitude
        if reported:
            assert f.evidence["swing_ratio"] == pytest.approx(expected)
        outcomes.add(reported)
    assert outcomes == {True, False}


def test_early_oscillation_that_calms_down_is_found_from_its_first_rise():
    # violent swings in epochs 1-5 of 12, then a calm descent: the late window alone
    # would miss it; the whole-run window (from epoch 1) finds it
    def val(t):
        e = min(int(t * 12), 11)
        return 0.4 + 1.9 * math.exp(-6 * t) + (0.6 if e in (2, 4) else 0.0)

    h = make_history(lambda t: 0.3 + 2.0 * math.exp(-6 * t), val=val, lr=0.2, epochs=12)
    f = get_rule("oscillating").check(_context(h))
    assert f is not None and f.evidence["window"] == "run"
    assert f.epoch == 2  # the first epoch whose validation loss rose
    assert kinds(h) == ["oscillating"]


def _within_epoch_wave(t):
    # a swing with a period of one epoch: the epoch means average it out
    return healthy_curve(t) + 0.3 * math.sin(2 * math.pi * 10 * t * 499 / 500)


def test_step_level_swings_are_oscillation_when_epoch_means_hide_them():
    h = make_history(_within_epoch_wave, val=lambda t: 0.25 + 2.0 * math.exp(-12 * t), lr=0.1)
    f = get_rule("oscillating").check(_context(h))
    assert f is not None and f.evidence["window"] == "steps"
    assert f.evidence["swing_ratio"] < OSC_SWING_RATIO  # the epoch values did not show it
    assert f.evidence["step_swing_ratio"] >= OSC_STEP_SWING
    assert kinds(h) == ["oscillating"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_noise_alone_is_not_oscillation(seed):
    # large step noise (a small batch) around a healthy curve: the swing of the group
    # medians is what their noise predicts, so there is no finding (no validation loss
    # here: make_history would add half the step noise to it)
    h = make_history(healthy_curve, lr=cosine_lr, noise=0.3, seed=seed)
    ctx = _context(h)
    assert get_rule("oscillating").check(ctx) is None
    assert kinds(h) == ["healthy"]


def test_oscillation_ending_on_an_upswing_is_not_a_divergence():
    # large bounded swings of the epoch-mean loss that happen to end high: the rise does
    # not last through the last quarter of the run, so it is oscillation, not a rebound
    def train(t):
        e = min(int(t * 12), 11)
        bump = 1.2 if e in (5, 8, 11) else 0.0
        return 0.4 + 1.9 * math.exp(-12 * t) + bump

    h = make_history(train, val=lambda t: train(t) + 0.1, lr=0.2, epochs=12, noise=0.01)
    assert kinds(h) == ["oscillating"]
    assert get_rule("diverged").check(_context(h)) is None


def test_sustained_late_rise_is_a_divergence_not_an_oscillation():
    # the loss falls, then rises steadily through the whole second half: no swing back
    h = make_history(
        lambda t: 0.3 + 2 * math.exp(-20 * t) + 1.3 * max(0.0, t - 0.5) * 2,
        val=lambda t: 0.35 + 2 * math.exp(-20 * t) + 1.3 * max(0.0, t - 0.5) * 2,
        lr=0.3,
        epochs=12,
    )
    assert kinds(h) == ["diverged"]
    osc = get_rule("oscillating").check(_context(h))
    assert osc is None


def test_brief_rise_that_loses_all_progress_is_a_divergence():
    # falls for 90% of the run, then jumps back to its start level: progress lost
    h = make_history(
        lambda t: 0.3 + 2 * math.exp(-20 * t) + (2.0 if t > 0.92 else 0.0),
        lr=0.3,
        epochs=12,
        noise=0.01,
    )
    f = diagnose(h)[0]
    assert f.kind == "diverged" and f.evidence["reason"] == "rebound"


def test_oscillation_needs_six_epochs():
    h = make_history(healthy_curve, val=_swinging_val(0.3), lr=0.05, epochs=5)
    assert "oscillating" not in kinds(h)
    assert get_rule("oscillating").needs(_context(h)) is not None


def test_overfitting_names_best_epoch():
    h = make_history(
        lambda t: 0.02 + 2.2 * math.exp(-6 * t),
        val=lambda t: 0.9 + 1.4 * math.exp(-12 * t) + 2.0 * max(0.0, t - 0.3),
        lr=cosine_lr,
        epochs=20,
        noise=0.01,
    )
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["overfitting"]
    best = findings[0].evidence["best_epoch"]
    val = [r["val_loss"] for r in h.epochs]
    assert best == int(np.argmin(val))
    # text counts epochs from 1; the evidence keeps the records' 0-based index
    assert f"stop after epoch {best + 1} where validation loss was lowest" in findings[0].advice


def test_underfitting_still_falling_at_the_end():
    h = make_history(
        lambda t: 0.3 + 1.5 * math.exp(-10 * t) + 0.8 * (1 - t),
        val=lambda t: 0.4 + 1.4 * math.exp(-10 * t) + 0.8 * (1 - t),
        lr=0.1,
        epochs=4,
    )
    f = diagnose(h)[0]
    assert f.kind == "underfitting"
    assert "train for about 8 epochs instead of 4" in f.advice


def test_plateau_at_constant_lr_names_the_epoch():
    h = make_history(
        lambda t: 0.5 + 1.8 * math.exp(-25 * t),
        val=lambda t: 0.6 + 1.7 * math.exp(-25 * t),
        lr=0.1,
        epochs=20,
        noise=0.01,
    )
    f = diagnose(h)[0]
    assert f.kind == "plateau"
    assert 1 <= f.epoch <= 6
    assert f"start decay or reduce on plateau at epoch {f.epoch + 1}" in f.advice  # from 1


def test_flat_end_with_decaying_lr_is_not_a_plateau():
    h = make_history(
        lambda t: 0.5 + 1.8 * math.exp(-25 * t),
        val=lambda t: 0.6 + 1.7 * math.exp(-25 * t),
        lr=cosine_lr,
        epochs=20,
        noise=0.01,
    )
    assert kinds(h) == ["healthy"]


# ---------------------------------------------------------------- not enough data


def test_not_enough_data_for_tiny_runs():
    h = History.from_records(
        [
            {"type": "step", "step": s, "epoch": 0, "lr": 0.1, "train_loss": 2.3 - 0.1 * s}
            for s in range(1, 6)
        ]
    )
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["not_enough_data"]
    assert findings[0].evidence["logged_steps"] == 5


def test_empty_history_is_not_enough_data():
    assert kinds(History()) == ["not_enough_data"]


def test_two_epochs_only_is_not_enough_data():
    h = History.from_records(
        [
            {"type": "epoch", "epoch": 0, "step": 10, "train_loss": 2.0, "val_loss": 2.1},
            {"type": "epoch", "epoch": 1, "step": 20, "train_loss": 1.0, "val_loss": 1.5},
        ]
    )
    assert kinds(h) == ["not_enough_data"]


def test_nan_is_reported_even_with_little_data():
    h = History.from_records(
        [
            {"type": "step", "step": 1, "epoch": 0, "lr": 3.0, "train_loss": 2.3},
            {"type": "step", "step": 2, "epoch": 0, "lr": 3.0, "train_loss": float("nan")},
        ]
    )
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["nan"]
    assert "from 3 to about 0.3" in findings[0].advice


def test_missing_validation_is_noted_in_healthy():
    h = make_history(healthy_curve, lr=cosine_lr)
    f = diagnose(h)[0]
    assert f.kind == "healthy"
    assert "overfitting" in f.evidence["not_checked"]


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("scale,shift", [(1000.0, 0.0), (0.001, 0.0), (1.0, -50.0), (3.0, -7.0)])
@pytest.mark.parametrize(
    "case",
    ["healthy", "too_slow", "overfitting", "plateau", "rebound", "oscillating"],
)
def test_verdict_invariant_to_loss_scale_and_negative_shift(case, scale, shift):
    curves = {
        "healthy": (healthy_curve, lambda t: 0.25 + 2.0 * math.exp(-12 * t), cosine_lr, 0.02),
        "too_slow": (lambda t: 2.3 - 0.3 * t, None, 1e-4, 0.01),
        "overfitting": (
            lambda t: 0.02 + 2.2 * math.exp(-6 * t),
            lambda t: 0.9 + 1.4 * math.exp(-12 * t) + 2.0 * max(0.0, t - 0.3),
            cosine_lr,
            0.01,
        ),
        "plateau": (
            lambda t: 0.5 + 1.8 * math.exp(-25 * t),
            lambda t: 0.6 + 1.7 * math.exp(-25 * t),
            0.1,
            0.01,
        ),
        "rebound": (
            lambda t: 0.3 + 2 * math.exp(-20 * t) + 1.8 * max(0.0, t - 0.5) * 2,
            None,
            0.3,
            0.02,
        ),
        "oscillating": (healthy_curve, _swinging_val(0.3), 0.05, 0.02),
    }
    train, val, lr, noise = curves[case]
    base = make_history(train, val=val, lr=lr, noise=noise, epochs=20)
    moved = make_history(
        lambda t: scale * train(t) + shift,
        val=None if val is None else (lambda t: scale * val(t) + shift),
        lr=lr,
        noise=noise * scale,
        epochs=20,
    )
    assert kinds(base) == kinds(moved)
    expected = {"rebound": "diverged"}.get(case, case)
    assert kinds(base)[0] == expected


def test_diagnose_is_deterministic_and_ignores_record_order():
    h = make_history(healthy_curve, val=lambda t: 0.3 + 2 * math.exp(-12 * t), lr=0.1)
    shuffled = History(steps=list(reversed(h.steps)), epochs=list(reversed(h.epochs)))
    a = [f.to_dict() for f in diagnose(h)]
    assert a == [f.to_dict() for f in diagnose(h)]
    assert a == [f.to_dict() for f in diagnose(shuffled)]


def test_single_spikes_do_not_change_the_verdict():
    h = make_history(healthy_curve, val=lambda t: 0.25 + 2.0 * math.exp(-12 * t), lr=cosine_lr)
    for i in (100, 230, 377):
        h.steps[i]["train_loss"] = 40.0
    assert kinds(h) == ["healthy"]


# ---------------------------------------------------------------- records and registry


def test_finding_to_dict_is_json_safe():
    import json

    f = Finding("nan", "critical", step=3, evidence={"x": float("nan"), "y": np.float64(0.1234567)})
    d = json.loads(json.dumps(f.to_dict()))
    assert d["evidence"] == {"x": "nan", "y": 0.123457}
    assert "[critical] nan at step 3" in f.describe()


def test_finding_rejects_unknown_kind_and_severity():
    with pytest.raises(ConfigError, match="valid: nan"):
        Finding("weird", "info")
    with pytest.raises(ConfigError, match="severity"):
        Finding("nan", "fatal")


def test_registry_lists_valid_rules():
    assert tuple(RULES) == KINDS[: len(RULES)]  # built-in rules run in the order of KINDS
    with pytest.raises(ConfigError, match="valid: diverged, nan"):
        get_rule("explode")


def test_diagnose_rejects_non_history():
    with pytest.raises(ConfigError, match="History"):
        diagnose([{"type": "step"}])


def test_plateau_needs_a_logged_learning_rate():
    h = make_history(lambda t: 0.5 + 1.8 * math.exp(-25 * t), lr=0.1, epochs=20, noise=0.01)
    for r in h.steps + h.epochs:
        del r["lr"]
    f = diagnose(h)[0]
    assert f.kind == "healthy"
    assert "learning rate" in f.evidence["not_checked"]["plateau"]


def test_plateau_starts_after_the_last_learning_rate_change():
    # a guard-style cut of the LR at 60% of the run: the plateau is judged after it
    h = make_history(
        lambda t: 0.5 + 1.8 * math.exp(-25 * t),
        val=lambda t: 0.6 + 1.7 * math.exp(-25 * t),
        lr=lambda t: 0.1 if t < 0.6 else 0.05,
        epochs=20,
        noise=0.01,
    )
    f = diagnose(h)[0]
    assert f.kind == "plateau"
    assert f.epoch == 12 and "stayed at 0.05" in f.advice


def test_divergence_during_warmup_names_the_lr_where_it_broke():
    # LR warmed up linearly to 1.0; the loss turns up from 40% of the run (LR ~0.4)
    h = make_history(
        lambda t: 0.3 + 2 * math.exp(-20 * t) + 4.0 * max(0.0, t - 0.4),
        lr=lambda t: 0.01 + 0.99 * t,
        epochs=10,
    )
    f = diagnose(h)[0]
    assert f.kind == "diverged" and f.evidence["reason"] == "rebound"
    broke = f.evidence["peak_lr"]
    assert 0.4 < broke < 0.7  # the LR logged where the rise began, not the final 1.0
    assert f"on the way to the configured peak {1.0:.3g}" in f.advice


@pytest.mark.parametrize("grad_growth,expected", [(1.3, "too_slow"), (5.0, "underfitting")])
def test_straight_large_drop_is_too_slow_only_when_the_gradient_norm_stayed_flat(
    grad_growth, expected
):
    # the loss halves along a nearly straight line: a too-small LR if the weights barely
    # moved (flat gradient norm), a run cut short if they moved a lot
    h = make_history(
        lambda t: 2.3 - 1.3 * t + 0.2 * t * t,
        val=lambda t: 2.3 - 1.25 * t + 0.2 * t * t,
        lr=0.01,
        epochs=6,
        noise=0.01,
    )
    n = len(h.steps)
    for i, r in enumerate(h.steps):
        r["grad_norm"] = 0.5 * (1 + (grad_growth - 1) * i / (n - 1))
    assert kinds(h) == [expected]
