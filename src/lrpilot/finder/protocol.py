"""The probing protocol ``lrpilot find`` uses and the suggestion rule was calibrated with.

For a training set of ``n`` samples and a training batch ``B``:

* probe batch ``b = max(1, B // 8)``: small batches give many tested LRs within the budget;
  in the calibration runs (``bench/finder_quality.py``) they also gave the most consistent
  ratio between the best peak LR and ``lr_unstable`` across tasks;
* budget: half an epoch, ``n // 2`` samples, so ``steps = n // 2 // b - 1`` (one extra
  forward pass measures the last step);
* LRs from ``1e-5`` to ``10`` on a geometric grid; ``repeats = 1``.

The suggestion is meant for training at batch ``B``; the rule carries ``lr_unstable`` over
with ``(B / b) ** kappa`` (``lrpilot.finder.decision``, step 6). The calibration used
``B = 64``, ``B / b = 8``; other batch sizes rely on that scaling assumption.

>>> probe_plan(4000, 64)
ProbePlan(batch_size=8, steps=249, start_lr=1e-05, end_lr=10.0, samples_budget=2000)
"""

from __future__ import annotations

from dataclasses import dataclass

from lrpilot.errors import ConfigError, check_int, check_range

PROBE_BATCH_DIVISOR = 8
START_LR = 1e-5
END_LR = 10.0
MAX_BUDGET_EPOCHS = 10.0


@dataclass(frozen=True)
class ProbePlan:
    batch_size: int
    steps: int
    start_lr: float
    end_lr: float
    samples_budget: int


def default_probe_batch(batch_size: int) -> int:
    """The probe batch the suggestion rule was calibrated with: ``max(1, batch_size // 8)``.

    >>> default_probe_batch(64), default_probe_batch(4)
    (8, 1)
    """
    return max(1, batch_size // PROBE_BATCH_DIVISOR)


def probe_plan(
    train_size: int,
    batch_size: int,
    budget_epochs: float = 0.5,
    probe_batch: int | None = None,
) -> ProbePlan:
    """The probe batch, number of sweep steps and LR range for a budget of ``budget_epochs``
    epochs of ``train_size`` samples.

    ``probe_batch`` defaults to ``max(1, batch_size // 8)``, the batch the suggestion rule
    was calibrated with; a larger one lowers the noise of each measured loss (its standard
    deviation falls as ``1 / sqrt(probe_batch)``) at the price of fewer tested LRs, what a
    ``"noisy"`` verdict asks for. The rule then carries the instability point over with
    ``batch_size / probe_batch`` instead of 8, a ratio it was not calibrated with
    (``bench/finder_probe_batch.py`` measures it on the task whose sweeps are noisy).

    >>> probe_plan(4000, 64, probe_batch=32)
    ProbePlan(batch_size=32, steps=61, start_lr=1e-05, end_lr=10.0, samples_budget=2000)
    >>> probe_plan(4000, 64, budget_epochs=0)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: budget_epochs=0 is out of range; allowed: (0, 10]
    """
    train_size = check_int("train_size", train_size, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    budget_epochs = check_range(
        "budget_epochs", budget_epochs, low=0, high=MAX_BUDGET_EPOCHS, low_inclusive=False
    )
    if probe_batch is None:
        probe = default_probe_batch(batch_size)
    else:
        probe = check_int("probe_batch", probe_batch, low=1, high=batch_size)
    budget = int(train_size * budget_epochs)
    steps = budget // probe - 1
    if steps < 5:
        raise ConfigError(
            f"the finder budget ({budget} samples = {budget_epochs:g} epoch of {train_size}) "
            f"allows only {max(steps, 0)} steps of batch {probe}; need at least 5"
        )
    return ProbePlan(probe, steps, START_LR, END_LR, budget)
