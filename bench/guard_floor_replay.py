"""Replays the healthy runs the divergence guard aborted before its loss-scale floor.

``bench/results/autopilot_panel_runs_lr_finder.json`` and ``..._auto.json`` hold
synth-mlp-ln/AdamW runs (15 epochs, batch 64, one-cycle) that the guard aborted after 8
rescues once the training loss was ~0.05: batch losses of 0.05-0.08 counted as "far above
the recent level" because the window's MAD had shrunk with the loss. Each row is run with
``SPIKE_FLOOR = 0`` (the rule before the floor) and with the default floor
(:data:`lrpilot.train._guard.SPIKE_FLOOR`), same seed. CPU, one thread, ~30 s per run.

    PYTHONPATH=src:bench OMP_NUM_THREADS=1 python bench/guard_floor_replay.py

Table of record: ``bench/results/guard_calibration.md``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import heldout_tasks
import lrpilot.train._guard as guard
from lrpilot import TrainingAborted, fit

#: (label, peak LR, seed): the torch-lr-finder row's seed-0 run as recorded; one-cycle at the
#: peak the auto row chose on seed 1 (that row's own schedule was the autopilot's)
ROWS = (("lr_finder seed 0", 0.005857020818056661, 0), ("auto seed 1 peak", 0.0121, 1))


def run(peak: float, seed: int, floor: float) -> str:
    guard.SPIKE_FLOOR = floor
    task = heldout_tasks.synth_mlp_ln()
    cfg = {
        "task": task.name,
        "epochs": 15,
        "batch_size": 64,
        "seed": seed,
        "optimizer": {"name": "adamw", "lr": peak, "weight_decay": 1e-2},
        "schedule": {"name": "one_cycle", "max_lr": peak},
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        try:
            s = fit(cfg, out, progress="none", task=task).summary
        except TrainingAborted:
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            rescues = [r for r in rows if r.get("action") == "guard_rescue"]
            first = rescues[0] if rescues else {}
            return (
                f"aborted | {len(rescues)} | - | first rescue at step {first.get('step')}, "
                f"loss {first.get('loss', float('nan')):.3f}"
            )
        return (
            f"{s['status']} | {s['guard']['rescues']} | {100 * s['final']['val_accuracy']:.1f} | "
            f"final train loss {s['final']['train_loss']:.3f}"
        )


def main() -> None:
    default = guard.SPIKE_FLOOR
    print("| run | peak LR | spike floor | status | rescues | val acc % | note |")
    print("|---|---|---|---|---|---|---|")
    for label, peak, seed in ROWS:
        for floor in (0.0, default):
            print(f"| {label} | {peak:.4g} | {floor:g} | {run(peak, seed, floor)} |", flush=True)


if __name__ == "__main__":
    main()
