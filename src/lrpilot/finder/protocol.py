"""The probing protocol ``lrpilot find`` uses and the suggestion rule was calibrated with.

For a training set of ``n`` samples and a training batch ``B``:

* probe batch ``b = max(1, B // 8)``: small batches give many tested LRs within the budget;
  in the calibration runs (``bench/finder_quality.py``) they also gave the most consistent
  ratio between the best peak LR and ``lr_unstable`` across tasks;
* budget: half an epoch, ``n // 2`` samples, so ``steps = n // 2 // b - 1`` (one extra
  forward pass measures the last step); on a training set so small that this gives fewer
  than ``MIN_SWEEP_STEPS`` (20) steps, the budget is raised to the fewest samples that give
  20 (``ProbePlan.raised``; ``lrpilot find`` says so): 20 points over the 6 decades, about 3
  per decade, is the coarsest sweep whose smoothing (a bandwidth of 2 LR steps) still
  resolves the instability point to a factor of about 2. The calibration tasks had 88 to
  249 steps. An explicit budget is never raised: below 20 steps it is refused;
* LRs from ``1e-5`` to ``10`` on a geometric grid; ``repeats = 1``.

The suggestion is meant for training at batch ``B``; the rule carries ``lr_unstable`` over
with ``(B / b) ** kappa`` (``lrpilot.finder.policy``). The calibration used
``B = 64``, ``B / b = 8``; other batch sizes rely on that scaling assumption.

>>> probe_plan(4000, 64)
ProbePlan(batch_size=8, steps=249, start_lr=1e-05, end_lr=10.0, samples_budget=2000, raised=False)
>>> probe_plan(120, 64)  # iris-sized: half an epoch would be 6 steps
ProbePlan(batch_size=8, steps=20, start_lr=1e-05, end_lr=10.0, samples_budget=168, raised=True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lrpilot.errors import ConfigError, check_int, check_range

PROBE_BATCH_DIVISOR = 8
START_LR = 1e-5
END_LR = 10.0
MAX_BUDGET_EPOCHS = 10.0
DEFAULT_BUDGET_EPOCHS = 0.5
#: the fewest sweep steps the protocol runs (module doc)
MIN_SWEEP_STEPS = 20


@dataclass(frozen=True)
class ProbePlan:
    batch_size: int
    steps: int
    start_lr: float
    end_lr: float
    samples_budget: int
    #: the default budget was raised to reach MIN_SWEEP_STEPS on a small training set
    raised: bool = False


def default_probe_batch(batch_size: int) -> int:
    """The probe batch the suggestion rule was calibrated with: ``max(1, batch_size // 8)``.

    >>> default_probe_batch(64), default_probe_batch(4)
    (8, 1)
    """
    return max(1, batch_size // PROBE_BATCH_DIVISOR)


def probe_plan(
    train_size: int,
    batch_size: int,
    budget_epochs: float | None = None,
    probe_batch: int | None = None,
) -> ProbePlan:
    """The probe batch, number of sweep steps and LR range for a budget of ``budget_epochs``
    epochs of ``train_size`` samples (default: half an epoch, raised on a small training set
    to the fewest samples that give ``MIN_SWEEP_STEPS`` steps; an explicit budget that gives
    fewer is refused).

    ``probe_batch`` defaults to ``max(1, batch_size // 8)``, the batch the suggestion rule
    was calibrated with; a larger one lowers the noise of each measured loss (its standard
    deviation falls as ``1 / sqrt(probe_batch)``) at the price of fewer tested LRs, what a
    ``"noisy"`` verdict asks for. The rule then carries the instability point over with
    ``batch_size / probe_batch`` instead of 8, a ratio it was not calibrated with
    (``bench/finder_probe_batch.py`` measures it on the task whose sweeps are noisy).

    >>> probe_plan(4000, 64, probe_batch=32).steps
    61
    >>> probe_plan(4000, 64, budget_epochs=0)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: budget_epochs=0 is out of range; allowed: (0, 10]
    >>> probe_plan(120, 64, budget_epochs=0.5)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: budget_epochs=0.5 gives 60 samples = 6 steps of batch 8 on 120 training samples; need at least 20 steps: budget_epochs >= 1.4
    """
    train_size = check_int("train_size", train_size, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    explicit = budget_epochs is not None
    budget_epochs = check_range(
        "budget_epochs",
        budget_epochs if explicit else DEFAULT_BUDGET_EPOCHS,
        low=0,
        high=MAX_BUDGET_EPOCHS,
        low_inclusive=False,
    )
    if probe_batch is None:
        probe = default_probe_batch(batch_size)
    else:
        probe = check_int("probe_batch", probe_batch, low=1, high=batch_size)
    budget = int(train_size * budget_epochs)
    steps = budget // probe - 1
    if steps >= MIN_SWEEP_STEPS:
        return ProbePlan(probe, steps, START_LR, END_LR, budget)
    needed = (MIN_SWEEP_STEPS + 1) * probe  # samples for MIN_SWEEP_STEPS steps
    if not explicit and needed <= MAX_BUDGET_EPOCHS * train_size:
        return ProbePlan(probe, MIN_SWEEP_STEPS, START_LR, END_LR, needed, raised=True)
    # the smallest budget (in epochs, rounded up to 0.1) that gives them
    needed_epochs = math.ceil(needed / train_size * 10 - 1e-9) / 10
    hint = (
        f"budget_epochs >= {needed_epochs:g}"
        if needed_epochs <= MAX_BUDGET_EPOCHS
        else f"a smaller probe batch (the training set is too small for batch {probe})"
    )
    raise ConfigError(
        f"budget_epochs={budget_epochs:g} gives {budget} samples = {max(steps, 0)} steps of "
        f"batch {probe} on {train_size} training samples; need at least {MIN_SWEEP_STEPS} "
        f"steps: {hint}"
    )
