"""``lrpilot recommend``: a ready ``lrpilot fit`` config from the rules of thumb, each value
with its reason (the rule, its source, assumed or measured); with ``--task`` the finder,
the memory probe and the noise scale replace the rules they can.

The rules are the table of :mod:`lrpilot.recommend._rules` (rendered in the README); the
choice of each value is :func:`lrpilot.recommend.recommend`; the measurements are
:mod:`lrpilot.recommend._measure`; :func:`lrpilot.recommend._advise.advise` does all three,
validates the config with ``lrpilot fit``'s own parser before anything is written and,
with ``--task``, checks it with ``lrpilot check``'s rules.

``--scenario finetune`` writes ``layer_lr: {"<head>.*": 1.0, "*": 0.1}``: the head's
parameters first (in ``layer_lr`` the first matching pattern wins), every other parameter
(the backbone) at 0.1x. With ``--task`` the head is the last top-level module of the model
(``model.named_children()``) that has trainable parameters; for your own model give
``--head NAME`` (``fc`` for a torchvision ResNet, ``classifier`` for many Hugging Face
models); a name that matches no parameter makes ``lrpilot fit`` stop with the list of the
model's module names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lrpilot.recommend._recommender import OPTIMIZER_CHOICES, SCENARIOS


def register(subparsers: argparse._SubParsersAction) -> None:
    from lrpilot.cli._checks import int_flag

    parser = subparsers.add_parser(
        "recommend",
        help="a fit config from the rules of thumb (measured on --task), with every reason",
        description=__doc__.split("\n\n")[0].replace("\n", " ").replace("``", ""),
    )
    parser.add_argument("--scenario", required=True, choices=SCENARIOS)
    parser.add_argument("--dataset-size", type=int_flag("--dataset-size", low=1), metavar="N")
    parser.add_argument(
        "--batch", type=int_flag("--batch", low=1), default=None, metavar="B", help="total batch"
    )
    parser.add_argument(
        "--gpus", type=int_flag("--gpus", low=1), default=1, metavar="G", help="processes"
    )
    parser.add_argument("--epochs", type=int_flag("--epochs", low=1), default=None, metavar="E")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZER_CHOICES,
        default=None,
        help="default: the scenario's; auto (needs --task) measures SGD and AdamW",
    )
    parser.add_argument("--task", default=None, help="built-in task or module:function: measure")
    parser.add_argument("--head", default=None, help="finetune: the head module's name")
    parser.add_argument(
        "--measure",
        default="finder,noise,memory",
        metavar="LIST",
        help="with --task: what to measure, comma-separated from finder, noise, memory "
        "(default all; the CPU memory probe takes seconds to tens of seconds)",
    )
    parser.add_argument(
        "--seed", type=int_flag("--seed", low=0), default=0, help="seed of the measurements"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="CONFIG.yaml",
        help="write the config (and CONFIG.recommend.json: every choice with its evidence)",
    )
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lrpilot._atomic_io import atomic_write_bytes
    from lrpilot.errors import ConfigError, check_seed
    from lrpilot.recommend import Request
    from lrpilot.recommend._advise import advise

    if args.out is not None:  # fail before measuring, not after
        out = Path(args.out)
        if out.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"--out {args.out!r} must name a .yaml or .yml file")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise ConfigError(f"--out {args.out!r}: directory {str(out.parent)!r} does not exist")
    check_seed(args.seed, "--seed")
    req = Request(
        args.scenario,
        args.dataset_size,
        args.batch,
        args.gpus,
        args.epochs,
        args.optimizer,
        args.task,
        args.head,
    )
    progress = None if args.json else (lambda msg: print(f"measuring: {msg}", file=sys.stderr))
    which = tuple(w.strip() for w in args.measure.split(",") if w.strip())
    advice = advise(req, seed=args.seed, which=which, progress=progress)
    text = advice.yaml_text()
    evidence = json.dumps(advice.evidence(args.out), indent=2, default=str)
    if args.out is not None:  # the config, and beside it every decision with its evidence
        out = Path(args.out)
        atomic_write_bytes(evidence.encode("utf-8"), evidence_path(out))
        atomic_write_bytes(text.encode("utf-8"), out)
    if args.json:
        print(evidence)
        return 0
    _print(advice.recommendation, advice.report, advice.findings, args.out, text)
    return 0


def evidence_path(out: Path) -> Path:
    """Where ``--out CONFIG.yaml`` puts its evidence: ``CONFIG.recommend.json``."""
    return out.with_name(out.stem + ".recommend.json")


def _print(rec: Any, report: dict, findings: list, out: str | None, text: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))
    table = Table(title="lrpilot recommend: each value and why")
    for col in ("key", "value", "basis", "rule", "reason", "source"):
        table.add_column(col, overflow="fold")
    for c in rec.choices:
        table.add_row(c.key, str(c.value), c.basis, c.rule or "-", c.reason, c.source() or "-")
    console.print(table)
    for rid, by in rec.replaced:
        console.print(f"replaced: rule [bold]{rid}[/] by the measurement [bold]{by}[/]")
    choice = report.get("optimizer_choice")
    if choice:
        console.print(f"optimizer choice: {choice['pick']} ({choice['reason']})", markup=False)
    for name, f in report.get("finder", {}).items():
        console.print(
            f"finder {name}: verdict {f['verdict']}, unstable at {f['lr_unstable']}, "
            f"{f['epochs_of_compute']:.2f} epoch of compute at probe batch {f['probe_batch']}"
        )
    for note in rec.notes:
        console.print(f"note: {note}", markup=False)
    for f in findings:
        console.print(f"check: {f.line()}", markup=False)
    if out is None:
        console.print(text, markup=False, highlight=False)
    else:
        console.print(f"config written to {out}")
