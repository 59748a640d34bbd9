"""The batch recommendation: what fits, what is useful, and the plan, with the reasons.

:func:`recommend_batch` measures the largest per-device batch
(:func:`~lrpilot.batch.probe_memory`), the gradient noise scale at initialisation
(:func:`~lrpilot.batch.noise_scale`, ``B_simple = tr(Σ)/|G|²``, McCandlish et al. 2018,
"An Empirical Model of Large-Batch Training") and plans per-device batch, accumulation and
learning rate for a nominal batch on N processes (:func:`~lrpilot.batch.plan_accumulation`,
the LR following the batch by the optimizer family's rule, :mod:`lrpilot.batch.scaling`).
It is what ``lrpilot batch`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lrpilot.batch.memory import MemoryProbe, probe_memory
from lrpilot.batch.noise import NoiseScaleResult, noise_scale
from lrpilot.batch.plan import AccumulationPlan, has_batchnorm, plan_accumulation
from lrpilot.batch.scaling import get_rule, rule_for_optimizer
from lrpilot.errors import ConfigError, check_int, check_range, check_seed, short_repr
from lrpilot.tasks import Task, get_task
from lrpilot.tasks.base import dataset_len

__all__ = [
    "MAX_BATCH_RATIO",
    "BatchRecommendation",
    "check_plausible",
    "fit_config",
    "noise_scale_reasons",
    "recommend_batch",
]

GiB = 2**30
#: The largest batch change (either way) a scaling rule is trusted for: Goyal et al. (2017)
#: validated the linear rule from batch 256 to 8192 (32x) and saw it break beyond.
MAX_BATCH_RATIO = 32


@dataclass(frozen=True)
class BatchRecommendation:
    """The probes' results, the plan, and the reasons and warnings in words."""

    task: str
    device: str
    optimizer: str
    memory: MemoryProbe
    noise: NoiseScaleResult
    plan: AccumulationPlan
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``lrpilot batch --json``)."""
        return {
            "task": self.task,
            "device": self.device,
            "optimizer": self.optimizer,
            "memory": self.memory.to_dict(),
            "noise_scale": self.noise.to_dict(),
            "plan": self.plan.to_dict(),
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "config": self.config,
        }


def noise_scale_reasons(
    noise: NoiseScaleResult, nominal: int, rule: str, monitor: bool = True
) -> list[str]:
    """What the measured noise scale says about the nominal batch (pure). ``monitor``:
    whether the plan can follow it during training (``noise_scale: true`` in ``lrpilot fit``
    needs ``accumulate >= 2`` or several processes).

    >>> from lrpilot.batch.noise import NoiseScaleResult
    >>> r = NoiseScaleResult(b_simple=400.0, trace=400.0, g2=1.0, stderr=20.0,
    ...                      small_batch=8, big_batch=256, measurements=4, seconds=1.0)
    >>> noise_scale_reasons(r, 64, "linear")[1][:40]
    'the nominal batch 64 is well below B_sim'
    """
    b_simple = noise.b_simple
    if not math.isfinite(b_simple):
        return ["the noise scale could not be estimated (|G|² estimate not positive)"]
    follow = (
        "so follow it with noise_scale: true in lrpilot fit"
        if monitor
        else "so re-measure it later with lrpilot batch (lrpilot fit follows it, with "
        "noise_scale, only at accumulate >= 2 or on several processes; this plan has neither)"
    )
    reasons = [
        f"gradient noise scale B_simple ≈ {b_simple:.0f} ± {noise.stderr:.0f} at initialisation "
        f"(small batch {noise.small_batch}, big batch {noise.big_batch}, "
        f"{noise.measurements} draws); it changes as training goes on (McCandlish et al. saw it "
        f"grow; bench/batch_noise.py shows it falling on the MNIST-1D tasks), {follow}"
    ]
    if nominal > 2 * b_simple:
        reasons.append(
            f"the nominal batch {nominal} is well above B_simple: larger batches mostly "
            "repeat the same gradient information (diminishing returns per sample)"
        )
    elif nominal < b_simple / 2:
        reasons.append(
            f"the nominal batch {nominal} is well below B_simple: a batch up to about "
            f"{b_simple:.0f} would cut the number of steps nearly in proportion, with the "
            f"learning rate scaled by the {rule!r} rule"
        )
    else:
        reasons.append(f"the nominal batch {nominal} is near B_simple: a balanced choice")
    return reasons


def check_plausible(nominal: int | None, processes: int, num_samples: int) -> None:
    """Refuse a plan no training set can feed: one optimizer step of more samples than the
    training set holds (``nominal``), or more processes than samples. Raises ``ConfigError``
    naming the value and the allowed range.

    >>> check_plausible(10**12, 1, 4000)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: nominal=1000000000000 is out of range; allowed: [1, 4000] (one optimizer step cannot use more samples than the training set holds)
    """
    why = {
        "nominal": "one optimizer step cannot use more samples than the training set holds",
        "processes": "each process needs at least one sample of the training set per step",
    }
    for name, value in (("nominal", nominal), ("processes", processes)):
        if value is not None and value > num_samples:
            raise ConfigError(
                f"{name}={short_repr(value)} is out of range; allowed: [1, {num_samples}] "
                f"({why[name]})"
            )


def ratio_warnings(plan: AccumulationPlan) -> list[str]:
    """A warning when the effective batch is more than :data:`MAX_BATCH_RATIO` times larger
    or smaller than the batch the learning rate was tuned at: the scaling rules are an
    extrapolation there (pure).

    >>> from lrpilot.batch.plan import plan_accumulation
    >>> len(ratio_warnings(plan_accumulation(64, 4000, lr=0.1, base_batch=64)))
    1
    >>> ratio_warnings(plan_accumulation(64, 256, lr=0.1, base_batch=64))
    []
    """
    k = plan.effective / plan.base_batch
    if 1 / MAX_BATCH_RATIO <= k <= MAX_BATCH_RATIO:
        return []
    lr = "" if plan.lr is None else f" (lr {plan.lr:.3g} is a guess)"
    return [
        f"the effective batch {plan.effective} is {k:.3g}x the base batch {plan.base_batch}: "
        f"beyond {MAX_BATCH_RATIO}x either way the {plan.rule!r} rule is an extrapolation "
        f"(Goyal et al. 2017 validated the linear rule up to 32x){lr}; measure the learning "
        f"rate at the new batch with lrpilot find"
    ]


def fit_config(
    plan: AccumulationPlan, optimizer: str, lr: float | None, conservative: float = 0.0
) -> dict[str, Any]:
    """The plan as ``lrpilot fit`` config keys, every one accepted by ``parse_config``:
    ``batch_size`` (per process), ``accumulate``, ``optimizer`` (only when ``lr`` is given
    and differs from the task's), ``lr_scaling`` (when the effective batch differs from the
    base batch) and ``noise_scale: true`` only where fit can follow it (``accumulate >= 2``
    or several processes).

    >>> from lrpilot.batch.plan import plan_accumulation
    >>> fit_config(plan_accumulation(64, 256, lr=0.1, base_batch=64), "sgd", None)
    {'batch_size': 64, 'accumulate': 4, 'lr_scaling': {'rule': 'linear', 'base_batch': 64}, 'noise_scale': True}
    >>> fit_config(plan_accumulation(512, 256, lr=0.1, base_batch=256), "sgd", None)
    {'batch_size': 256}
    """
    cfg: dict[str, Any] = {"batch_size": plan.per_device}
    if plan.accumulate > 1:
        cfg["accumulate"] = plan.accumulate
    if lr is not None:
        cfg["optimizer"] = {"name": optimizer, "lr": lr}
    if plan.effective != plan.base_batch:
        cfg["lr_scaling"] = {"rule": plan.rule, "base_batch": plan.base_batch}
        if conservative:
            cfg["lr_scaling"]["conservative"] = conservative
    if plan.accumulate >= 2 or plan.processes >= 2:
        cfg["noise_scale"] = True
    return cfg


def _validate(
    device: str,
    budget_gib: float | None,
    reals: dict[str, Any],
    ints: dict[str, Any],
    seed: int,
) -> None:
    """Every argument checked before any probe runs; errors name the argument."""
    check_seed(seed)
    if budget_gib is not None:
        check_range("budget_gib", budget_gib, low=0, low_inclusive=False)
    lows = {"noise_big": 2}
    for name, value in ints.items():
        if value is not None:
            check_int(name, value, low=lows.get(name, 1))
    small, big = ints["noise_small"], ints["noise_big"]
    if big % small or big <= small:
        raise ConfigError(f"noise_big={big} must be a multiple of noise_small={small} and larger")
    if not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"device={device!r}; allowed: cpu, cuda, cuda:N")
    if reals["lr"] is not None:
        check_range("lr", reals["lr"], low=0, low_inclusive=False)
    if reals["rule"] is not None:
        get_rule(reals["rule"])
    check_range("conservative", reals["conservative"], low=0, high=1, high_inclusive=False)


def _probe_memory(task, device, budget_gib, max_batch, opt_name, note) -> MemoryProbe:  # type: ignore[no-untyped-def]
    """:func:`probe_memory` with progress messages (on CPU, where it measures batch by batch)."""
    note("probing memory")

    def progress(b: int, added: float) -> None:
        note(f"probing memory: batch {b} adds {added / 2**20:.0f} MiB at its peak")

    return probe_memory(
        task,
        device=device,
        budget=None if budget_gib is None else budget_gib * GiB,
        max_batch=max_batch,
        optimizer=opt_name,
        progress=progress if device == "cpu" else None,
    )


def recommend_batch(
    task: Task | str,
    *,
    device: str = "cpu",
    budget_gib: float | None = None,
    nominal: int | None = None,
    processes: int = 1,
    lr: float | None = None,
    base_batch: int | None = None,
    rule: str | None = None,
    conservative: float = 0.0,
    max_batch: int | None = None,
    noise_small: int = 8,
    noise_big: int = 256,
    noise_measurements: int = 16,
    seed: int = 0,
    status: Callable[[str], None] | None = None,
) -> BatchRecommendation:
    """Probe memory and noise scale on ``task`` and plan the batch (module doc).

    ``budget_gib``: memory budget in GiB (default: the probe's); ``nominal``: effective
    batch (default the task's ``batch_size``); ``lr`` tuned at ``base_batch`` (defaults:
    the task's); ``rule``: LR scaling rule (default: the optimizer family's);
    ``conservative``: trim of a raised LR; ``noise_*``: the noise probe's small and big
    batches and number of draws; ``status(text)``: progress messages. Bad values raise
    ``ConfigError`` naming the argument.
    """
    ints = {"nominal": nominal, "processes": processes, "base_batch": base_batch}
    ints.update(max_batch=max_batch, noise_small=noise_small, noise_big=noise_big)
    ints.update(noise_measurements=noise_measurements)
    reals = {"lr": lr, "rule": rule, "conservative": conservative}
    _validate(device, budget_gib, reals, ints, seed)
    note = status or (lambda text: None)
    task = get_task(task)
    opt = dict(task.defaults.get("optimizer", {}))
    opt_name = str(opt.get("name", "sgd"))
    base_batch = base_batch or int(task.defaults.get("batch_size", 64))
    nominal = nominal or base_batch
    lr = lr if lr is not None else opt.get("lr")
    rule = rule or rule_for_optimizer(opt_name)
    n = dataset_len(task.train_set)
    check_plausible(nominal, processes, n)  # before any probe: a second, not a minute

    mem = _probe_memory(task, device, budget_gib, max_batch, opt_name, note)
    big = min(noise_big, n - n % noise_small)
    if big <= noise_small:
        raise ConfigError(f"the training set ({n}) is too small for the noise probe")
    note("probing the gradient noise scale")
    noise = noise_scale(
        task, small_batch=noise_small, big_batch=big, measurements=noise_measurements,
        seed=seed, device=device,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        bn = has_batchnorm(task.build_model())
    plan = plan_accumulation(
        mem.batch_size, nominal, processes, lr=lr, base_batch=base_batch, rule=rule,
        conservative=conservative, batchnorm=bn, device=device,
    )  # fmt: skip
    config = fit_config(plan, opt_name, None if lr == opt.get("lr") else lr, conservative)
    monitor = "noise_scale" in config
    reasons = [*mem.reasons, *noise_scale_reasons(noise, nominal, rule, monitor), *plan.reasons]
    warnings = (*plan.warnings, *ratio_warnings(plan))
    return BatchRecommendation(
        task.name, device, opt_name, mem, noise, plan, tuple(reasons), warnings, config
    )
