"""``lrpilot tasks``: list the built-in tasks with their sizes (from their registered
metadata, :func:`lrpilot.tasks.task_info`: no dataset is generated)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tasks", help="list the built-in tasks with their sizes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lrpilot.tasks import list_tasks, task_info

    rows = [task_info(name).to_dict() for name in list_tasks()]  # no dataset is built
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="built-in tasks")
    for col in ("name", "train", "val", "input", "params", "optimizer", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["train"]),
            str(r["val"]),
            "x".join(map(str, r["input_shape"])),
            f"{r['parameters']:,}",
            r["optimizer"],
            r["description"],
        )
    Console().print(table)
    return 0
