"""``lrpilot check CONFIG.yaml``: warn about what the rules of thumb flag in a fit config.

Each warning names the value, the rule (with its source) and a fix; the checks are those of
:mod:`lrpilot.recommend._check`. Exit code 0 when clean, 1 when warnings were printed, 2 for
a config that cannot be parsed.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="warn about what the rules of thumb flag in a fit config (exit 1 on warnings)",
        description=__doc__.split("\n\n")[1]
        .replace("\n", " ")
        .replace(":mod:", "")
        .replace("`", ""),
    )
    parser.add_argument("config", help="YAML config of lrpilot fit")
    parser.add_argument(
        "--gpus", type=int, default=1, metavar="G", help="processes the run uses (default 1)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, as in lrpilot fit",
    )
    parser.add_argument("--json", action="store_true", help="print the warnings as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lrpilot.recommend._check import check_config
    from lrpilot.train._sources import apply_overrides, load_yaml

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    findings = check_config(raw, gpus=args.gpus)
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2, default=str))
    elif not findings:
        print(f"{args.config}: no warnings")
    else:
        for f in findings:
            print(f"warning: {f.line()}")
    return 1 if findings else 0
