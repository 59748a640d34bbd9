"""``lrpilot schedule show CONFIG.yaml``: the LR at step 0, every boundary and the end,
an optional PNG plot, or ``--json`` with every step.

CONFIG.yaml holds a schedule mapping (``name: cosine ...``, see
:func:`lrpilot.schedules.from_config`) or a run config whose ``schedule:`` key holds one.
Every input is validated before anything is written; errors are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lrpilot.cli._checks import check_png, positive_int
from lrpilot.errors import ConfigError, short_repr


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schedule", help="inspect a learning-rate schedule config")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    show = sub.add_parser(
        "show", help="table of the LR at step 0, every boundary and the end; PNG; JSON"
    )
    show.add_argument("config", help="YAML file with the schedule (or a 'schedule:' key)")
    show.add_argument("--steps-per-epoch", default=None, metavar="N", help="for epoch lengths")
    show.add_argument(
        "--total-steps", default=None, metavar="N", help="optimizer steps of the whole run"
    )
    show.add_argument("--png", default=None, metavar="PATH", help="write a PNG plot here")
    show.add_argument(
        "--json", action="store_true", help='print {"steps": [...], "lr": [...]} for every step'
    )
    show.set_defaults(func=run)


def load_schedule_yaml(path: str) -> dict[str, Any]:
    """Read a schedule mapping from YAML (:func:`lrpilot._safe_yaml.load_file`), unwrapping
    ``schedule:``."""
    from lrpilot._safe_yaml import load_file

    data = load_file(path, what="schedule config")
    if isinstance(data, dict) and "name" not in data and "schedule" in data:
        data = data["schedule"]
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with 'name' (a schedule), got {short_repr(data)}"
        )
    return data


def run(args: argparse.Namespace) -> int:
    from lrpilot.schedules.report import describe

    # Validate everything (arguments, config, lengths) before writing anything.
    spe = positive_int("--steps-per-epoch", args.steps_per_epoch)
    total = positive_int("--total-steps", args.total_steps)
    png = None if args.png is None else check_png(args.png)
    sample = "every" if args.json else "plot" if png is not None else "none"
    mapping = load_schedule_yaml(args.config)
    view = describe(mapping, steps_per_epoch=spe, total_steps=total, sample=sample)
    if png is not None:
        from lrpilot.schedules.plot import save_schedule_png

        title = f"{view.name}: {Path(args.config).name}"
        save_schedule_png(
            png, list(view.steps), list(view.lrs), title=title, boundaries=view.boundaries,
            momentum=None if view.momenta is None else list(view.momenta), steps_per_epoch=spe,
        )  # fmt: skip
    if args.json:
        out: dict[str, Any] = {"steps": list(view.steps), "lr": list(view.lrs)}
        if view.momenta is not None:
            out["momentum"] = list(view.momenta)
        print(json.dumps(out))
        return 0
    print_table(view.rows, title=f"schedule: {view.name}", steps_per_epoch=spe)
    if view.truncated:
        print(f"note: the schedule runs {view.schedule.length} steps; shown up to step {view.end}")
    if png is not None:
        print(f"wrote {png}")
    return 0


def print_table(rows, *, title: str, steps_per_epoch: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """Print key points (from :func:`lrpilot.schedules.report.key_points`) as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("step", justify="right")
    if steps_per_epoch:
        table.add_column("epoch", justify="right")
    table.add_column("point")
    table.add_column("lr", justify="right")
    with_mom = any(r.momentum is not None for r in rows)
    if with_mom:
        table.add_column("momentum", justify="right")
    for r in rows:
        cells = [str(r.step)]
        if steps_per_epoch:
            cells.append(f"{r.step / steps_per_epoch:g}")
        cells += [r.label, f"{r.lr:.6g}"]
        if with_mom:
            cells.append(f"{r.momentum:.4g}")
        table.add_row(*cells)
    Console().print(table)
