"""``lrpilot diagnose PATH [--json] [--png PATH]``: what is wrong with a run, what to do.

PATH is an lrpilot run directory (or ``metrics.jsonl``), a TensorBoard event directory or
file, or a CSV file (see :mod:`lrpilot.diagnosis.readers` for the tags and columns;
``--tag FIELD=TAG`` and ``--column FIELD=NAME`` override them). Unreadable input prints
one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lrpilot.cli._checks import check_png
from lrpilot.errors import ConfigError

# The fields of lrpilot.diagnosis.readers.DEFAULT_TB_TAGS / DEFAULT_CSV_COLUMNS, named here so
# that building the parser imports no reader (tests/test_diagnosis_io.py checks they agree).
TB_FIELDS: tuple[str, ...] = (
    "train_loss",
    "lr",
    "grad_norm",
    "epoch_train_loss",
    "epoch_val_loss",
    "epoch_lr",
)
TB_FIELDS += ("guard_rescue",)
CSV_FIELDS = ("step", "epoch", "lr", "train_loss", "val_loss", "grad_norm")


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{option} {item!r}: expected FIELD=NAME")
        out[key] = value
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="diagnose a run's curves (run dir, TensorBoard events or CSV)",
        description=(
            "Read a run's loss and learning-rate curves and say what is wrong "
            "(diverged, nan, too_slow, oscillating, overfitting, underfitting, plateau) "
            "and what to do, with values taken from the run."
        ),
    )
    parser.add_argument("path", help="run directory, metrics.jsonl, TensorBoard dir/file or CSV")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--png", metavar="PATH", help="write a PNG of the curves and findings")
    parser.add_argument(
        "--tag",
        action="append",
        metavar="FIELD=TAG",
        help=f"TensorBoard tag for a field ({', '.join(TB_FIELDS)}); repeatable",
    )
    parser.add_argument(
        "--column",
        action="append",
        metavar="FIELD=NAME",
        help=f"CSV column for a field ({', '.join(CSV_FIELDS)}); repeatable",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lrpilot.diagnosis import diagnose
    from lrpilot.diagnosis.readers import read_history

    tags = _pairs(args.tag, "--tag")
    columns = _pairs(args.column, "--column")
    if args.png is not None:
        check_png(args.png)
    history = read_history(args.path, tags=tags, columns=columns)
    findings = _as_the_run_said(diagnose(history), Path(args.path))
    if args.png:
        from lrpilot.diagnosis.plot import plot_diagnosis

        plot_diagnosis(history, findings, args.png, title=f"diagnosis of {args.path}")
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        print(f"diagnosis of {args.path}:")
        for f in findings:
            print(f"- {f.describe()}")
        if args.png:
            print(f"plot: {args.png}")
    return 0


def _as_the_run_said(findings: list, path: Path) -> list:
    """An autopilot run directory's diagnosis weighs the LR advice against the candidates
    its ``autopilot.json`` recorded, as the run itself did
    (:func:`lrpilot.autopilot._advice.qualify_from_report`); an unreadable report is said
    and the findings are left as they are."""
    report = path / "autopilot.json"
    if not (path.is_dir() and report.is_file()):
        return findings
    from lrpilot.autopilot._advice import qualify_from_report

    try:
        return qualify_from_report(findings, json.loads(report.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"lrpilot diagnose: {report} not used ({type(exc).__name__}: {exc})", file=sys.stderr)
        return findings
