"""``auto`` values in a ``lrpilot fit`` config: what the autopilot may choose.

Three values may be ``auto``; everything else stays exactly as written (or at fit's
default) and is honoured by the autopilot (:func:`lrpilot.autopilot._run.fit_auto`):

* ``optimizer: {lr: auto}``: the peak LR is searched. With a fixed ``schedule`` (a
  family whose main LR parameter the config leaves out, e.g. ``{name: cosine, warmup:
  {steps: 100}}``) only the peak is chosen: the final run trains from step 0 under that
  schedule at the chosen peak. Without a ``schedule`` key the schedule is free too.
* ``schedule: auto`` (or ``{name: auto}``): warmup and shape (one-cycle, warmup+cosine or
  warmup-stable-decay) are chosen, at the peak ``optimizer.lr`` states when it is fixed.
* ``batch_size: auto``: the micro-batch, the accumulation and the LR scaling
  (:mod:`lrpilot.autopilot._batch`).

Contradictions raise ``ConfigError`` (CLI: exit 2, nothing written): ``schedule: auto``
with schedule parameters; ``lr: auto`` with a schedule that states its own LR (or a
``join``/``piecewise`` of several); ``plateau`` with an ``auto`` LR or schedule (the
autopilot owns the LR over time); ``accumulate`` with ``batch_size: auto``; ``lr_scaling``
with any ``auto`` (the autopilot applies and records its rule). Other keys keep fit's own
meaning of ``auto`` (``device``, ``checkpoint_every``, ``optimizer.implementation``,
``optimizer.no_decay``) and fit's validation (``grad_clip: auto`` is refused there).

>>> r = auto_request({"task": "mnist1d-mlp", "optimizer": {"lr": "auto"}})
>>> r.free, r.fixed_schedule, r.raw["optimizer"]
(('lr', 'schedule'), None, {})
>>> auto_request({"task": "t", "schedule": {"name": "auto", "warmup": 10}})
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: schedule.warmup=10 contradicts schedule: auto (the autopilot chooses the warmup and the shape); allowed with auto: name only
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lrpilot.errors import ConfigError, short_repr

AUTO = "auto"
#: keys whose value may be ``auto`` (dotted)
AUTO_KEYS = ("optimizer.lr", "schedule", "batch_size")
#: the schedule families whose main LR parameter a fit config may leave to optimizer.lr
_MAIN_LR = {"one_cycle": "max_lr", "linear": "start_lr"}
_MULTI_LR = ("join", "piecewise")


@dataclass(frozen=True)
class AutoRequest:
    """What is free (``free``: names among ``lr``, ``schedule``, ``batch_size``), the
    user's schedule when the LR is free but the schedule is fixed, and ``raw``: the config
    with every ``auto`` removed (the fixed part)."""

    free: tuple[str, ...]
    fixed_schedule: dict | None
    raw: dict

    def fixed(self) -> dict[str, Any]:
        """The values the user fixed that the autopilot would otherwise choose."""
        out: dict[str, Any] = {}
        if "lr" not in self.free and "lr" in self.raw.get("optimizer", {}):
            out["lr"] = self.raw["optimizer"]["lr"]
        if "schedule" not in self.free and self.raw.get("schedule") is not None:
            out["schedule"] = self.raw["schedule"]
        if "batch_size" not in self.free and "batch_size" in self.raw:
            out["batch_size"] = self.raw["batch_size"]
        return out


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def _schedule_is_auto(value: Any) -> bool:
    return _is_auto(value) or (isinstance(value, Mapping) and _is_auto(value.get("name")))


def any_auto(raw: Mapping[str, Any]) -> bool:
    """Whether the config has an ``auto`` value where one is allowed (``AUTO_KEYS``)."""
    opt = raw.get("optimizer")
    return (
        _is_auto(raw.get("batch_size"))
        or _schedule_is_auto(raw.get("schedule"))
        or (isinstance(opt, Mapping) and _is_auto(opt.get("lr")))
    )


def _check_schedule(schedule: Any, lr_free: bool) -> dict | None:
    """The fixed schedule (a copy) checked against a free LR; ``None`` when absent."""
    if schedule is None:
        return None
    if not isinstance(schedule, Mapping):
        raise ConfigError(
            f"schedule must be a mapping with 'name' or auto, got {short_repr(schedule)}"
        )
    name = schedule.get("name")
    if lr_free:
        if name in _MULTI_LR:
            raise ConfigError(
                f"schedule.name={name!r} states its own LRs, which contradicts optimizer.lr: "
                "auto; allowed with lr auto: a family with one peak (e.g. cosine, one_cycle, wsd)"
            )
        key = _MAIN_LR.get(str(name), "lr")
        if key in schedule:
            raise ConfigError(
                f"schedule.{key}={short_repr(schedule[key])} fixes the peak LR, which "
                f"contradicts optimizer.lr: auto; remove one of them"
            )
    return copy.deepcopy(dict(schedule))


def auto_request(raw: Mapping[str, Any]) -> AutoRequest:
    """Split a config with ``auto`` values into what is free and what is fixed (module
    doc); contradictions raise ``ConfigError`` naming the value."""
    out = copy.deepcopy(dict(raw))
    opt = out.get("optimizer")
    lr_free = isinstance(opt, Mapping) and _is_auto(opt.get("lr"))
    if lr_free:
        out["optimizer"] = {k: v for k, v in opt.items() if k != "lr"}  # type: ignore[union-attr]
    schedule = out.pop("schedule", None)
    schedule_free = _schedule_is_auto(schedule) or (lr_free and schedule is None)
    if _schedule_is_auto(schedule) and isinstance(schedule, Mapping):
        for key in schedule:
            if key != "name":
                raise ConfigError(
                    f"schedule.{key}={short_repr(schedule[key])} contradicts schedule: auto "
                    "(the autopilot chooses the warmup and the shape); allowed with auto: name only"
                )
    fixed_schedule = None if schedule_free else _check_schedule(schedule, lr_free)
    if fixed_schedule is not None:
        out["schedule"] = fixed_schedule
    batch_free = _is_auto(out.get("batch_size"))
    if batch_free:
        del out["batch_size"]
        if "accumulate" in out:
            raise ConfigError(
                f"accumulate={short_repr(out['accumulate'])} contradicts batch_size: auto (the "
                "autopilot chooses the micro-batch and the accumulation); remove accumulate"
            )
    if (lr_free or schedule_free) and out.get("plateau") is not None:
        raise ConfigError(
            "plateau contradicts an auto LR or schedule (the autopilot owns the LR over the "
            "run); remove plateau or fix optimizer.lr and schedule"
        )
    if out.get("lr_scaling") is not None:
        raise ConfigError(
            "lr_scaling contradicts auto values (the autopilot applies and records its own "
            "LR rule); remove lr_scaling"
        )
    free = tuple(
        n
        for n, f in (("lr", lr_free), ("schedule", schedule_free), ("batch_size", batch_free))
        if f
    )
    return AutoRequest(free, fixed_schedule if lr_free else None, out)
