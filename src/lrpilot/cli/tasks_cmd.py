"""``lrpilot tasks``: list the built-in tasks with their sizes."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tasks", help="list the built-in tasks with their sizes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lrpilot.tasks import get_task, list_tasks

    rows = []
    for name in list_tasks():
        task = get_task(name)
        rows.append(
            {
                "name": name,
                "train": len(task.train_set),
                "val": len(task.val_set),
                "input_shape": list(task.sample()[0].shape),
                "parameters": task.num_parameters(),
                "optimizer": task.defaults.get("optimizer", {}).get("name", ""),
                "description": task.description,
            }
        )
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
