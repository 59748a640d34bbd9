"""Where a run's raw config comes from: a YAML file (:func:`load_yaml`) and ``--set
key=value`` overrides (:func:`apply_overrides`), before :func:`lrpilot.train.parse_config`
checks it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrpilot._safe_yaml import load_mapping, loads
from lrpilot.errors import ConfigError, short_repr


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config with :func:`lrpilot._safe_yaml.load_mapping` (a regular file of at
    most 64 KiB; duplicate keys, alias bombs, deep nesting and over-long values refused in
    one line naming the line); an empty file is an empty mapping. ``1e-3`` is a number."""
    return load_mapping(path)


#: Longest ``--set key=value`` item.
MAX_OVERRIDE_CHARS = 4096


def apply_overrides(raw: Mapping[str, Any], overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key=value`` overrides (dotted keys for nested mappings; values parsed with
    :func:`lrpilot._safe_yaml.loads`, so ``0.1`` is a float, ``1e-3`` too and ``[1, 2]`` a list).

    >>> apply_overrides({"optimizer": {"lr": 0.1}}, ["optimizer.lr=3e-3", "schedule.name=cosine"])
    {'optimizer': {'lr': 0.003}, 'schedule': {'name': 'cosine'}}
    """
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise ConfigError(
                f"--set {short_repr(item)}: {len(item)} characters; at most {MAX_OVERRIDE_CHARS}"
            )
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected key=value (dotted keys allowed)")
        value = loads(text, f"--set {key}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is {child!r}, not a mapping")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out
