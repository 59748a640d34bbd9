"""``from_config``: build a schedule from its YAML/dict form.

A config is a mapping with ``name`` (a family, or ``join``) plus that factory's
parameters, for example::

    name: cosine
    lr: 0.1
    epochs: 30              # or steps: N; omitted -> the rest of the run (total_steps)
    warmup: {steps: 500, start_lr: 0.0, mode: linear}

A key called ``steps`` is always optimizer steps and a key called ``epochs`` is always
epochs (``epochs: N`` replaces ``steps: N``; the nested ``warmup`` takes ``steps`` or
``epochs``), whatever ``unit`` says. ``unit`` (``steps``, the default, or ``epochs``) gives
the unit of the family's own bare lengths only: ``every`` (step_decay), ``milestones``
(multistep), ``period`` (cosine_restarts), ``up``/``down`` (cyclic), ``boundaries``
(piecewise, join), the integer ``warmup`` of inverse_sqrt and wsd, and, in a ``join``, those
of its pieces. ``unit: epochs`` on a family without such lengths has no effect and is
refused. Epochs are converted with ``steps_per_epoch`` (fractional epochs are rounded to
the nearest step) and need it. When the length key (``steps``) of cosine, linear,
polynomial, one_cycle or wsd is omitted, the schedule spans
the whole run after its warmup: ``total_steps - warmup steps``. For ``inverse_sqrt`` and
``wsd``, ``warmup`` is the family's own warmup length (an integer), not the nested
combinator. ``one_cycle`` also accepts ``base_momentum``, ``max_momentum`` and
``cycle_momentum`` (read by :func:`momentum_from_config`). Any other schedule may carry a
top-level ``momentum:`` key, itself a schedule config whose values are the momentum (SGD's
``momentum``, Adam's ``beta1``) at each step, in ``[0, 1)``; e.g. the autopilot's one-cycle
shape cycles it 0.95 -> 0.85 -> 0.95 like one_cycle's own. Unknown names and keys raise
``ConfigError`` listing the valid ones.

>>> s = from_config({"name": "cosine", "lr": 0.1, "warmup": {"steps": 10}}, total_steps=110)
>>> s(10), s.length
(0.1, 110)
>>> s = from_config({"name": "multistep", "lr": 1.0, "unit": "epochs",
...                  "milestones": [2, 3], "gamma": 0.1}, steps_per_epoch=5)
>>> s.boundaries(20)
[0, 10, 15]
>>> s = from_config({"name": "multistep", "lr": 1.0, "unit": "epochs", "milestones": [2],
...                  "gamma": 0.1, "warmup": {"steps": 3}}, steps_per_epoch=5)
>>> s.boundaries(20)  # a 3-step warmup (not 3 epochs), then the milestone 2 epochs later
[0, 3, 13]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.schedules import combinators, cyclic, families
from lrpilot.schedules.base import MAX_STEPS, Schedule, check_bool, check_int, check_range

__all__ = ["FAMILIES", "SCHEDULE_NAMES", "Family", "from_config", "momentum_from_config"]


@dataclass(frozen=True)
class Family:
    """How a schedule family appears in configs."""

    factory: Callable[..., Schedule]
    params: tuple[str, ...]
    required: tuple[str, ...]
    lengths: tuple[str, ...] = ()
    length_lists: tuple[str, ...] = ()
    spans_run: bool = False  # ``steps`` may be omitted and then fills the run


FAMILIES: dict[str, Family] = {
    "constant": Family(families.constant, ("lr",), ("lr",)),
    "step_decay": Family(
        families.step_decay, ("lr", "every", "gamma"), ("lr", "every", "gamma"), ("every",)
    ),
    "multistep": Family(
        families.multistep,
        ("lr", "milestones", "gamma"),
        ("lr", "milestones", "gamma"),
        length_lists=("milestones",),
    ),
    "exponential": Family(families.exponential, ("lr", "gamma"), ("lr", "gamma")),
    "polynomial": Family(
        families.polynomial,
        ("lr", "steps", "power", "final_lr"),
        ("lr",),
        ("steps",),
        spans_run=True,
    ),
    "linear": Family(
        families.linear,
        ("start_lr", "end_lr", "steps"),
        ("start_lr", "end_lr"),
        ("steps",),
        spans_run=True,
    ),
    "piecewise": Family(
        families.piecewise,
        ("boundaries", "values"),
        ("boundaries", "values"),
        length_lists=("boundaries",),
    ),
    "cosine": Family(
        families.cosine, ("lr", "steps", "final_lr"), ("lr",), ("steps",), spans_run=True
    ),
    "cosine_restarts": Family(
        families.cosine_restarts,
        ("lr", "period", "period_mult", "decay", "final_lr"),
        ("lr", "period"),
        ("period",),
    ),
    "one_cycle": Family(
        cyclic.one_cycle,
        (
            "max_lr",
            "steps",
            "pct_start",
            "div_factor",
            "final_div_factor",
            "anneal",
            "three_phase",
        ),
        ("max_lr",),
        ("steps",),
        spans_run=True,
    ),
    "cyclic": Family(
        cyclic.cyclic,
        ("base_lr", "max_lr", "up", "down", "mode", "gamma"),
        ("base_lr", "max_lr", "up"),
        ("up", "down"),
    ),
    "inverse_sqrt": Family(families.inverse_sqrt, ("lr", "warmup"), ("lr", "warmup"), ("warmup",)),
    "wsd": Family(
        families.wsd,
        ("lr", "steps", "warmup", "decay_fraction", "decay", "final_lr"),
        ("lr", "warmup", "decay_fraction"),
        ("steps", "warmup"),
        spans_run=True,
    ),
}

#: Every name ``from_config`` accepts.
SCHEDULE_NAMES: tuple[str, ...] = tuple(sorted([*FAMILIES, "join"]))

_MOMENTUM_KEYS = ("base_momentum", "max_momentum", "cycle_momentum")
_WARMUP_KEYS = ("epochs", "mode", "start_lr", "steps")
_UNITS = ("steps", "epochs")


class _Context:
    """Conversion of lengths for one (possibly nested) config."""

    def __init__(self, where: str, unit: str, steps_per_epoch: int | None) -> None:
        self.where = where
        self.unit = unit
        self.spe = steps_per_epoch

    def epochs_to_steps(self, key: str, value: object) -> int:
        if self.spe is None:
            raise ConfigError(
                f"{self.where}.{key} is given in epochs and needs steps_per_epoch "
                "(pass steps_per_epoch / --steps-per-epoch, or give the length in steps)"
            )
        epochs = check_range(f"{self.where}.{key}", value, low=0.0)
        steps = epochs * self.spe
        if not math.isfinite(steps) or steps > MAX_STEPS:
            raise ConfigError(f"{self.where}.{key}={value!r} epochs is out of range (too long)")
        return round(steps)

    def length(self, key: str, value: object, *, epochs: bool = False) -> object:
        """A bare length (in ``unit``), or an ``epochs`` key's value with ``epochs=True``."""
        if epochs or self.unit == "epochs":
            return self.epochs_to_steps(key, value)
        return value

    def length_list(self, key: str, value: object) -> object:
        if self.unit != "epochs":
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{self.where}.{key} must be a list of epochs, got {value!r}")
        return [self.epochs_to_steps(f"{key}[{i}]", v) for i, v in enumerate(value)]


def _check_mapping(where: str, config: object) -> Mapping[str, Any]:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where} must be a mapping with a 'name' key, got {config!r}")
    for key in config:
        if not isinstance(key, str):
            raise ConfigError(f"{where} has a non-string key {key!r}")
    return config


def _check_keys(where: str, config: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}"
        )


def _bare_lengths(family: Family) -> tuple[str, ...]:
    """The family's lengths that ``unit`` converts (every length but ``steps``)."""
    return tuple(k for k in family.lengths if k != "steps")


def _optional_int(name: str, value: object) -> int | None:
    return None if value is None else check_int(name, value, low=1, high=MAX_STEPS)


def _warmup_spec(ctx: _Context, value: object) -> tuple[int, dict[str, Any]]:
    where = f"{ctx.where}.warmup"
    spec = _check_mapping(where, value)
    _check_keys(where, spec, set(_WARMUP_KEYS))
    if ("steps" in spec) == ("epochs" in spec):
        raise ConfigError(f"{where} needs exactly one of 'steps' or 'epochs'")
    inner = _Context(where, ctx.unit, ctx.spe)
    if "epochs" in spec:
        steps = inner.length("epochs", spec["epochs"], epochs=True)
    else:
        steps = spec["steps"]  # steps, whatever the unit
    steps = check_int(f"{where}.steps", steps, low=0, high=MAX_STEPS)
    kwargs = {k: spec[k] for k in ("start_lr", "mode") if k in spec}
    return steps, kwargs


def _named(
    config: object, where: str, steps_per_epoch: int | None, unit: str
) -> tuple[Mapping[str, Any], str, _Context]:
    """Check the config's ``name`` and ``unit``: ``(config, name, context)``."""
    config = _check_mapping(where, config)
    if "name" not in config:
        raise ConfigError(f"{where} is missing 'name'; valid names: {', '.join(SCHEDULE_NAMES)}")
    name = config["name"]
    if not isinstance(name, str) or name not in SCHEDULE_NAMES:
        raise ConfigError(
            f"{where}.name={name!r} is not a schedule; valid names: {', '.join(SCHEDULE_NAMES)}"
        )
    where = f"{where}({name})" if where == "schedule" else where
    if "unit" in config:
        unit = config["unit"]
        if unit not in _UNITS:
            raise ConfigError(f"{where}.unit={unit!r} is not valid; allowed: steps, epochs")
    return config, name, _Context(where, unit, steps_per_epoch)


def _check_family_keys(
    config: Mapping[str, Any], ctx: _Context, name: str, family: Family | None
) -> None:
    """Unknown keys, and a ``unit: epochs`` that would convert nothing, raise."""
    where = ctx.where
    params = family.params if family is not None else ("schedules", "boundaries")
    allowed = {"name", "unit", "warmup", *params}
    if family is not None and "steps" in family.params:
        allowed.add("epochs")
    if name == "one_cycle":
        allowed.update(_MOMENTUM_KEYS)
    _check_keys(where, config, allowed)
    bare = () if family is None else (*_bare_lengths(family), *family.length_lists)
    if family is not None and not bare and "unit" in config and ctx.unit == "epochs":
        if "steps" in family.lengths:
            raise ConfigError(
                f"{where}.unit=epochs has no effect: {name}'s only length is 'steps', which is "
                "always steps; give its length in epochs with 'epochs: N'"
            )
        raise ConfigError(
            f"{where}.unit=epochs has no effect: {name} has no lengths "
            "(for a per-epoch decay use step_decay with every: 1 and unit: epochs)"
        )


def _nested_warmup(
    config: Mapping[str, Any], ctx: _Context, name: str, family: Family | None
) -> tuple[int, dict[str, Any] | None]:
    """The nested warmup combinator (a mapping): ``(steps, kwargs or None)``; an int
    ``warmup`` is the family's own parameter."""
    own_warmup = family is not None and "warmup" in family.params
    if own_warmup and isinstance(config.get("warmup"), Mapping):
        raise ConfigError(
            f"{ctx.where}.warmup is {name}'s own warmup length (an integer), got a mapping; "
            f"{name} has no nested warmup"
        )
    if "warmup" in config and not own_warmup:
        return _warmup_spec(ctx, config["warmup"])
    return 0, None


def _family_kwargs(
    config: Mapping[str, Any],
    ctx: _Context,
    family: Family,
    remaining: int | None,
    spans: tuple[int | None, int],
) -> dict[str, Any]:
    """The factory's keyword arguments, lengths in steps; a family that spans the run gets
    the ``remaining`` steps. ``spans``: ``(total_steps, warmup_steps)`` for the messages."""
    where = ctx.where
    kwargs: dict[str, Any] = {}
    for key in family.params:
        if key not in config:
            continue
        value = config[key]
        if key in _bare_lengths(family):
            value = ctx.length(key, value)
        elif key in family.length_lists:
            value = ctx.length_list(key, value)
        kwargs[key] = value
    if "epochs" in config:
        if "steps" in config:
            raise ConfigError(f"{where}: give either 'steps' or 'epochs', not both")
        kwargs["steps"] = ctx.length("epochs", config["epochs"], epochs=True)
    if family.spans_run and "steps" not in kwargs:
        if remaining is None:
            raise ConfigError(
                f"{where} is missing key 'steps' (or 'epochs'); give it, or pass "
                "total_steps so the schedule spans the run"
            )
        if remaining < 1:
            raise ConfigError(
                f"{where}: total_steps={spans[0]} leaves no steps after the "
                f"{spans[1]}-step warmup; allowed: warmup < total_steps"
            )
        kwargs["steps"] = remaining
    missing = [k for k in family.required if k not in kwargs]
    if missing:
        raise ConfigError(
            f"{where} is missing key {missing[0]!r}; required: {', '.join(family.required)}"
        )
    return kwargs


def _build(
    config: object,
    where: str,
    steps_per_epoch: int | None,
    total_steps: int | None,
    unit: str,
) -> tuple[Schedule, Schedule | None]:
    """Return ``(schedule, momentum schedule or None)``."""
    config, name, ctx = _named(config, where, steps_per_epoch, unit)
    family = FAMILIES.get(name)
    _check_family_keys(config, ctx, name, family)
    warmup_steps, warmup_kwargs = _nested_warmup(config, ctx, name, family)
    remaining = None if total_steps is None else total_steps - warmup_steps
    momentum = None
    if family is None:
        schedule = _build_join(config, ctx, steps_per_epoch, remaining)
    else:
        kwargs = _family_kwargs(config, ctx, family, remaining, (total_steps, warmup_steps))
        schedule = family.factory(**kwargs)
        if name == "one_cycle":
            momentum = _one_cycle_momentum(ctx.where, config, kwargs)
    if warmup_kwargs is not None:
        schedule = combinators.warmup(schedule, warmup_steps, **warmup_kwargs)
        if momentum is not None and warmup_steps > 0:
            first = families.constant(momentum(0))
            momentum = combinators.join([first, momentum], [warmup_steps])
    return schedule, momentum


def _one_cycle_momentum(
    where: str, config: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> Schedule | None:
    enabled = check_bool(f"{where}.cycle_momentum", config.get("cycle_momentum", True))
    if not enabled:
        for key in ("base_momentum", "max_momentum"):
            if key in config:
                raise ConfigError(f"{where}.{key} has no effect with cycle_momentum: false")
        return None
    extra = {k: config[k] for k in ("base_momentum", "max_momentum") if k in config}
    return cyclic.one_cycle_momentum(
        kwargs["steps"],
        pct_start=kwargs.get("pct_start", 0.3),
        anneal=kwargs.get("anneal", "cos"),
        three_phase=kwargs.get("three_phase", False),
        **extra,
    )


def _build_join(
    config: Mapping[str, Any], ctx: _Context, steps_per_epoch: int | None, remaining: int | None
) -> Schedule:
    where = ctx.where
    for key in ("schedules", "boundaries"):
        if key not in config:
            raise ConfigError(f"{where} is missing key {key!r}; required: schedules, boundaries")
    pieces = config["schedules"]
    if isinstance(pieces, (str, bytes)) or not isinstance(pieces, (list, tuple)):
        raise ConfigError(f"{where}.schedules must be a list of schedule configs, got {pieces!r}")
    bounds = ctx.length_list("boundaries", config["boundaries"])
    from lrpilot.schedules.base import check_step_list

    bounds = list(check_step_list(f"{where}.boundaries", bounds))
    if len(bounds) != len(pieces) - 1 or len(pieces) < 2:
        raise ConfigError(
            f"{where}: needs at least 2 schedules and len(boundaries) = len(schedules) - 1; "
            f"got {len(pieces)} schedules and {len(bounds)} boundaries"
        )
    starts = [0, *bounds]
    built = []
    for i, piece in enumerate(pieces):
        if i < len(bounds):
            span: int | None = bounds[i] - starts[i]
        else:
            span = None if remaining is None else remaining - starts[i]
            if span is not None and span < 1:
                span = None
        sched, _ = _build(piece, f"{where}.schedules[{i}]", steps_per_epoch, span, ctx.unit)
        built.append(sched)
    return combinators.join(built, bounds)


def _resolve(
    mapping: object, steps_per_epoch: object, total_steps: object
) -> tuple[Schedule, Schedule | None]:
    spe = _optional_int("steps_per_epoch", steps_per_epoch)
    total = _optional_int("total_steps", total_steps)
    if not isinstance(mapping, Mapping) or "momentum" not in mapping:
        return _build(mapping, "schedule", spe, total, "steps")
    rest = {k: v for k, v in mapping.items() if k != "momentum"}
    schedule, own = _build(rest, "schedule", spe, total, "steps")
    if own is not None:
        raise ConfigError(
            "schedule.momentum: one_cycle already cycles the momentum; allowed: "
            "cycle_momentum: false with a momentum schedule, or no momentum key"
        )
    momentum, _ = _build(mapping["momentum"], "schedule.momentum", spe, total, "steps")
    _check_momentum(momentum, total)
    return schedule, momentum


def _check_momentum(momentum: Schedule, total: int | None) -> None:
    """Momentum values (SGD's ``momentum``, Adam's ``beta1``) in ``[0, 1)`` at step 0, at
    every boundary and at the last step."""
    end = total if total is not None else 1
    steps = sorted({0, end - 1, *(b for b in momentum.boundaries(end) if b < end)})
    for step in steps:
        value = momentum(step)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"schedule.momentum is {value!r} at step {step}; allowed: [0, 1)")


def from_config(
    mapping: Mapping[str, Any],
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
) -> Schedule:
    """Build the schedule described by ``mapping`` (see the module docstring).

    Raises ``ConfigError`` (a ``ValueError``) naming the key, the value and what is allowed.
    """
    return _resolve(mapping, steps_per_epoch, total_steps)[0]


def momentum_from_config(
    mapping: Mapping[str, Any],
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
) -> Schedule | None:
    """The momentum schedule implied by ``mapping``: its top-level ``momentum`` schedule;
    for ``one_cycle`` (unless ``cycle_momentum: false``) the matching
    :func:`one_cycle_momentum` (held at its first value during a nested warmup); else
    ``None``.

    >>> m = momentum_from_config({"name": "one_cycle", "max_lr": 0.1, "steps": 100})
    >>> m(0), m(29)
    (0.95, 0.85)
    >>> momentum_from_config({"name": "cosine", "lr": 0.1, "steps": 100}) is None
    True
    >>> m = momentum_from_config({"name": "cosine", "lr": 0.1, "steps": 100,
    ...     "momentum": {"name": "linear", "start_lr": 0.95, "end_lr": 0.85, "steps": 100}})
    >>> m(0), round(m(50), 3)
    (0.95, 0.9)
    """
    return _resolve(mapping, steps_per_epoch, total_steps)[1]
