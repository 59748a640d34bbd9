"""``lrpilot fit CONFIG.yaml [--out DIR] [--resume] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="train a task from a YAML config (checkpoints, exact resume, divergence guard)",
        description=(
            "Train a task from a YAML config. Writes a run directory with config.yaml, "
            "metrics.jsonl, TensorBoard events, checkpoints/ and summary.json."
        ),
    )
    parser.add_argument("config", nargs="?", help="YAML config (optional with --resume or --task)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default runs/<task>-<time>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest valid checkpoint",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted keys; YAML values), e.g. --set optimizer.lr=0.3",
    )
    parser.add_argument("--task", help="task name or module:function (same as --set task=...)")
    parser.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="progress display (auto: rich bar on a terminal, plain lines otherwise)",
    )
    parser.add_argument("--json", action="store_true", help="print summary.json at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lrpilot.autopilot import fit
    from lrpilot.errors import ConfigError
    from lrpilot.train._sources import load_yaml

    if args.config is not None:
        raw = load_yaml(args.config)
    elif args.resume and args.out:
        # an auto fit resumes from the config it was started with (its auto values)
        request = Path(args.out) / "autopilot" / "request.yaml"
        raw = load_yaml(request if request.is_file() else Path(args.out) / "config.yaml")
    elif args.task or any(item.startswith("task=") for item in args.overrides):
        raw = {}
    else:
        raise ConfigError("give a CONFIG.yaml, --task NAME, or --resume with --out DIR")
    overrides = list(args.overrides)
    if args.task:
        overrides.insert(0, f"task={json.dumps(args.task)}")  # a string, never parsed as YAML
    result = fit(raw, args.out, resume=args.resume, overrides=overrides, progress=args.progress)
    if args.json and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 only
        print(json.dumps(result.summary, indent=2))
    return 0
