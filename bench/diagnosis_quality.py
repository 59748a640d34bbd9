"""Diagnosis quality: precision and recall per kind on the labeled corpus of real runs.

Reads ``bench/diagnosis_corpus/labels.json`` and each run's ``metrics.jsonl`` (written by
``bench/diagnosis_corpus.py``; run that first), diagnoses every run with
``lrpilot.diagnose`` and compares the set of reported kinds with the run's labels:
for each kind, a run reporting it counts as a true positive when labeled with it and a
false positive otherwise; a labeled run not reporting it is a false negative.
precision = TP / (TP + FP), recall = TP / (TP + FN). Target: >= 90% each. Runs whose
kinds differ from their labels are listed under the table. The table is printed for all
runs, then for each seed group of ``diagnosis_corpus.SEED_GROUPS``: the seeds used while
writing the rules, and the held-out seeds added after each round of tuning. No training
happens here.

    .venv/bin/python bench/diagnosis_quality.py [--corpus DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lrpilot.diagnosis import KINDS, diagnose
from lrpilot.history import History

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diagnosis_corpus import SEED_GROUPS

CORPUS_DIR = Path(__file__).resolve().parent / "diagnosis_corpus"
TARGET = 0.9


def diagnose_corpus(corpus: Path) -> tuple[dict, dict[str, dict]]:
    """The corpus labels and one row per run (labels, kinds found, advice), each run read
    and diagnosed once."""
    labels = json.loads((corpus / "labels.json").read_text())
    rows = {}
    for run_id in sorted(labels):
        findings = diagnose(History.read_jsonl(corpus / run_id / "metrics.jsonl"))
        rows[run_id] = {
            "run": run_id,
            "labels": sorted(set(labels[run_id]["labels"])),
            "found": [f.kind for f in findings],
            "advice": [f.advice for f in findings],
        }
    return labels, rows


def evaluate(
    labels: dict, rows: dict[str, dict], seeds: set[int] | None = None
) -> tuple[dict[str, dict[str, int]], list[dict]]:
    """Per-kind counts and per-run rows over the corpus (only ``seeds`` when given)."""
    counts = {k: {"tp": 0, "fp": 0, "fn": 0, "runs": 0} for k in KINDS}
    selected = []
    for run_id, row in rows.items():
        if seeds is not None and labels[run_id]["seed"] not in seeds:
            continue
        truth, got = set(row["labels"]), set(row["found"])
        for kind in KINDS:
            counts[kind]["runs"] += kind in truth
            if kind in got and kind in truth:
                counts[kind]["tp"] += 1
            elif kind in got:
                counts[kind]["fp"] += 1
            elif kind in truth:
                counts[kind]["fn"] += 1
        selected.append(row)
    return counts, selected


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    if not (args.corpus / "labels.json").is_file():
        print(f"no corpus at {args.corpus}; run bench/diagnosis_corpus.py first", file=sys.stderr)
        return 2
    labels, runs = diagnose_corpus(args.corpus)
    all_seeds = {v["seed"] for v in labels.values()}
    groups: list[tuple[str, set[int] | None]] = [("all runs", None)]
    for title, seeds in SEED_GROUPS:
        if set(seeds) & all_seeds:
            groups.append((title, set(seeds)))
    report = {}
    for title, seeds in groups:
        counts, rows = evaluate(labels, runs, seeds)
        report[title] = (_table(counts), rows)
    if args.json:
        print(
            json.dumps(
                {t: {"table": tb, "runs": rows} for t, (tb, rows) in report.items()}, indent=2
            )
        )
        return 0
    for title, (table, rows) in report.items():
        _print(title, args.corpus, table, rows)
    return 0


def _table(counts: dict[str, dict[str, int]]) -> list[dict]:
    table = []
    for kind, c in counts.items():
        if c["runs"] == 0 and c["fp"] == 0:
            continue
        table.append(
            {
                "kind": kind,
                "runs": c["runs"],
                "tp": c["tp"],
                "fp": c["fp"],
                "fn": c["fn"],
                "precision": _ratio(c["tp"], c["tp"] + c["fp"]),
                "recall": _ratio(c["tp"], c["tp"] + c["fn"]),
            }
        )
    return table


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}%"


def _print(title: str, corpus: Path, table: list[dict], rows: list[dict]) -> None:
    print(f"diagnosis quality, {title}: {len(rows)} real runs ({corpus.name})")
    print(
        f"{'kind':<16}{'runs':>5}{'TP':>5}{'FP':>5}{'FN':>5}{'precision':>11}{'recall':>9}  target"
    )
    for r in table:
        ok = all(v is not None and v >= TARGET for v in (r["precision"], r["recall"]))
        print(
            f"{r['kind']:<16}{r['runs']:>5}{r['tp']:>5}{r['fp']:>5}{r['fn']:>5}"
            f"{_pct(r['precision']):>11}{_pct(r['recall']):>9}  {'ok' if ok else 'MISSED'}"
        )
    wrong = [r for r in rows if sorted(r["found"]) != r["labels"]]
    print(f"exact match: {len(rows) - len(wrong)}/{len(rows)} runs")
    for r in wrong:
        print(f"  {r['run']}: labeled {r['labels']}, found {r['found']}")
    print()


if __name__ == "__main__":
    sys.exit(main())
