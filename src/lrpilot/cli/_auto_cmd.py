"""``lrpilot auto``: choose the peak LR, warmup and schedule shape within a compute budget,
then train (:func:`lrpilot.autopilot.auto`).

    lrpilot auto --task mnist1d-cnn [--optimizer sgd|adamw|adam] [--epochs N]
                 [--batch-size B|auto] [--budget X] [--seed S] [--out DIR] [--json] [--resume]

Prints a short table of the decisions (or, with ``--json``, ``{"decisions",
"compute_multiple", "summary"}``). Bad input exits with code 2 and one line, before
anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:  # type: ignore[no-untyped-def]
    p = subparsers.add_parser(
        "auto",
        help="pick the LR, warmup and schedule within a compute budget, then train",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--task", required=True, help="built-in task name or module:function")
    p.add_argument("--optimizer", default=None, help="sgd, adamw or adam (default: the task's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the task's)")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        help="batch size, or auto (memory probe + gradient noise scale; default: the task's)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=1.3,
        help=(
            "total compute as a multiple of one run of --epochs epochs (default 1.3; in "
            "[1.0, 10]); what the probe plan leaves buys up to three finder sweeps"
        ),
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation, data order and probes"
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<task>-<time>)")
    p.add_argument("--json", action="store_true", help="print decisions, compute and summary")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.set_defaults(func=run)


def _batch_size(text: str) -> int | str:
    """``auto`` or a positive integer (argparse reports anything else, exit 2)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch size {text!r} is not valid; allowed: a positive integer or auto"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"batch size {value} is out of range; allowed: >= 1 or auto"
        )
    return value


def run(args: argparse.Namespace) -> int:
    from lrpilot.autopilot import auto
    from lrpilot.autopilot._report import decision_rows
    from lrpilot.autopilot._run import load_report
    from lrpilot.errors import ConfigError

    if args.resume and args.out is None:
        raise ConfigError("--resume needs the run directory (--out DIR)")
    quiet = args.json or not sys.stderr.isatty()
    result = auto(
        args.task,
        optimizer=args.optimizer,
        epochs=args.epochs,
        batch_size=args.batch_size,
        budget=args.budget,
        seed=args.seed,
        out_dir=args.out,
        resume=args.resume,
        progress="none" if args.json else "auto",
        say=(lambda msg: print(msg, file=sys.stderr)) if not args.json else (lambda _m: None),
    )
    info = load_report(result.run_dir)
    if args.json:
        payload = {
            "decisions": info["decisions"],
            "compute_multiple": info["compute"]["compute_multiple"],
            "summary": result.summary,
        }
        from lrpilot.finder.result import json_safe

        print(json.dumps(json_safe(payload), indent=2, allow_nan=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lrpilot auto: {info['task']} ({info['optimizer']['name']})")
    for col in ("decision", "value", "why"):
        table.add_column(col)
    for row in decision_rows(info):
        table.add_row(*row)
    Console(stderr=quiet).print(table)
    final = result.summary.get("final", {})
    shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k.startswith("val_"))
    print(f"final: {shown}; run directory {result.run_dir}")
    return 0
