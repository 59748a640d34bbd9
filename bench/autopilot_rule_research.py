"""Replay the autopilot's peak-LR decision on recorded probes with other tie tolerances.

Input: the probes that ``bench/autopilot_panel.py run --methods auto_rec`` recorded (every
candidate's decision-split score after its cooldown). For each relative tolerance ``tol``
the decision is :func:`lrpilot.autopilot.decide.choose_peak` with ``tolerance=tol`` (the
largest LR whose score is within ``(1 + tol)`` of the best or within one paired standard
error), applied to round 1; where round 1 picks what the recorded run picked, round 2 is
replayed too, else the round-1 pick is final (its round 2 was never run). The accuracy at
a pick is the recorded one-cycle grid (5 seeds) interpolated in log LR
(``finder_quality.interp_acc``), as in ``finder_rule_research.md``: a stand-in for training.

    python bench/autopilot_rule_research.py [--rows mnist1d-cnn/sgd,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import autopilot_panel as P
import finder_quality as fq
from lrpilot.autopilot.decide import Probe, choose_peak

TOLERANCES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: the decision-split loss at the start (not recorded by the a1 runs): a 10-class network at
#: initialisation predicts about uniformly, ln 10
INITIAL = 2.302585


def replay(rec: dict, tol: float) -> float:
    probes = [Probe.from_dict({**p, "losses": p["losses"]}) for p in rec["probes"]]
    r1 = [p for p in probes if p.round == 1]
    r2 = [p for p in probes if p.round == 2]
    pick1 = choose_peak(r1, progress=tol, initial=INITIAL).value
    if r2 and pick1 == rec["decisions"]["round1_pick"]:
        got = choose_peak(r2, progress=tol, initial=INITIAL).value
        return got if got is not None else pick1
    return pick1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="mnist1d-cnn/sgd,digits-cnn/sgd,mnist1d-mlp/adamw")
    args = parser.parse_args(argv)
    runs = P.Runs()
    print("row | oracle (one-cycle grid) | " + " | ".join(f"tol {t:g}" for t in TOLERANCES))
    worst = dict.fromkeys(TOLERANCES, 0.0)
    for row in args.rows.split(","):
        grid = P.grid_of(row)
        means = {lr: statistics.fmean(v) for (s, lr), v in grid.items() if s == "one_cycle"}
        best = max(means.values())
        recs = [runs.get("auto_rec", row, s) for s in P.SEEDS]
        recs = [r for r in recs if r is not None]
        cells = []
        for tol in TOLERANCES:
            picks = [replay(r, tol) for r in recs]
            acc = statistics.fmean(fq.interp_acc(means, lr) for lr in picks)
            worst[tol] = max(worst[tol], best - acc)
            cells.append(f"{acc:.1f} ({', '.join(f'{lr:.3g}' for lr in picks)})")
        print(f"{row} (n={len(recs)}) | {best:.1f} | " + " | ".join(cells))
    print("worst shortfall | | " + " | ".join(f"{worst[t]:.2f}" for t in TOLERANCES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
