"""Optimizer choice: how often does ``lrpilot recommend --optimizer auto`` pick the better one?

For each benchmark task that ``bench/finder_quality.py`` ran with both SGD (momentum 0.9,
weight decay 5e-4) and AdamW (weight decay 1e-2) (digits-cnn, mnist1d-cnn, mnist1d-mlp,
digits-mlp, synth-mlp-ln; 15 epochs at batch 64) and each schedule (one-cycle,
warmup+cosine):

* the **oracle**: each optimizer's grid-best mean final test accuracy (half-decade LR grid,
  5 training seeds, extended while the best sits on an edge; the recorded runs of
  ``bench/results/finder_quality_runs.json``). The better optimizer is the one with the
  higher grid-best; a gap under ``--tie`` points (default 0.5, the finder benchmark's
  accuracy target) counts as a tie, where either pick matches;
* the **pick** of :func:`lrpilot.recommend._choice.better_sweep` for each of the 5 finder
  seeds, on the recorded finder sweeps (``finder_quality_curves.json``: the ``lrpilot
  find`` protocol, probe batch 8, LR 1e-5..10, half an epoch per sweep; the SGD and AdamW
  sweeps of one seed start from the same weights, seed 1000 + s, and see the same batches);
  a tie of the picker keeps the scenario's default, SGD for these image/signal
  classification tasks (column ``tie->``);
* **match**: picks that equal the oracle's better optimizer (or any pick on an oracle tie),
  over the 5 seeds;
* **baselines**: the match of always picking SGD and of always picking AdamW, and the
  match of the decisive picks alone (the picker's ties fall back to SGD);
* **rule of thumb**: a second table, the mean accuracy at the rules' starting LR
  (``lr.sgd`` 0.01, ``lr.adamw`` 1e-3, both on the grids) against the grid-best, per
  optimizer, to show what a measurement has to win back;
* **compute**: the picker's cost, two sweeps, in epochs of the training set (samples /
  training-set size), against the oracle's: (grid runs of both optimizers) x 15 epochs.

Nothing is trained when the caches hold every run (the committed ones do): the whole table
is recomputed from recorded data in seconds. A missing run or sweep is trained and added to
the caches (as ``finder_quality.py`` does).

    OMP_NUM_THREADS=1 .venv/bin/python bench/optimizer_choice.py [--tie 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import finder_quality as fq

#: task -> (SGD row, AdamW row) of ``finder_quality.TASK_SETUPS``
PAIRS = {
    "digits-cnn": ("digits-cnn", "digits-cnn/adamw"),
    "mnist1d-cnn": ("mnist1d-cnn", "mnist1d-cnn/adamw"),
    "mnist1d-mlp": ("mnist1d-mlp/sgd", "mnist1d-mlp"),
    "digits-mlp": ("digits-mlp", "digits-mlp/adamw"),
    "synth-mlp-ln": ("synth-mlp-ln", "synth-mlp-ln/adamw"),
}
SEEDS = list(range(fq.DEFAULT_SEEDS))
EPOCHS = 15
TABLE = fq.RESULTS.with_name("optimizer_choice_table.txt")


def oracle(cache, row: str, schedule: str) -> tuple[float, float, int]:
    """``(best LR, its mean accuracy, grid points)`` of one optimizer row."""
    means = fq.grid_search(cache, row, schedule, SEEDS, EPOCHS)
    best = max(means, key=means.get)
    return best, means[best], len(means)


def picks(curves: dict, pair: tuple[str, str], default: str = "sgd") -> list[dict]:
    """The picker's choice for each finder seed (on the recorded sweeps)."""
    from lrpilot.recommend._choice import better_sweep

    out = []
    for seed in fq.FINDER_SEEDS:
        sweeps = {}
        samples = 0
        train = 1
        for name, row in zip(("sgd", "adamw"), pair, strict=True):
            c = fq.finder_curve(curves, row, seed)
            losses = [float("nan") if v is None else v for v in c["losses"]]
            sweeps[name] = (c["lrs"], losses, c["initial_loss"])
            samples += c["samples"]
            train = c["train_size"]
        r = better_sweep(sweeps)
        out.append(
            {
                "seed": seed,
                "pick": r.pick or default,
                "tie": r.pick is None,
                "epochs": samples / train,
                "reason": r.reason,
            }
        )
    return out


def rule_table(cache):  # type: ignore[no-untyped-def]
    """Accuracy at the rule-of-thumb LR vs the grid-best, per optimizer row and schedule."""
    from rich.table import Table

    from lrpilot.recommend._rules import value

    table = Table(title="Rule-of-thumb LR vs grid-best (mean of 5 seeds, 15 epochs, batch 64)")
    for col in ("row", "schedule", "rule LR", "acc at rule LR", "grid-best LR", "best acc", "gap"):
        table.add_column(col)
    for pair in PAIRS.values():
        for row in pair:
            opt = fq.TASK_SETUPS[row]["optimizer"]
            lr = value(f"lr.{opt}")[1]
            for schedule in fq.SCHEDULES:
                means = fq.grid_search(cache, row, schedule, SEEDS, EPOCHS)
                best = max(means, key=means.get)
                at_rule = statistics.fmean(
                    fq.cached_acc(cache, row, schedule, lr, s, EPOCHS) for s in SEEDS
                )
                table.add_row(
                    row,
                    schedule,
                    f"{lr:g}",
                    f"{at_rule:.2f}",
                    f"{best:g}",
                    f"{means[best]:.2f}",
                    f"{at_rule - means[best]:+.2f}",
                )
    return table


def main(argv=None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tie", type=float, default=0.5, help="oracle tie (accuracy points)")
    args = parser.parse_args(argv)
    t0 = time.time()
    cache = fq.RunCache(fq.RESULTS)
    curves = json.loads(fq.CURVES.read_text()) if fq.CURVES.is_file() else {}
    console = Console(width=200, record=True)
    table = Table(title="Optimizer choice: picker (2 finder sweeps) vs grid oracles")
    for col in (
        "task",
        "schedule",
        "SGD best (lr, acc)",
        "AdamW best (lr, acc)",
        "oracle",
        "picks (seeds 0-4)",
        "ties->sgd",
        "match",
        "picker epochs",
        "oracle epochs",
    ):
        table.add_column(col)
    total = matched = 0
    baseline = {"sgd": 0, "adamw": 0}
    decisive = decisive_hits = 0
    per_task = {task: picks(curves, pair) for task, pair in PAIRS.items()}
    for task, pair in PAIRS.items():
        for schedule in fq.SCHEDULES:
            (ls, acc_s, ns), (la, acc_a, na) = (oracle(cache, r, schedule) for r in pair)
            gap = acc_a - acc_s
            better = "tie" if abs(gap) < args.tie else ("adamw" if gap > 0 else "sgd")
            ps = per_task[task]
            hits = sum(1 for p in ps if better == "tie" or p["pick"] == better)
            total += len(ps)
            matched += hits
            for name in baseline:
                baseline[name] += len(ps) if better in ("tie", name) else 0
            decisive += sum(1 for p in ps if not p["tie"])
            decisive_hits += sum(
                1 for p in ps if not p["tie"] and (better == "tie" or p["pick"] == better)
            )
            table.add_row(
                task,
                schedule,
                f"{ls:.3g}, {acc_s:.2f}",
                f"{la:.3g}, {acc_a:.2f}",
                f"{better} ({gap:+.2f})",
                " ".join(p["pick"] for p in ps),
                str(sum(p["tie"] for p in ps)),
                f"{hits}/{len(ps)}",
                f"{statistics.median(p['epochs'] for p in ps):.2f}",
                str((ns + na) * len(SEEDS) * EPOCHS),
            )
    console.print(table)
    console.print(
        f"match: {matched}/{total} ({matched / total:.0%}); oracle tie below {args.tie} points; "
        f"training seeds {SEEDS}, finder seeds {list(fq.FINDER_SEEDS)}; "
        f"{time.time() - t0:.0f} s"
    )
    console.print(
        f"baselines: always SGD {baseline['sgd']}/{total}, always AdamW "
        f"{baseline['adamw']}/{total}; decisive picks (no picker tie) {decisive_hits}/{decisive}"
    )
    console.print(rule_table(cache))
    for task, ps in per_task.items():
        for p in ps:
            console.print(f"  {task} seed {p['seed']}: {p['reason']}")
    TABLE.write_text(console.export_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
