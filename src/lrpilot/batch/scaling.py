"""How the learning rate follows the batch size.

A *scaling rule* maps the batch ratio ``k = to_batch / from_batch`` to a learning-rate
multiplier:

* ``linear``: ``lr * k`` (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training
  ImageNet in 1 Hour": SGD, LR = 0.1 x batch/256, 5 epochs of linear warmup).
* ``sqrt``: ``lr * sqrt(k)`` (Malladi et al. 2022, "On the SDEs and Scaling Rules for
  Adaptive Gradient Algorithms": the square-root rule for Adam-family optimizers).
* ``none``: ``lr`` unchanged.

``conservative`` trims a *raised* learning rate: ``scaled * (1 - conservative)`` when
``to_batch > from_batch`` (the rules over-predict at large batches; 0.10 to 0.15 is a
common margin). A lowered or unchanged learning rate is not trimmed: it is already the
safe direction.

>>> scale_lr(0.1, 256, 1024)
0.4
>>> round(scale_lr(1e-3, 64, 256, rule="sqrt"), 12)
0.002
>>> round(scale_lr(0.1, 256, 1024, conservative=0.1), 12)
0.36
>>> scale_warmup(500, 64, 256)
125
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lrpilot._distributed import effective_batch
from lrpilot.errors import ConfigError, check_int, check_keys, check_range
from lrpilot.optim import get_optimizer
from lrpilot.schedules import scale

ScalingRule = Callable[[float], float]


def _linear(k: float) -> float:
    return k


def _sqrt(k: float) -> float:
    return math.sqrt(k)


def _none(k: float) -> float:
    return 1.0


_RULES: dict[str, ScalingRule] = {"linear": _linear, "none": _none, "sqrt": _sqrt}

#: LR-scaling exponent (:data:`lrpilot.optim.FAMILY_EXPONENTS`) -> the rule that applies it
_RULE_FOR_EXPONENT = {1.0: "linear", 0.5: "sqrt"}


def register_rule(name: str, rule: ScalingRule) -> None:
    """Register a scaling rule ``rule(k) -> multiplier`` (``k`` = batch ratio) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"rule name must be a non-empty string, got {name!r}")
    if not callable(rule):
        raise ConfigError(f"rule {name!r} must be callable, got {type(rule).__name__}")
    _RULES[name] = rule


def list_rules() -> list[str]:
    """Names of the registered scaling rules, sorted."""
    return sorted(_RULES)


def get_rule(name: str) -> ScalingRule:
    """The rule registered as ``name``; unknown names raise ``ConfigError`` listing the valid ones."""
    if name not in _RULES:
        raise ConfigError(f"unknown lr scaling rule {name!r}; valid: {', '.join(list_rules())}")
    return _RULES[name]


def rule_for_optimizer(optimizer_name: str) -> str:
    """The rule of a registered optimizer's family (:mod:`lrpilot.optim`): ``linear`` for
    SGD, ``sqrt`` for the Adam family; ``linear`` for a name the registry does not know.

    >>> rule_for_optimizer("adamw"), rule_for_optimizer("sgd"), rule_for_optimizer("lion")
    ('sqrt', 'linear', 'linear')
    """
    try:
        spec = get_optimizer(str(optimizer_name).lower())
    except ConfigError:
        return "linear"
    return _RULE_FOR_EXPONENT[spec.lr_exponent]


def scale_lr(
    lr: float,
    from_batch: int,
    to_batch: int,
    rule: str = "linear",
    conservative: float = 0.0,
) -> float:
    """Learning rate for ``to_batch`` given ``lr`` tuned at ``from_batch``.

    ``result = lr * rule(to_batch / from_batch) * (1 - conservative if to_batch > from_batch else 1)``.

    Raises ``ConfigError`` for a non-positive or non-finite ``lr``, batches below 1,
    ``conservative`` outside ``[0, 1)`` and unknown rules (listing the valid ones).

    >>> scale_lr(0.4, 1024, 256)
    0.1
    >>> scale_lr(0.1, 64, 64, conservative=0.5)
    0.1
    """
    check_range("lr", lr, low=0, low_inclusive=False)
    from_batch = check_int("from_batch", from_batch, low=1)
    to_batch = check_int("to_batch", to_batch, low=1)
    check_range("conservative", conservative, low=0, high=1, high_inclusive=False)
    factor = float(get_rule(rule)(to_batch / from_batch))
    if not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"lr scaling rule {rule!r} returned {factor!r}; it must be positive")
    scaled = lr * factor
    if to_batch > from_batch:
        scaled *= 1.0 - conservative
    return scaled


def scale_warmup(steps: int, from_batch: int, to_batch: int) -> int:
    """Warmup length in optimizer steps for ``to_batch``, keeping the warmup's *samples* fixed.

    Goyal et al. (2017) specify warmup in epochs (5), i.e. a fixed number of samples; at a
    batch ``k`` times larger, each step sees ``k`` times more samples, so the warmup takes
    ``ceil(steps * from_batch / to_batch)`` steps (at least 1 when ``steps > 0``).

    >>> scale_warmup(1000, 256, 8192)
    32
    >>> scale_warmup(0, 64, 128)
    0
    """
    steps = check_int("warmup steps", steps, low=0)
    from_batch = check_int("from_batch", from_batch, low=1)
    to_batch = check_int("to_batch", to_batch, low=1)
    if steps == 0:
        return 0
    return max(1, math.ceil(steps * from_batch / to_batch))


# -------------------------------------------------- the run's lr_scaling config
#: Keys of the ``lr_scaling`` config section.
LR_SCALING_KEYS = ("rule", "base_batch", "conservative")


def parse_lr_scaling(raw: Any) -> dict | None:
    """Validate the ``lr_scaling`` config: ``{rule, base_batch, conservative}``.

    >>> parse_lr_scaling({"rule": "sqrt", "base_batch": 64})
    {'rule': 'sqrt', 'base_batch': 64, 'conservative': 0.0}
    """
    if raw is None or raw is False:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"lr_scaling must be a mapping {{rule, base_batch}}, got {raw!r}")
    check_keys("lr_scaling", raw, LR_SCALING_KEYS)
    if "base_batch" not in raw:
        raise ConfigError("lr_scaling needs base_batch (the batch the learning rate was tuned at)")
    rule = raw.get("rule", "linear")
    if not isinstance(rule, str):
        raise ConfigError(f"lr_scaling.rule must be a name, got {rule!r}")
    try:
        get_rule(rule)
    except ConfigError as exc:
        raise ConfigError(f"lr_scaling.rule: {exc}") from exc
    return {
        "rule": rule,
        "base_batch": check_int("lr_scaling.base_batch", raw["base_batch"], low=1),
        "conservative": check_range(
            "lr_scaling.conservative",
            raw.get("conservative", 0.0),
            low=0,
            high=1,
            high_inclusive=False,
        ),
    }


def lr_scale_factor(lr_scaling: Mapping[str, Any] | None, effective: int) -> float:
    """Multiplier for the whole schedule: ``scale_lr(1, base_batch, effective, rule, conservative)``.

    >>> lr_scale_factor({"rule": "linear", "base_batch": 64, "conservative": 0.0}, 256)
    4.0
    >>> lr_scale_factor(None, 256)
    1.0
    """
    if not lr_scaling:
        return 1.0
    return scale_lr(
        1.0,
        lr_scaling["base_batch"],
        effective,
        rule=lr_scaling["rule"],
        conservative=lr_scaling.get("conservative", 0.0),
    )


def scale_schedule(
    schedule, lr_scaling: Mapping[str, Any] | None, batch_size: int, accumulate: int
):  # type: ignore[no-untyped-def]
    """``schedule`` multiplied by :func:`lr_scale_factor` for this run's effective batch
    (``lrpilot.schedules.scale``); unchanged without ``lr_scaling`` or at factor 1."""
    factor = lr_scale_factor(lr_scaling, effective_batch(batch_size, accumulate))
    if factor == 1.0:
        return schedule
    return scale(schedule, factor)
