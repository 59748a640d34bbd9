"""Families without a PyTorch counterpart against their closed forms (written out
independently here), boundaries, pickling and argument validation."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest

from lrpilot import ConfigError
from lrpilot import schedules as S


def close(a, b):
    return a == pytest.approx(b, rel=1e-12, abs=1e-300)


def test_inverse_sqrt_closed_form():
    s = S.inverse_sqrt(0.2, warmup=8)
    for t in range(200):
        ref = 0.2 * t / 8 if t < 8 else 0.2 / math.sqrt(t / 8)
        assert close(s(t), ref)
    assert s(0) == 0.0 and s(8) == 0.2 and close(s(32), 0.1)
    assert s.boundaries(100) == [0, 8] and s.warmup_steps == 8


@pytest.mark.parametrize("decay", ["linear", "cosine", "sqrt"])
def test_wsd_closed_form(decay):
    lr, n, w, frac, final = 0.3, 100, 10, 0.2, 0.03
    s = S.wsd(lr, n, warmup=w, decay_fraction=frac, decay=decay, final_lr=final)
    start = 80  # 100 - round(0.2 * 100)
    f = {
        "linear": lambda p: 1 - p,
        "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
        "sqrt": lambda p: 1 - p**0.5,
    }[decay]
    for t in range(130):
        if t < w:
            ref = lr * t / w
        elif t < start:
            ref = lr
        elif t < n:
            ref = final + (lr - final) * f((t - start) / 20)
        else:
            ref = final
        assert close(s(t), ref), t
    assert s.boundaries(200) == [0, 10, 80, 100]
    assert s(0) == 0.0 and s(w) == lr and s(start) == lr and s(n) == final


def test_wsd_rejects_warmup_overlapping_decay():
    with pytest.raises(ConfigError, match=r"warmup=90 is out of range; allowed: \[0, 80\]"):
        S.wsd(0.1, 100, warmup=90, decay_fraction=0.2)


def test_piecewise_and_multistep_change_at_boundary():
    s = S.piecewise([5, 9], [0.3, 0.2, 0.1])
    assert [s(t) for t in (0, 4, 5, 8, 9, 100)] == [0.3, 0.3, 0.2, 0.2, 0.1, 0.1]
    assert s.boundaries(50) == [0, 5, 9]
    m = S.multistep(1.0, [3, 6], 0.5)
    assert [m(t) for t in (2, 3, 5, 6)] == [1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("mode", ["linear", "exp", "cosine"])
def test_warmup_modes_closed_form(mode):
    inner = S.cosine(0.5, 40, final_lr=0.05)
    w, lo = 10, 0.005
    s = S.warmup(inner, steps=w, start_lr=lo, mode=mode)
    for t in range(60):
        p = t / w
        if t >= w:
            ref = inner(t - w)
        elif mode == "linear":
            ref = lo + (0.5 - lo) * p
        elif mode == "exp":
            ref = lo * (0.5 / lo) ** p
        else:
            ref = lo + (0.5 - lo) * 0.5 * (1 - math.cos(math.pi * p))
        assert close(s(t), ref), (mode, t)
    assert s(0) == lo and s(w) == inner(0) == 0.5  # reaches exactly schedule(0) at steps
    assert s.length == 50 and s.boundaries(100) == [0, 10, 50]


def test_warmup_default_starts_at_zero_and_zero_steps_is_identity():
    s = S.warmup(S.constant(0.1), steps=4)
    assert s(0) == 0.0 and s(2) == 0.05 and s(4) == 0.1
    inner = S.cosine(0.1, 10)
    z = S.warmup(inner, steps=0)
    assert all(z(t) == inner(t) for t in range(15))
    with pytest.raises(ConfigError, match=r"start_lr=0.0 is out of range for mode='exp'"):
        S.warmup(S.constant(0.1), steps=4, mode="exp")


def test_join_local_time_and_boundaries():
    a, b, c = S.linear(0.0, 1.0, 10), S.cosine(1.0, 20), S.constant(0.01)
    s = S.join([a, b, c], boundaries=[10, 30])
    for t in range(50):
        ref = a(t) if t < 10 else b(t - 10) if t < 30 else c(t - 30)
        assert s(t) == ref
    assert s(10) == 1.0 and s(30) == 0.01
    assert s.boundaries(60) == [0, 10, 30]
    assert s.length is None
    s2 = S.join([a, S.cosine(1.0, 20)], [10])
    assert s2.length == 30 and s2.boundaries(100) == [0, 10, 30]


def test_scale():
    s = S.scale(S.cosine(1.0, 10), 0.5)
    assert all(s(t) == 0.5 * S.cosine(1.0, 10)(t) for t in range(12))
    assert s.length == 10


def test_cosine_restarts_decay_closed_form():
    s = S.cosine_restarts(1.0, 5, period_mult=3, decay=0.5, final_lr=0.1)
    starts = [0, 5, 20, 65]
    for i, (lo, hi) in enumerate(itertools.pairwise(starts)):
        T = hi - lo
        for t in range(lo, hi):
            ref = 0.1 + (0.5**i - 0.1) * 0.5 * (1 + math.cos(math.pi * (t - lo) / T))
            assert close(s(t), ref)
    assert s.boundaries(70) == [0, 5, 20, 65]


def test_cyclic_boundaries_and_one_cycle_boundaries():
    assert S.cyclic(0.1, 1.0, 2, 3).boundaries(11) == [0, 2, 5, 7, 10]
    assert S.one_cycle(1.0, 100, three_phase=True).boundaries(100) == [0, 29, 58, 100]


def square(t):
    return 1.0 / (1 + t) ** 2


ALL = [
    S.constant(0.1),
    S.step_decay(0.1, 3, 0.5),
    S.multistep(0.1, [2, 5], 0.1),
    S.exponential(0.1, 0.9),
    S.polynomial(0.1, 10, 2.0, 0.01),
    S.linear(0.0, 0.1, 10),
    S.piecewise([3], [0.1, 0.01]),
    S.cosine(0.1, 10, 0.001),
    S.cosine_restarts(0.1, 4, 2, 0.5, 0.0),
    S.one_cycle(0.1, 20, three_phase=True),
    S.one_cycle_momentum(20),
    S.cyclic(0.01, 0.1, 3, 5, "exp_range", 0.99),
    S.inverse_sqrt(0.1, 4),
    S.wsd(0.1, 20, 2, 0.3, "sqrt"),
    S.from_function(square),
    S.warmup(S.cosine(0.1, 10), 5, 0.001, "exp"),
    S.join([S.constant(0.1), S.cosine(0.1, 10)], [4]),
    S.scale(S.constant(0.1), 0.5),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_pickle_round_trip_and_purity(schedule):
    clone = pickle.loads(pickle.dumps(schedule))
    assert clone == schedule and repr(clone) == repr(schedule)
    values = [schedule(t) for t in range(40)]
    assert [clone(t) for t in range(40)] == values
    assert [schedule(t) for t in reversed(range(40))] == values[::-1]  # no hidden state
    with pytest.raises(ValueError, match=r"step=-1 is out of range"):
        schedule(-1)


def test_from_function_lambda_does_not_pickle():
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(S.from_function(lambda t: 0.1))


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: S.constant(-0.1), r"lr=-0.1 is out of range; allowed: \[0, inf\)"),
        (lambda: S.constant(float("nan")), r"lr=nan is out of range"),
        (lambda: S.cosine(0.1, 0), r"steps=0 is out of range; allowed: \[1, "),
        (lambda: S.cosine(0.1, 2.5), r"steps must be an integer, got 2.5"),
        (lambda: S.step_decay(0.1, 3, 1.5), r"gamma=1.5 is out of range; allowed: \(0, 1\]"),
        (lambda: S.multistep(0.1, [5, 3], 0.1), r"milestones must be strictly increasing"),
        (lambda: S.multistep(0.1, [], 0.1), r"milestones must not be empty"),
        (lambda: S.multistep(0.1, "5", 0.1), r"milestones must be a list"),
        (lambda: S.piecewise([3], [0.1]), r"values must have len\(boundaries\) \+ 1 = 2"),
        (lambda: S.one_cycle(0.1, 10, pct_start=1.0), r"pct_start=1.0 is out of range"),
        (lambda: S.one_cycle(0.1, 10, pct_start=0.05), r"phase 1 would be empty"),
        (
            lambda: S.one_cycle(0.1, 10, anneal="cosine"),
            r"anneal='cosine' is not valid; allowed: cos, linear",
        ),
        (lambda: S.one_cycle(0.1, 10, three_phase="yes"), r"three_phase must be true or false"),
        (lambda: S.one_cycle_momentum(10, 0.95, 0.85), r"base_momentum=0.95 is out of range"),
        (lambda: S.cyclic(0.1, 0.01, 5), r"max_lr=0.01 is out of range"),
        (lambda: S.cyclic(0.01, 0.1, 5, gamma=0.9), r"gamma=0.9 only applies to mode='exp_range'"),
        (lambda: S.cyclic(0.01, 0.1, 5, mode="sine"), r"mode='sine' is not valid"),
        (lambda: S.wsd(0.1, 10, 1, 0.2, decay="exp"), r"decay='exp' is not valid"),
        (lambda: S.cosine_restarts(0.1, 5, period_mult=0), r"period_mult=0 is out of range"),
        (lambda: S.warmup(0.1, 5), r"schedule must be a schedule"),
        (lambda: S.join([S.constant(0.1)], []), r"at least 2 schedules"),
        (lambda: S.join([S.constant(0.1), S.constant(0.2)], [1, 2]), r"len\(schedules\) - 1 = 1"),
        (lambda: S.scale(S.constant(0.1), -2), r"factor=-2 is out of range"),
        (lambda: S.from_function(3), r"fn must be callable"),
        (lambda: S.Plateau(factor=1.0), r"factor=1.0 is out of range; allowed: \(0, 1\)"),
        (lambda: S.Plateau(mode="up"), r"mode='up' is not valid; allowed: min, max"),
        (lambda: S.Plateau(patience=-1), r"patience=-1 is out of range"),
        (lambda: S.cosine(0.1, 10**400), r"steps=.* is out of range"),
        (lambda: S.constant(10**400), r"lr=.* is out of range"),
    ],
)
def test_validation_names_parameter_value_and_range(make, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make()


@pytest.mark.parametrize(
    "schedule",
    [S.step_decay(0.1, 1, 0.5), S.cosine_restarts(0.1, 1), S.cyclic(0.1, 0.2, 1)],
    ids=lambda s: type(s).__name__,
)
def test_periodic_boundaries_are_capped(schedule):
    b = schedule.boundaries(10**12)
    assert b[:3] == [0, 1, 2] and len(b) <= 1001
