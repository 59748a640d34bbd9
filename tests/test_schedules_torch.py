"""Every family with a PyTorch counterpart equals it (same parameters, >= 3 periods,
relative error <= 1e-12 at every step, so step 0 and every boundary included)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.optim.lr_scheduler as L

from lrpilot import schedules as S

REL = 1e-12


def torch_lrs(make: Callable[[torch.optim.Optimizer], object], n: int, lr: float = 1.0, **opt_kw):
    """LRs (python floats) PyTorch's scheduler gives for steps 0..n-1, and momenta if any."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=lr, **opt_kw)
    sched = make(opt)
    lrs, moms = [], []
    for _ in range(n):
        lrs.append(float(opt.param_groups[0]["lr"]))
        moms.append(float(opt.param_groups[0].get("momentum", math.nan)))
        opt.step()
        sched.step()
    return lrs, moms


def assert_close_seq(ours: list[float], ref: list[float], *, rel: float = REL):
    """Relative error ``|ours - ref| / |ref| <= rel`` at every step (exact zeros must match)."""
    assert len(ours) == len(ref)
    worst = 0.0
    for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
        err = abs(a - b) / max(abs(b), 1e-300)
        worst = max(worst, err)
        assert err <= rel, f"step {t}: ours={a!r} torch={b!r} rel err={err:.3g}"
    return worst


N = 300


def ours(schedule, n):
    return [schedule(t) for t in range(n)]


CASES = {
    # name: (torch factory, our schedule, number of steps compared)
    "step_decay": (lambda o: L.StepLR(o, step_size=7, gamma=0.5), S.step_decay(1.0, 7, 0.5), N),
    "multistep": (
        lambda o: L.MultiStepLR(o, milestones=[10, 50, 51, 200], gamma=0.3),
        S.multistep(1.0, [10, 50, 51, 200], 0.3),
        N,
    ),
    "exponential": (lambda o: L.ExponentialLR(o, gamma=0.97), S.exponential(1.0, 0.97), N),
    "polynomial": (
        lambda o: L.PolynomialLR(o, total_iters=100, power=2.0),
        S.polynomial(1.0, 100, power=2.0),
        101,
    ),
    "polynomial_sqrt": (
        lambda o: L.PolynomialLR(o, total_iters=64, power=0.5),
        S.polynomial(1.0, 64, power=0.5),
        65,
    ),
    "linear": (
        lambda o: L.LinearLR(o, start_factor=0.1, end_factor=0.7, total_iters=100),
        S.linear(0.1, 0.7, 100),
        N,
    ),
    "cosine": (
        lambda o: L.CosineAnnealingLR(o, T_max=100, eta_min=0.01),
        S.cosine(1.0, 100, final_lr=0.01),
        101,
    ),
    "cosine_to_zero": (lambda o: L.CosineAnnealingLR(o, T_max=77), S.cosine(1.0, 77), 78),
    "cosine_restarts_mult2": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=0.01),
        S.cosine_restarts(1.0, 10, period_mult=2, final_lr=0.01),
        N,  # periods 10, 20, 40, 80, 160
    ),
    "cosine_restarts": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=30),
        S.cosine_restarts(1.0, 30),
        N,  # 10 periods
    ),
    "one_cycle": (lambda o: L.OneCycleLR(o, max_lr=1.0, total_steps=N), S.one_cycle(1.0, N), N),
    "one_cycle_linear_3phase": (
        lambda o: L.OneCycleLR(
            o, 2.0, total_steps=N, pct_start=0.25, anneal_strategy="linear", three_phase=True
        ),
        S.one_cycle(2.0, N, pct_start=0.25, anneal="linear", three_phase=True),
        N,
    ),
    "one_cycle_odd": (
        lambda o: L.OneCycleLR(
            o, 0.5, total_steps=97, pct_start=0.33, div_factor=10.0, final_div_factor=100.0
        ),
        S.one_cycle(0.5, 97, pct_start=0.33, div_factor=10.0, final_div_factor=100.0),
        97,
    ),
    "cyclic_triangular": (
        lambda o: L.CyclicLR(o, 0.1, 1.0, step_size_up=20, cycle_momentum=False),
        S.cyclic(0.1, 1.0, up=20),
        N,
    ),
    "cyclic_triangular2": (
        lambda o: L.CyclicLR(
            o,
            0.1,
            1.0,
            step_size_up=20,
            step_size_down=30,
            mode="triangular2",
            cycle_momentum=False,
        ),
        S.cyclic(0.1, 1.0, up=20, down=30, mode="triangular2"),
        N,
    ),
    "cyclic_exp_range": (
        lambda o: L.CyclicLR(
            o,
            0.1,
            1.0,
            step_size_up=13,
            step_size_down=7,
            mode="exp_range",
            gamma=0.995,
            cycle_momentum=False,
        ),
        S.cyclic(0.1, 1.0, up=13, down=7, mode="exp_range", gamma=0.995),
        N,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_equals_pytorch(name):
    make, schedule, n = CASES[name]
    ref, _ = torch_lrs(make, n, momentum=0.9)
    assert_close_seq(ours(schedule, n), ref)
    # Boundaries are part of the compared range, and step 0 is PyTorch's initial LR.
    assert schedule.boundaries(n - 1)[0] == 0
    assert schedule(0) == pytest.approx(ref[0], rel=1e-12)


def test_compared_ranges_cover_three_periods():
    # Periodic/decaying families are compared over >= 3 periods (the cases above).
    assert N >= 3 * 7 and N >= 3 * 30 and N >= 10 + 20 + 40
    assert N >= 3 * (20 + 30) and N >= 3 * (13 + 7)
    assert len(S.multistep(1.0, [10, 50, 51, 200], 0.3).boundaries(N)) == 5


def test_cosine_holds_final_lr_where_pytorch_rises():
    ref, _ = torch_lrs(lambda o: L.CosineAnnealingLR(o, T_max=50, eta_min=0.1), 120)
    s = S.cosine(1.0, 50, final_lr=0.1)
    assert ref[80] > 0.5  # PyTorch re-rises after T_max ...
    assert all(s(t) == 0.1 for t in range(50, 120))  # ... we hold final_lr


def test_polynomial_and_linear_hold_after_end():
    s = S.polynomial(1.0, 10, power=1.0, final_lr=0.2)
    assert [s(t) for t in (10, 11, 1000)] == [0.2, 0.2, 0.2]
    assert S.linear(1.0, 0.3, 5)(999) == 0.3


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_one_cycle_momentum_equals_pytorch(three_phase, anneal):
    n = 200
    ref_lr, ref_mom = torch_lrs(
        lambda o: L.OneCycleLR(
            o,
            1.0,
            total_steps=n,
            pct_start=0.3,
            anneal_strategy=anneal,
            three_phase=three_phase,
            base_momentum=0.8,
            max_momentum=0.9,
        ),
        n,
        momentum=0.9,
    )
    m = S.one_cycle_momentum(n, 0.8, 0.9, pct_start=0.3, anneal=anneal, three_phase=three_phase)
    assert_close_seq(ours(m, n), ref_mom)
    lr = S.one_cycle(1.0, n, pct_start=0.3, anneal=anneal, three_phase=three_phase)
    assert_close_seq(ours(lr, n), ref_lr)


def test_attached_one_cycle_with_adam_betas_equals_pytorch():
    n = 120

    def run(make):
        p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = torch.optim.Adam([p], lr=1.0, betas=(0.9, 0.99))
        sched = make(opt)
        out = []
        for _ in range(n):
            g = opt.param_groups[0]
            out.append((g["lr"], g["betas"][0], g["betas"][1]))
            p.grad = torch.ones_like(p)
            opt.step()
            sched.step()
        return out

    ref = run(lambda o: L.OneCycleLR(o, 0.01, total_steps=n))
    got = run(lambda o: S.attach(o, S.one_cycle(0.01, n), momentum=S.one_cycle_momentum(n)))
    for (a, b, c), (x, y, z) in zip(got, ref, strict=True):
        assert a == pytest.approx(x, rel=1e-12)
        assert b == pytest.approx(y, rel=1e-12)
        assert c == z == 0.99


def test_one_cycle_peak_and_end_as_pytorch():
    s = S.one_cycle(1.0, 100)
    assert s(29) == 1.0  # PyTorch peaks at pct_start * T - 1
    assert s(99) == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)
    assert s(100) == s(99) == s(10_000)  # hold instead of "Tried to step X times"


def _plateau_metrics():
    # Improve, plateau, noisy, NaN, improve again: exercises patience, cooldown, eps.
    vals = [5, 4, 4, 4, 4, 4, 3.9999, 3.9, 3.9, 3.9, 3.9, 3.9, math.nan, 3.9, 2, 2, 2, 2, 2]
    return vals * 3 + [2.0] * 40


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"patience": 0},
        {"patience": 2, "cooldown": 2, "factor": 0.5},
        {"patience": 1, "threshold": 0.05, "threshold_mode": "abs", "factor": 0.3},
        {"patience": 1, "min_lr": 0.02, "factor": 0.5},
        {"patience": 1, "mode": "max", "factor": 0.7},
        {"patience": 1, "mode": "max", "threshold_mode": "abs", "threshold": 0.1},
        {"patience": 0, "factor": 0.5, "eps": 0.01},
    ],
)
def test_plateau_alone_reproduces_reduce_lr_on_plateau(kw):
    metrics = _plateau_metrics()
    lr0 = 0.1
    p1 = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt1 = torch.optim.SGD([p1], lr=lr0)
    ref = L.ReduceLROnPlateau(opt1, **kw)
    p2 = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt2 = torch.optim.SGD([p2], lr=5.0)
    plateau = S.Plateau(**kw)
    ad = S.attach(opt2, S.constant(lr0), plateau=plateau)
    reductions = 0
    for m in metrics:
        for _ in range(3):  # a few optimizer steps per "epoch"
            opt1.step()
            opt2.step()
            ad.step()
        ref.step(m)
        reductions += plateau.report(m)
        a, b = opt2.param_groups[0]["lr"], opt1.param_groups[0]["lr"]
        assert a == pytest.approx(b, rel=1e-12, abs=0.0)
    assert reductions >= 2  # the sequence really exercised reductions
