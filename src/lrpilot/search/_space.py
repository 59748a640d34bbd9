"""The search space: YAML over dotted ``lrpilot fit`` config keys.

Each entry maps a dotted key of the config to one distribution::

    optimizer.lr: {log_uniform: [1.0e-4, 1.0]}     # low > 0, sampled uniformly in log(lr)
    optimizer.momentum: {uniform: [0.8, 0.99]}
    epochs: {int: [2, 6]}                           # inclusive integer range
    schedule.name: {choice: [one_cycle, cosine]}
    schedule: {choice: [{name: one_cycle}, {name: cosine, warmup: {epochs: 1}}]}
    batch_size: {choice: [32, 64, 128]}
    optimizer.lr: auto_range                        # log range around the finder's interval

Validation happens before anything is written, like a config (:func:`validate_space`): an
unknown key, an empty or reversed range, a non-positive log range, a wrong type or a value
the config rejects raises :class:`lrpilot.errors.ConfigError` naming the key. Every bound
and every choice is applied to the base config and checked with
:func:`lrpilot.train.parse_config`.

A choice may be a mapping or a list (a whole sub-config, such as a schedule family with its
own keys): the chosen value replaces the config's value at that key. Optuna's categorical
distribution holds scalars only, so such a choice travels through the study as its JSON
text (:func:`encode_choice`) and is turned back by :func:`decode_values` before it reaches
a config.

``auto_range`` (``optimizer.lr`` only) is resolved once per study by :func:`auto_lr_range`
(the one function the autopilot can replace): the LR range test's ``suggestion_interval``
``[lo, hi]`` widened by :data:`AUTO_RANGE_WIDEN` on each side, ``[lo / 3, hi * 3]``. The
sweep's record (:func:`auto_lr_finder`: interval, suggestion, compute in full runs) is kept
in the study and its compute charged to the study's; ``lrpilot tune --seed-trial finder``
queues the base config at the suggested LR as the first trial (:func:`seed_values`).

>>> space = parse_space({"optimizer.lr": {"log_uniform": [1e-4, 1.0]},
...                      "schedule.name": {"choice": ["one_cycle", "cosine"]}})
>>> [(p.key, p.kind, p.args) for p in space]
[('optimizer.lr', 'log_uniform', (0.0001, 1.0)), ('schedule.name', 'choice', ('one_cycle', 'cosine'))]
>>> parse_space({"optimizer.lr": {"log_uniform": [1.0, 1e-4]}})
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: space optimizer.lr: log_uniform range [1, 0.0001] is reversed or empty; need low < high
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError

KINDS = ("log_uniform", "uniform", "int", "choice")
AUTO = "auto_range"
#: ``auto_range`` widens the finder's interval by this factor on each side (log scale)
AUTO_RANGE_WIDEN = 3.0


@dataclass(frozen=True)
class Param:
    """One searched config key: ``kind`` in :data:`KINDS`; ``args`` is ``(low, high)`` or the
    choices (``kind == "auto_range"`` until :func:`resolve_auto` replaces it)."""

    key: str
    kind: str
    args: tuple

    def to_dict(self) -> dict[str, Any]:
        return {self.key: {self.kind: list(self.args)}} if self.kind != AUTO else {self.key: AUTO}


def load_space_yaml(path: str | Path) -> dict[str, Any]:
    """Read a search-space YAML file with lrpilot's hardened loader
    (:func:`lrpilot._safe_yaml.load_mapping`: duplicate keys, aliases and oversized files
    refused; scientific notation such as ``1e-3`` read as a number)."""
    from lrpilot._safe_yaml import load_mapping

    data = load_mapping(path, what="search space")
    if not data:
        raise ConfigError(f"{path}: expected a non-empty mapping of dotted config keys")
    return data


def _number(key: str, kind: str, value: Any, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(float(value)):
        what = "integers" if integer else "finite numbers"
        raise ConfigError(f"space {key}: {kind} bounds must be {what}, got {value!r}")
    return int(value) if integer else float(value)


def _param(key: Any, spec: Any) -> Param:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"space key {key!r} must be a dotted config key such as optimizer.lr")
    if spec == AUTO:
        if key != "optimizer.lr":
            raise ConfigError(f"space {key}: auto_range applies to optimizer.lr only")
        return Param(key, AUTO, ())
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(
            f"space {key}: expected auto_range or one of {{{', '.join(KINDS)}: ...}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"space {key}: unknown distribution {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"space {key}: choice needs a non-empty list, got {args!r}")
        for value in args:
            if not _plain(value):
                raise ConfigError(
                    f"space {key}: choice {value!r} must be a scalar, a list or a mapping "
                    "with string keys"
                )
        if len({json.dumps(encode_choice(v)) for v in args}) != len(args):
            raise ConfigError(f"space {key}: choice list {args!r} repeats a value")
        return Param(key, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"space {key}: {kind} needs [low, high], got {args!r}")
    low, high = (_number(key, kind, v, integer=kind == "int") for v in args)
    if not low < high:
        raise ConfigError(
            f"space {key}: {kind} range [{low:g}, {high:g}] is reversed or empty; need low < high"
        )
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"space {key}: log_uniform needs low > 0, got {low:g}")
    return Param(key, kind, (low, high))


def _plain(value: Any) -> bool:
    """A YAML/JSON value: a scalar, or a list or string-keyed mapping of such values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def encode_choice(value: Any) -> Any:
    """A choice as Optuna stores it: a scalar as is, a mapping or list as its JSON text.

    >>> encode_choice({"name": "cosine", "warmup": {"epochs": 1}})
    '{"name": "cosine", "warmup": {"epochs": 1}}'
    >>> encode_choice(0.1)
    0.1
    """
    if isinstance(value, (Mapping, list)):
        return json.dumps(value, sort_keys=True)
    return value


def decode_values(params: list[Param], values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's values as the config takes them: a mapping or list choice back from its
    JSON text (:func:`encode_choice`); everything else unchanged.

    >>> space = parse_space({"schedule": {"choice": [{"name": "one_cycle"}, "x"]}})
    >>> decode_values(space, {"schedule": '{"name": "one_cycle"}'})
    {'schedule': {'name': 'one_cycle'}}
    """
    out = dict(values)
    for p in params:
        if p.kind == "choice" and p.key in out:
            for choice in p.args:
                if isinstance(choice, (Mapping, list)) and encode_choice(choice) == out[p.key]:
                    out[p.key] = json.loads(json.dumps(choice))  # a fresh copy
    return out


def parse_space(raw: Mapping[str, Any]) -> list[Param]:
    """Parse the YAML mapping into parameters (the distributions only; see
    :func:`validate_space` for the check against a config)."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("search space must be a non-empty mapping of dotted config keys")
    params = [_param(key, spec) for key, spec in raw.items()]
    keys = [p.key for p in params]
    for key in keys:
        for other in keys:
            if other.startswith(key + "."):
                raise ConfigError(f"space keys {key} and {other} overlap")
    return params


def corner_values(param: Param) -> list[Any]:
    """The values :func:`validate_space` tries: both bounds, or every choice."""
    return list(param.args)


def overrides_for(values: Mapping[str, Any]) -> list[str]:
    """``--set key=value`` strings for ``lrpilot fit`` (values as JSON, which YAML reads).

    >>> overrides_for({"optimizer.lr": 0.01, "schedule.name": "cosine"})
    ['optimizer.lr=0.01', 'schedule.name="cosine"']
    """
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def validate_space(
    params: list[Param], base: Mapping[str, Any], n_train: int | None = None
) -> None:
    """Apply every bound and choice to the base config and parse it; an unknown key or a
    value the config does not accept raises ``ConfigError`` naming the space key. With
    ``n_train`` (the task's training-set size) the schedule is also built, as ``lrpilot
    fit`` builds it, so an unknown schedule name or key is caught before any trial."""
    from lrpilot.train import parse_config
    from lrpilot.train._sources import apply_overrides

    for param in params:
        if param.kind == AUTO:
            continue
        for value in corner_values(param):
            try:
                cfg = parse_config(apply_overrides(base, overrides_for({param.key: value})))
                if n_train is not None:
                    _build_schedule(cfg, n_train)
            except ConfigError as exc:
                raise ConfigError(f"space {param.key}={value!r}: {exc}") from None


def _build_schedule(cfg: Any, n_train: int) -> None:
    from lrpilot.train._builders import build_schedule
    from lrpilot.train._config import steps_per_epoch

    per_epoch = steps_per_epoch(n_train, cfg.batch_size, cfg.accumulate)
    build_schedule(cfg, per_epoch, per_epoch * cfg.epochs)


def resolve_auto(
    params: list[Param], base: Mapping[str, Any], evidence: dict[str, Any] | None = None
) -> list[Param]:
    """Replace ``auto_range`` entries by the log range of :func:`auto_lr_range`. With
    ``evidence`` (a dict), the finder's record (:func:`auto_lr_finder`) is stored in it, so
    the study can keep the sweep's interval, suggestion and compute."""
    out = []
    for param in params:
        if param.kind == AUTO:
            found = auto_lr_finder(base)
            low, high = range_from_interval(found["interval"])
            if evidence is not None:
                evidence.update(found, range=[low, high])
            param = Param(param.key, "log_uniform", (low, high))
        out.append(param)
    return out


def range_from_interval(interval: Sequence[float]) -> tuple[float, float]:
    """``[lo / AUTO_RANGE_WIDEN, hi * AUTO_RANGE_WIDEN]``.

    >>> range_from_interval([0.1, 0.2])
    (0.03333333333333333, 0.6000000000000001)
    """
    return float(interval[0]) / AUTO_RANGE_WIDEN, float(interval[1]) * AUTO_RANGE_WIDEN


def auto_lr_range(base: Mapping[str, Any]) -> tuple[float, float]:
    """``[lo / 3, hi * 3]`` around the finder's ``suggestion_interval`` for the base config's
    task, optimizer, batch size and schedule (:func:`auto_lr_finder`)."""
    return range_from_interval(auto_lr_finder(base)["interval"])


def auto_lr_finder(base: Mapping[str, Any]) -> dict[str, Any]:
    """The LR range test for the base config's task, optimizer, batch size and schedule
    (``lrpilot find --json`` in a child process, so a crash or a slow sweep stays out of the
    study's process): ``{"interval", "suggestion", "samples", "epochs_of_compute",
    "compute", "argv"}``,
    ``compute`` being the sweep's cost in full runs of the base config
    (``epochs_of_compute / epochs``: samples seen over epochs x training-set size).

    The autopilot can replace this function; it is the only place the range comes from.
    """
    import subprocess
    import sys

    from lrpilot.train import parse_config

    cfg = parse_config(base)
    if cfg.optimizer.name not in ("sgd", "adamw"):
        raise ConfigError(
            f"auto_range: the finder supports sgd and adamw, not {cfg.optimizer.name}; "
            "give optimizer.lr an explicit log_uniform range"
        )
    schedule = (cfg.schedule or {}).get("name", "one_cycle")
    schedule = schedule if schedule in ("one_cycle", "cosine") else "one_cycle"
    argv = [sys.executable, "-m", "lrpilot.cli", "find", "--task", cfg.task]
    argv += ["--optimizer", cfg.optimizer.name, "--batch-size", str(cfg.batch_size)]
    argv += ["--schedule", schedule, "--seed", str(cfg.seed), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"auto_range: lrpilot find failed ({last})")
    result = json.loads(proc.stdout)
    interval = result.get("suggestion_interval")
    if not interval:
        raise ConfigError(
            f"auto_range: the finder gave no suggestion (verdict {result.get('verdict')!r}); "
            "give optimizer.lr an explicit log_uniform range"
        )
    spent = float(result.get("epochs_of_compute") or 0.0)
    return {
        "interval": [float(interval[0]), float(interval[1])],
        "suggestion": float(result["suggestion"]),
        "samples": result.get("samples"),
        "epochs_of_compute": spent,
        "compute": spent / cfg.epochs,
        "argv": ["lrpilot", *argv[3:]],
    }


def seed_values(params: list[Param], base: Mapping[str, Any], lr: float) -> dict[str, Any]:
    """The first trial of ``--seed-trial finder``: ``optimizer.lr`` at the finder's
    suggestion and every other searched key at the base config's value when that value is
    one of its choices or inside its range (the point the finder measured); a key whose base
    value is outside the space is left to the sampler. Values as Optuna stores them.

    >>> space = parse_space({"optimizer.lr": {"log_uniform": [0.01, 1.0]},
    ...                      "schedule": {"choice": [{"name": "one_cycle"}, {"name": "cosine"}]},
    ...                      "epochs": {"int": [2, 4]}})
    >>> seed_values(space, {"schedule": {"name": "one_cycle"}, "epochs": 15}, 0.3)
    {'optimizer.lr': 0.3, 'schedule': '{"name": "one_cycle"}'}
    """
    out: dict[str, Any] = {}
    for p in params:
        if p.key == "optimizer.lr":
            out[p.key] = lr
            continue
        value: Any = base
        for part in p.key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            continue
        if p.kind == "choice":
            encoded = [encode_choice(v) for v in p.args]
            if encode_choice(value) in encoded:
                out[p.key] = encode_choice(value)
        elif isinstance(value, (int, float)) and p.args[0] <= value <= p.args[1]:
            out[p.key] = value
    return out


def to_optuna(params: list[Param]) -> dict[str, Any]:
    """Optuna distributions, keyed by the dotted config key."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists: dict[str, Any] = {}
    for p in params:
        if p.kind == "log_uniform":
            dists[p.key] = FloatDistribution(p.args[0], p.args[1], log=True)
        elif p.kind == "uniform":
            dists[p.key] = FloatDistribution(p.args[0], p.args[1])
        elif p.kind == "int":
            dists[p.key] = IntDistribution(p.args[0], p.args[1])
        elif p.kind == "choice":
            dists[p.key] = CategoricalDistribution([encode_choice(v) for v in p.args])
        else:
            raise ConfigError(f"space {p.key}: {p.kind} is not resolved")
    return dists


def to_ray(params: list[Param]) -> dict[str, Any]:
    """Ray Tune search domains, keyed by the dotted config key."""
    from ray import tune

    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "log_uniform":
            out[p.key] = tune.loguniform(*p.args)
        elif p.kind == "uniform":
            out[p.key] = tune.uniform(*p.args)
        elif p.kind == "int":
            out[p.key] = tune.randint(p.args[0], p.args[1] + 1)  # randint excludes high
        elif p.kind == "choice":
            out[p.key] = tune.choice([encode_choice(v) for v in p.args])
        else:
            raise ConfigError(f"space {p.key}: {p.kind} is not resolved")
    return out


def space_from_dicts(items: list[dict[str, Any]]) -> list[Param]:
    """Inverse of ``[p.to_dict() for p in params]`` (as stored in a study)."""
    merged: dict[str, Any] = {}
    for item in items:
        merged.update(item)
    return parse_space(merged)
