"""Finder with other probe batches: does a larger one rescue a ``"noisy"`` sweep?

For each row of ``bench/finder_quality.py`` given (default: the LayerNorm task whose
batch-8 sweeps were all ``"noisy"`` under the linear analysis, 3 of 5 per optimizer under
the log-scale one; the table in ``finder_rule_research.md`` was measured with the linear
analysis) and each probe batch ``b``: 5 finder seeds with the
half-epoch budget (``lrpilot.finder.protocol.probe_plan(..., probe_batch=b)``), their
verdicts, the median ``lr_unstable``, and per schedule the suggestion of the rule with
``r = 64 / b`` against the row's grid-best LR and accuracy. Accuracies are interpolated
on the cached 5-seed grids of ``finder_quality.py`` (run that first); nothing is trained
here. Sweeps are cached with ``finder_quality.py``'s (``finder_quality_curves.json``).

    .venv/bin/python bench/finder_probe_batch.py [--rows synth-mlp-ln,...] [--probe-batches 8,16,32,64]

Cost: about one second per sweep on one core (40 sweeps for the defaults).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import finder_quality as fq  # bench/ is sys.path[0] when run as a script


def grid_means(runs: dict, row: str, schedule: str, seeds: int) -> dict[float, float]:
    """Mean accuracy per LR over the cached runs of ``row`` with at least ``seeds`` seeds."""
    accs: dict[float, list[float]] = {}
    for key, value in runs.items():
        parts = key.split("|")
        if parts[:3] == [fq.PROTOCOL[schedule], row, schedule] and parts[5] == "15":
            accs.setdefault(float(parts[3]), []).append(value)
    return {lr: statistics.fmean(a) for lr, a in accs.items() if len(a) >= seeds}


def main(argv: list[str] | None = None) -> int:
    from lrpilot.finder.decision import analyze_curve
    from lrpilot.finder.policy import OPTIMIZER_FAMILIES, SCHEDULE_FRACTIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="synth-mlp-ln,synth-mlp-ln/adamw")
    parser.add_argument("--probe-batches", default="8,16,32,64")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in fq.TASK_SETUPS]
    if unknown:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(fq.TASK_SETUPS)}")
    probes = [int(b) for b in args.probe_batches.split(",")]
    runs = json.loads(fq.RESULTS.read_text()) if fq.RESULTS.is_file() else {}
    curves = json.loads(fq.CURVES.read_text()) if fq.CURVES.is_file() else {}
    print(f"{'row':<20}{'b':>4}{'ok':>6}  {'lr_unstable (min..max)':<26}", end="")
    print("".join(f"{s + ': sugg, x best, acc vs best':<38}" for s in fq.SCHEDULES))
    for row in rows:
        kappa = OPTIMIZER_FAMILIES[fq.family(row)]
        means = {s: grid_means(runs, row, s, fq.DEFAULT_SEEDS) for s in fq.SCHEDULES}
        for probe in probes:
            analyses = []
            for seed in fq.FINDER_SEEDS:
                c = fq.finder_curve(curves, row, seed, probe_batch=probe)
                losses = [math.nan if v is None else v for v in c["losses"]]
                analyses.append(analyze_curve(c["lrs"], losses, c["initial_loss"]))
            ok = [a.lr_unstable for a in analyses if a.verdict == "ok"]
            line = f"{row:<20}{probe:>4}{f'{len(ok)}/{len(analyses)}':>6}  "
            if not ok:
                verdicts = sorted({a.verdict for a in analyses})
                print(line + f"none ({', '.join(verdicts)})")
                continue
            u = statistics.median(ok)
            line += f"{f'{u:.3g} ({min(ok):.3g}..{max(ok):.3g})':<26}"
            for s in fq.SCHEDULES:
                m = means[s]
                if not m:
                    line += f"{'(no cached grid)':<38}"
                    continue
                best = max(m, key=m.get)
                sugg = SCHEDULE_FRACTIONS[s] * (fq.BATCH / probe) ** kappa * u
                cell = (
                    f"{sugg:.3g}, {sugg / best:.2f}x, {fq.interp_acc(m, sugg):.1f} vs {m[best]:.1f}"
                )
                line += f"{cell:<38}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
