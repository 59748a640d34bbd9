"""The checks :func:`lrpilot.train.fit` makes before it trains: the config's source, the
run directory (fresh or resumed with the same config), and what a ``prepare`` step may
change."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.train._config import FitConfig
from lrpilot.train._rundir import resume_mismatch
from lrpilot.train._sources import load_yaml


@dataclass(frozen=True)
class Prepared:
    """What a ``prepare`` step hands to fit's loop.

    ``config``: the config the loop runs under (only ``optimizer.lr``, ``schedule``,
    ``guard.snapshot_every`` and ``guard.max_replay`` may differ from the run's).
    ``initial_loss``: for a run that starts from a trained state, the loss of the model as
    initialised, which the guard's stall rule compares with (``None``: the loop's own first
    loss). ``train_data``: ``(dataset, order)`` the loop
    trains on from the prepared state on (:meth:`lrpilot.train.Engine.switch_data`; the
    order gives the epoch in progress the samples it had), e.g. the autopilot's whole
    training set once its decisions are made; ``None``: the task's.
    ``qualify_findings``: ``findings -> findings``, applied to the diagnosis of the run
    before it is printed and saved, so that a prepare step that measured something the
    curve alone cannot show (the autopilot's probes at other LRs) can say so; ``None``:
    the diagnosis as it is.
    """

    config: FitConfig
    initial_loss: float | None = None
    train_data: tuple[Any, Any] | None = None
    qualify_findings: Callable[[list[Any]], list[Any]] | None = None


def resolve_raw(config: FitConfig | Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, FitConfig):
        return config.to_dict()
    if isinstance(config, (str, Path)):
        return load_yaml(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError(f"config must be a mapping, a FitConfig or a YAML path, got {config!r}")


def default_run_dir(task_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = task_name.replace(":", "_").replace("/", "_")
    base = Path("runs") / f"{safe}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Settings of the resolved config ``a`` that differ from the saved config ``b``. A
    setting ``b`` does not have (its run started under an lrpilot without that setting,
    e.g. ``guard.rebound``) takes its value from ``a``.

    >>> config_diff({"seed": 1, "guard": {"rebound": 0.8}}, {"seed": 2, "guard": {}})
    ['seed: 2 -> 1']
    """
    out = []
    for key in sorted(b):
        va, vb = a.get(key), b[key]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {vb!r} -> {va!r}")
    return out


#: the settings a ``prepare`` step may change (dotted paths into the config)
PREPARABLE = ("optimizer.lr", "schedule", "guard.snapshot_every", "guard.max_replay")


def check_prepared(built: FitConfig, prepared: FitConfig) -> None:
    """``prepare`` may change only the :data:`PREPARABLE` settings (the engine was built for
    the rest)."""
    a, b = built.to_dict(), prepared.to_dict()
    for config in (a, b):
        for path in PREPARABLE:
            *parents, key = path.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node.pop(key)
    diff = config_diff(b, a)
    if diff:
        raise ValueError(
            f"prepare may change only {', '.join(PREPARABLE)}; changed: " + "; ".join(diff)
        )


def check_run_dir(run_dir: Path, cfg: FitConfig, resume: bool) -> None:
    """A resume needs the run's config.yaml (unchanged); a fresh run an unused directory."""
    if resume:
        saved_path = run_dir / "config.yaml"
        if not saved_path.is_file():
            raise ConfigError(f"cannot resume: {saved_path} does not exist")
        saved = load_yaml(saved_path)
        diff = config_diff(cfg.to_dict(), saved)
        if diff:
            raise ConfigError(resume_mismatch(diff))
    elif any((run_dir / name).exists() for name in ("metrics.jsonl", "checkpoints", "run.json")):
        raise ConfigError(
            f"run directory {run_dir} already holds a run; use --resume or another --out"
        )
