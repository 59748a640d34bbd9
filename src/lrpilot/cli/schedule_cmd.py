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

from lrpilot.cli.checks import check_png
from lrpilot.errors import ConfigError, short_repr
from lrpilot.safe_yaml import parse_number


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


def _positive_int(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    value = parse_number(text)
    if not isinstance(value, int):
        raise ConfigError(f"{flag}={short_repr(text)} is not an integer; allowed: [1, inf)")
    if value < 1:
        raise ConfigError(f"{flag}={value} is out of range; allowed: [1, inf)")
    return value


def load_schedule_yaml(path: str) -> dict[str, Any]:
    """Read a schedule mapping from YAML (:func:`lrpilot.safe_yaml.load_file`), unwrapping
    ``schedule:``."""
    from lrpilot.safe_yaml import load_file

    data = load_file(path, what="schedule config")
    if isinstance(data, dict) and "name" not in data and "schedule" in data:
        data = data["schedule"]
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with 'name' (a schedule), got {short_repr(data)}"
        )
    return data


def run(args: argparse.Namespace) -> int:
    from lrpilot.schedules import from_config, momentum_from_config
    from lrpilot.schedules.report import curve, key_points, plot_steps, resolve_end

    # 1. Validate everything (arguments, config, lengths) before writing anything.
    spe = _positive_int("--steps-per-epoch", args.steps_per_epoch)
    total = _positive_int("--total-steps", args.total_steps)
    png = None if args.png is None else check_png(args.png)
    mapping = load_schedule_yaml(args.config)
    schedule = from_config(mapping, steps_per_epoch=spe, total_steps=total)
    momentum = momentum_from_config(mapping, steps_per_epoch=spe, total_steps=total)
    end = resolve_end(schedule, total)
    rows = key_points(schedule, end, momentum)
    boundaries = [r.step for r in rows if r.label == "boundary"]
    if args.json:
        steps, lrs = curve(schedule, end)
    elif png is not None:
        steps = plot_steps(end, boundaries)
        lrs = [float(schedule(t)) for t in steps]
    else:
        steps, lrs = [], []
    moms = None if momentum is None else [float(momentum(t)) for t in steps]

    # 2. Output.
    if png is not None:
        from lrpilot.schedules.plot import save_schedule_png

        save_schedule_png(
            png,
            steps,
            lrs,
            title=f"{mapping.get('name')}: {Path(args.config).name}",
            boundaries=boundaries,
            momentum=moms,
            steps_per_epoch=spe,
        )
    if args.json:
        out: dict[str, Any] = {"steps": steps, "lr": lrs}
        if moms is not None:
            out["momentum"] = moms
        print(json.dumps(out))
        return 0
    print_table(rows, title=f"schedule: {mapping.get('name')}", steps_per_epoch=spe)
    if schedule.length is not None and end < schedule.length:
        print(f"note: the schedule runs {schedule.length} steps; shown up to step {end}")
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
