"""Replay the autopilot's peak-LR decision on recorded probes under other rules.

Input: the probes that ``bench/autopilot_panel.py run`` recorded (every candidate's
decision-split score after its cooldown): method ``auto_rec`` (version a1: 4-5 candidates,
holds of 6% at the candidate LR, a second round) and ``auto`` (the current version, a3:
4 candidates, holds of 8% at one-cycle's level). Rules replayed on each run's first round:

* ``free``: :func:`lrpilot.autopilot._decide.choose_peak` (lowest score, paired-SE ties to
  the larger LR; a1's rule);
* ``anchor d``: :func:`lrpilot.autopilot._decide.anchored_peak` with ``down_gap=d`` (the
  finder's suggestion stays unless a smaller LR has a loss ratio above ``1 + d``; a
  quarter decade below it when the next step up failed; never higher); ``d = inf``: the
  finder's suggestion;
* ``blend b``: :func:`lrpilot.autopilot._decide.blend_peak` of ``anchor 0.5`` with bias
  ``b`` (the geometric mean of the anchored LR and the lowest-loss LR / ``b``); ``b =
  10 ** 0.25`` is the method of record (a5/a6).

The accuracy at a pick is the recorded one-cycle grid (5 seeds; 3 on the new rows)
interpolated in log LR (``finder_quality.interp_acc``), a stand-in for training (it
ignores the decision split and the probes' own trajectory). Only the calibration rows fit
the constant; the held-out rows (digits-cnn-nobn, gru-mnist1d, tiny-lm) are printed to
check it, never to choose it.

    python bench/autopilot_rule_research.py [--rows ...] [--methods auto,auto_rec]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import autopilot_panel as P
import finder_quality as fq
from lrpilot.autopilot._decide import Probe, anchored_peak, blend_peak, choose_peak, prior_lr

DOWN_GAPS = (0.0, 0.1, 0.25, 0.5, 1.0, math.inf)
BIASES = (1.0, 10**0.125, 10**0.25, 10**0.375, 10**0.5)
HELD_OUT = ("digits-cnn-nobn/sgd", "gru-mnist1d/adamw", "tiny-lm/adamw")


def replay(rec: dict, rule: str, arg: float = 0.0) -> float | None:
    r1 = [Probe.from_dict(p) for p in rec["probes"] if p["round"] == 1]
    if rule == "free":
        return choose_peak(r1).value
    if rule == "blend":
        return blend_peak(anchored_peak(r1, prior_lr(rec.get("prior", {}))), r1, bias=arg).value
    return anchored_peak(r1, prior_lr(rec.get("prior", {})), down_gap=arg).value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(P.ROWS))
    parser.add_argument("--methods", default="auto,auto_rec")
    parser.add_argument("--version", default=None, help="the auto runs' version (e.g. a3)")
    args = parser.parse_args(argv)
    if args.version:
        P.METHOD_VERSION["auto"] = args.version
    runs = P.Runs()
    rules = [("free", 0.0)] + [("anchor", g) for g in DOWN_GAPS] + [("blend", b) for b in BIASES]
    head = ["row (method, seeds)", "one-cycle best"] + [
        "free" if r == "free" else f"{r} {g:.3g}" for r, g in rules
    ]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for row in args.rows.split(","):
        grid = P.grid_of(row, train=False)
        means = {
            lr: statistics.fmean(v)
            for (s, lr), v in grid.items()
            if s == "one_cycle" and all(math.isfinite(x) for x in v)
        }
        if not means:
            continue
        lm = P.setup(row)["task"] == "heldout_tasks:tiny_lm"
        for method in args.methods.split(","):
            recs = [runs.get(method, row, s) for s in P.SEEDS]
            recs = [r for r in recs if r is not None and r.get("probes")]
            if not recs:
                continue
            cells = []
            for rule, gap in rules:
                picks = [replay(r, rule, gap) for r in recs]
                acc = statistics.fmean(fq.interp_acc(means, lr) for lr in picks if lr)
                shown = f"{-acc:.3f}" if lm else f"{acc:.1f}"
                cells.append(f"{shown} ({', '.join(f'{lr:.3g}' for lr in picks if lr)})")
            best = max(means.values())
            tag = " HELD-OUT" if row in HELD_OUT else ""
            label = f"{row} ({P.METHOD_VERSION[method]}, n={len(recs)}){tag}"
            print(" | ".join([label, f"{-best:.3f}" if lm else f"{best:.1f}", *cells]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
