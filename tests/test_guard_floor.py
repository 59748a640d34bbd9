"""The spike rule's loss-scale floor (``SPIKE_FLOOR * |initial loss|``): a healthy run that
has fallen far below its start must not count its batch noise as spikes, and real
divergences must still be caught, at step 0 and at the boundary."""

from __future__ import annotations

import math
import random

import pytest

import lrpilot.train._guard as guard_mod
from lrpilot.train._guard import DivergenceGuard, classify, robust_level, spike_floor


def _low_loss_history(seed: int, steps: int = 3000) -> list[float]:
    """Like synth-mlp-ln/AdamW: from 2.3 down to ~0.01 with log-normal batch noise, and 12%
    of batches holding one hard example (+0.04-0.05: the batches at 0.05-0.06)."""
    rng = random.Random(seed)
    out = []
    for t in range(steps):
        base = 0.01 + 2.29 * math.exp(-t / 250)
        loss = base * math.exp(rng.gauss(0, 0.15))
        if rng.random() < 0.12:
            loss += rng.uniform(0.04, 0.05)
        out.append(loss)
    return out


def _replay(losses: list[float]) -> tuple[int, int]:
    """(rescues, suspects) of the default guard on ``losses``."""
    g = DivergenceGuard()
    rescues = suspects = 0
    for loss in losses:
        verdict = g.observe(loss)
        suspects += verdict == "suspect"
        if verdict == "diverged":
            rescues += 1
            g.record_rescue()
    return rescues, suspects


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_low_loss_noise_is_not_a_divergence(seed: int) -> None:
    rescues, suspects = _replay(_low_loss_history(seed))
    assert rescues == 0
    assert suspects <= 2


def test_without_the_floor_the_same_history_is_rescued(monkeypatch) -> None:
    """The history does reproduce the false positive the floor removes."""
    monkeypatch.setattr(guard_mod, "SPIKE_FLOOR", 0.0)
    rescues, _ = _replay(_low_loss_history(0))
    assert rescues >= 8  # the default max_rescues: the healthy run would be aborted


def test_spike_floor_formula() -> None:
    assert spike_floor(2.3) == pytest.approx(0.023)
    assert spike_floor(-4.0) == pytest.approx(0.04)  # the loss scale, whatever its sign
    assert spike_floor(None) == 0.0 and spike_floor(math.nan) == 0.0


def test_floor_boundary() -> None:
    window = [0.010, 0.011, 0.009, 0.010, 0.0105]
    med, scale = robust_level(window)
    floor = spike_floor(2.3)
    assert scale < floor  # the floor is what decides here
    limit = med + 6 * floor
    assert classify(limit, window, threshold=6, min_history=3, initial=2.3) == "ok"
    above = limit * (1 + 1e-9)
    assert classify(above, window, threshold=6, min_history=3, initial=2.3) == "suspect"


def test_divergence_at_step_0_is_still_caught() -> None:
    g = DivergenceGuard()
    assert g.observe(math.nan) == "diverged" and g.cause == "non-finite"
    g = DivergenceGuard()
    assert g.observe(2.3, grad_norm=math.inf) == "diverged"


def test_early_blow_up_is_still_caught() -> None:
    """Three steps of history at the initial level, then a blow-up: rescued at the third
    suspect step, as without the floor."""
    g = DivergenceGuard()
    verdicts = [g.observe(v) for v in (2.30, 2.29, 2.31, 40.0, 80.0, 160.0)]
    assert verdicts == ["ok", "ok", "ok", "suspect", "suspect", "diverged"]
    assert g.cause == "spikes"


def test_late_blow_up_from_a_low_loss_is_still_caught() -> None:
    """After the healthy low-loss history, a real divergence (the loss doubling each step)
    is rescued within a few steps of crossing the floored level."""
    losses = _low_loss_history(0, steps=2000)
    g = DivergenceGuard()
    for loss in losses:
        assert g.observe(loss) != "diverged"
    level = 0.02
    for _ in range(30):
        level *= 2
        if g.observe(level) == "diverged":
            break
    else:
        pytest.fail("the blow-up was never caught")
    assert level < 2.3 * 2  # caught around the initial level, not long after it
