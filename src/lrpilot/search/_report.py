"""What ``lrpilot tune`` shows and writes at the end, for either backend.

* a rich table of the trials: number, state, value, compute (epochs trained / epochs of a
  full run), parameters and run directory;
* ``best.yaml``: the base config with the best trial's values, ready for ``lrpilot fit``;
* parameter importances (Optuna's ``get_param_importances``, fANOVA, on the completed
  trials; with fewer than :data:`MIN_IMPORTANCE_TRIALS` of them, or no parameter that
  varies, the reason is reported instead);
* ``history.png``: each trial's value against its number (pruned trials at their last
  reported value) and the best so far;
* the ``optuna-dashboard`` command line for the storage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrpilot.search._space import Param, decode_values, encode_choice, overrides_for, to_optuna

MIN_IMPORTANCE_TRIALS = 3


@dataclass
class TrialRow:
    """One trial, whichever backend ran it. ``value``: the metric at the trial's last
    epoch (for a pruned trial, its last reported value)."""

    number: int
    state: str
    value: float | None
    compute: float
    params: dict[str, Any]
    run_dir: str | None = None
    error: str | None = None
    retry_of: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        return out


def rows_from_optuna(study: Any, params: Sequence[Param] = ()) -> list[TrialRow]:
    """One row per trial; ``params`` (the space) turns mapping/list choices back from their
    JSON text (:func:`lrpilot.search._space.decode_values`)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        if value is not None and not math.isfinite(value):
            value = None
        rows.append(
            TrialRow(
                number=t.number,
                state=t.state.name.lower(),
                value=value,
                compute=float(t.user_attrs.get("compute", 0.0)),
                params=decode_values(list(params), t.params),
                run_dir=t.user_attrs.get("run_dir"),
                error=t.user_attrs.get("error"),
                retry_of=t.system_attrs.get("failed_trial"),
            )
        )
    return rows


def best_row(rows: Sequence[TrialRow], direction: str) -> TrialRow | None:
    """The completed trial with the best value (``direction`` ``min`` or ``max``)."""
    done = [r for r in rows if r.state == "complete" and r.value is not None]
    if not done:
        return None
    sign = 1.0 if direction == "min" else -1.0
    return min(done, key=lambda r: (sign * float(r.value), r.number))  # type: ignore[arg-type]


def best_config(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The base config with ``params`` (dotted keys) applied.

    >>> best_config({"task": "digits-cnn", "optimizer": {"name": "sgd"}}, {"optimizer.lr": 0.2})
    {'task': 'digits-cnn', 'optimizer': {'name': 'sgd', 'lr': 0.2}}
    """
    from lrpilot.train._sources import apply_overrides

    return apply_overrides(base, overrides_for(dict(params)))


def write_best_yaml(base: Mapping[str, Any], params: Mapping[str, Any], path: Path) -> Path:
    import yaml

    from lrpilot._atomic_io import atomic_write_bytes

    text = yaml.safe_dump(best_config(base, params), sort_keys=False)
    atomic_write_bytes(text.encode("utf-8"), path)
    return path


def importances(
    rows: Sequence[TrialRow], params: Sequence[Param], direction: str
) -> tuple[dict[str, float] | None, str]:
    """``(importances, "")`` or ``(None, reason)``, from the completed trials (an in-memory
    Optuna study built from the rows, so both backends get the same evaluator)."""
    import optuna

    done = [r for r in rows if r.state == "complete" and r.value is not None]
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return None, (
            f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} completed trials, "
            f"have {len(done)}"
        )
    dists = to_optuna(list(params))
    varying = [k for k in dists if len({repr(r.params.get(k)) for r in done}) > 1]
    if not varying:
        return None, "parameter importances: no parameter varies across the completed trials"
    study = optuna.create_study(direction="minimize" if direction == "min" else "maximize")
    for r in done:
        study.add_trial(
            optuna.trial.create_trial(
                params={k: encode_choice(r.params[k]) for k in dists if k in r.params},
                distributions={k: d for k, d in dists.items() if k in r.params},
                value=float(r.value),  # type: ignore[arg-type]
            )
        )
    try:
        result = optuna.importance.get_param_importances(study, params=varying)
    except (RuntimeError, ValueError) as exc:
        return None, f"parameter importances unavailable: {exc}"
    return {k: float(v) for k, v in result.items()}, ""


def plot_history(rows: Sequence[TrialRow], direction: str, metric: str, path: Path) -> Path:
    """``history.png``: value per trial (dots: complete, crosses: pruned) and best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrpilot._plotting import save_png

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for state, marker, label in (("complete", "o", "complete"), ("pruned", "x", "pruned")):
        pts = [(r.number, r.value) for r in rows if r.state == state and r.value is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=label)
    best, xs, ys = None, [], []
    for r in sorted(rows, key=lambda r: r.number):
        if r.state != "complete" or r.value is None:
            continue
        if best is None or (r.value < best if direction == "min" else r.value > best):
            best = r.value
        xs.append(r.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"optimisation history ({direction}imise {metric})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def dashboard_command(storage: str) -> str:
    """The optuna-dashboard command line for a storage URL or journal file."""
    import shlex

    return f"optuna-dashboard {shlex.quote(storage)}"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_report(console: Any, summary: dict[str, Any]) -> None:
    """The rich table and the lines after it (``summary`` as built by the CLI)."""
    from rich.table import Table

    table = Table(title=f"study {summary['study']} ({summary['direction']} {summary['metric']})")
    for name in ("trial", "state", summary["metric"], "compute", "parameters", "run directory"):
        table.add_column(name, justify="right" if name in ("trial", "compute") else "left")
    for r in summary["trials"]:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()
        )
        state = r["state"] + (
            f" (retry of {r['retry_of']})" if r.get("retry_of") is not None else ""
        )
        if r.get("error"):
            state += f": {r['error'][:60]}"
        table.add_row(
            str(r["number"]),
            state,
            fmt(r["value"]),
            f"{r['compute']:.2f}",
            params,
            Path(r["run_dir"]).name if r["run_dir"] else "-",
        )
    console.print(table)
    console.print(
        f"compute: {summary['compute']:.2f} full runs over {len(summary['trials'])} trials "
        f"({', '.join(f'{n} {s}' for s, n in summary['states'].items())})"
    )
    best = summary.get("best")
    if best is None:
        console.print("no completed trial: no best.yaml")
    else:
        console.print(
            f"best: trial {best['number']}, {summary['metric']} = {fmt(best['value'])}; "
            f"config written to {summary['best_yaml']} (lrpilot fit {summary['best_yaml']})"
        )
    imp = summary.get("importances")
    if imp:
        console.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
    elif summary.get("importances_note"):
        console.print(summary["importances_note"])
    if summary.get("history_png"):
        console.print(f"history plot: {summary['history_png']}")
    if summary.get("dashboard"):
        console.print(f"dashboard: {summary['dashboard']}")
