"""``lrpilot.finder.protocol.probe_plan``: the calibrated protocol and its small-data floor."""

from __future__ import annotations

import pytest

from lrpilot.errors import ConfigError
from lrpilot.finder.protocol import MIN_SWEEP_STEPS, ProbePlan, probe_plan


def test_calibrated_protocol_unchanged_on_the_benchmark_sizes() -> None:
    # digits (1437 training samples) and MNIST-1D (4000) at batch 64: probe batch 8, half an
    # epoch, 88 and 249 steps, as calibrated
    assert probe_plan(1437, 64) == ProbePlan(8, 88, 1e-5, 10.0, 718)
    assert probe_plan(4000, 64) == ProbePlan(8, 249, 1e-5, 10.0, 2000)


def test_default_budget_is_raised_only_below_the_minimum_sweep() -> None:
    assert MIN_SWEEP_STEPS == 20
    # 336 samples: half an epoch is 168 = 21 * 8 samples, exactly 20 steps: kept
    assert probe_plan(336, 64) == ProbePlan(8, 20, 1e-5, 10.0, 168)
    # one sample fewer: 167 samples would be 19 steps; raised to 168 samples for 20
    assert probe_plan(335, 64) == ProbePlan(8, 20, 1e-5, 10.0, 168, raised=True)
    raised = probe_plan(120, 64)
    assert raised.raised and raised.steps == 20 and raised.samples_budget == 168  # 1.4 epochs


def test_explicit_budget_is_never_raised() -> None:
    assert probe_plan(335, 64, budget_epochs=1.0) == ProbePlan(8, 40, 1e-5, 10.0, 335)
    with pytest.raises(ConfigError, match=r"gives 167 samples = 19 steps of batch 8 on 335"):
        probe_plan(335, 64, budget_epochs=0.5)
    with pytest.raises(ConfigError, match=r"need at least 20 steps: budget_epochs >= 0\.6"):
        probe_plan(335, 64, budget_epochs=0.5)


def test_a_training_set_too_small_for_the_probe_batch_is_refused() -> None:
    # 20 steps of batch 8 need 168 samples: more than 10 epochs of 16
    with pytest.raises(ConfigError, match=r"a smaller probe batch"):
        probe_plan(16, 64)
    assert probe_plan(16, 64, probe_batch=1).steps == 20  # 21 samples: 1.3 epochs, raised
