"""Gradient noise scale against a problem whose tr(Σ) and |G|² are known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.batch import NoiseScale, noise_scale, unbiased_estimates
from lrpilot.errors import ConfigError
from lrpilot.tasks import get_task


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()


def _regression(seed: int, d: int = 10, n: int = 20000, sigma: float = 1.0):
    """y = x·w* + ε, x ~ N(0, I), ε ~ N(0, σ²); the model sits at w = w* + δ."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    y = x @ w_star + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    w = w_star + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    # exact per-example gradients of 0.5 (x·w − y)²: g_i = x_i (x_i·w − y_i)
    per_example = x * (x @ w - y)[:, None]
    g = per_example.mean(0)
    trace = per_example.var(0, unbiased=False).sum()  # covariance of one example's gradient
    delta2 = float((w - w_star).pow(2).sum())
    # population values (Isserlis): |G|² = |δ|², tr Σ = d (|δ|² + σ²) + |δ|²
    population = (d * (delta2 + sigma**2) + delta2) / delta2
    return model, TensorDataset(x, y), float(trace / g.pow(2).sum()), population


def test_estimators_are_the_closed_forms():
    g2, tr = 2.5, 40.0
    for b, big in [(1, 2), (8, 64), (16, 4096)]:
        got = unbiased_estimates(g2 + tr / b, b, g2 + tr / big, big)
        assert got == pytest.approx((g2, tr), rel=1e-12)
    with pytest.raises(ConfigError, match="small_batch < big_batch"):
        unbiased_estimates(1.0, 8, 1.0, 8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_linear_regression_within_20_percent(seed):
    model, data, truth, population = _regression(seed)
    # the finite set's exact value and the closed form agree (sanity of the reference)
    assert truth == pytest.approx(population, rel=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = noise_scale(
        model, data, loss_fn=_half_mse, small_batch=8, big_batch=256, measurements=40, seed=seed
    )
    assert abs(result.b_simple / truth - 1) < 0.2, (result, truth)
    # margin, not luck: the estimate's own standard error is far below the 20% tolerance
    assert result.stderr / result.b_simple < 0.05
    assert abs(result.b_simple - truth) < 5 * result.stderr + 0.02 * truth
    assert result.trace == pytest.approx(result.b_simple * result.g2, rel=1e-9)
    # the model is left untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.weight.grad is None


def test_ratio_of_averages_not_average_of_ratios():
    ns = NoiseScale(beta=None)
    meas = [(1.0, 30.0), (-0.5, 20.0), (2.0, 10.0)]  # (|G|², tr Σ) per measurement
    b, big = 4, 32
    for g2, tr in meas:
        ns.update(g2 + tr / b, b, g2 + tr / big, big)
    assert ns.value == pytest.approx(60.0 / 2.5, rel=1e-12)
    assert ns.mean_g2 == pytest.approx(2.5 / 3, rel=1e-12)


def test_ema_is_bias_corrected_and_state_round_trips():
    beta = 0.9
    ns = NoiseScale(beta=beta)
    g2s = [1.0, 2.0, 4.0]
    trs = [10.0, 30.0, 20.0]
    for g2, tr in zip(g2s, trs, strict=True):
        ns.update(g2 + tr / 2, 2, g2 + tr / 8, 8)
    weights = [(1 - beta) * beta ** (len(g2s) - 1 - i) for i in range(len(g2s))]
    exp_g2 = sum(w * v for w, v in zip(weights, g2s, strict=True)) / (1 - beta ** len(g2s))
    exp_tr = sum(w * v for w, v in zip(weights, trs, strict=True)) / (1 - beta ** len(g2s))
    assert ns.mean_g2 == pytest.approx(exp_g2, rel=1e-12)
    assert ns.value == pytest.approx(exp_tr / exp_g2, rel=1e-12)
    ns.update(math.nan, 2, 1.0, 8)
    assert ns.skipped == 1 and ns.count == 3
    other = NoiseScale()
    other.load_state_dict(ns.state_dict())
    assert other.value == ns.value and other.state_dict() == ns.state_dict()
    bad = ns.state_dict() | {"version": 99}
    with pytest.raises(ConfigError, match="version 99"):
        other.load_state_dict(bad)
    assert math.isnan(NoiseScale().value)
    with pytest.raises(ConfigError, match=r"beta=1\.0"):
        NoiseScale(beta=1.0)


def test_builtin_task_probe_and_model_untouched():
    task = get_task("digits-cnn")
    torch.manual_seed(0)
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = noise_scale(
        model, task.train_set, loss_fn=task.loss_fn, small_batch=8, big_batch=64, measurements=3
    )
    assert math.isfinite(r.b_simple) and r.b_simple > 0 and math.isfinite(r.stderr)
    assert (r.small_batch, r.big_batch, r.measurements) == (8, 64, 3)
    # BatchNorm running statistics and weights unchanged, no gradients left behind
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"small_batch": 16, "big_batch": 24}, "multiple of small_batch"),
        ({"small_batch": 16, "big_batch": 16}, "multiple of small_batch"),
        ({"small_batch": 0}, "small_batch=0"),
        ({"big_batch": 8192}, "larger than the dataset"),
        ({"measurements": 0}, "measurements=0"),
    ],
)
def test_probe_refuses_nonsense(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        noise_scale("mnist1d-mlp", **kwargs)
