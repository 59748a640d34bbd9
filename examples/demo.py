"""``make demo``: the autopilot on mnist1d-cnn (SGD, 15 epochs, budget 1.3x one run).

``lrpilot.auto`` measures the finder's prior, probes candidate peak LRs from shared
snapshots (each scored on a held-out part of the training data after a short cooldown),
chooses the peak LR, warmup and schedule shape, then trains in the same engine as
``lrpilot fit``. The demo prints each decision and why, the training, the diagnosis, the
compute spent and where the run directory is. Takes well under a minute on one CPU core.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from rich.console import Console
from rich.table import Table

import lrpilot
from lrpilot.autopilot import decision_rows, load_report


def main() -> int:
    torch.set_num_threads(1)
    console = Console()
    out = Path("runs") / f"demo-auto-{dt.datetime.now():%Y%m%d-%H%M%S}"
    console.print(
        "[bold]lrpilot demo[/]: lrpilot auto --task mnist1d-cnn --optimizer sgd --epochs 15 "
        f"--budget 1.3 --out {out}"
    )
    result = lrpilot.auto(
        "mnist1d-cnn",
        optimizer="sgd",
        epochs=15,
        budget=1.3,
        out_dir=out,
        progress="auto",
        say=console.print,
    )
    info = load_report(result.run_dir)
    table = Table(title="decisions (autopilot.json has every candidate and its evidence)")
    for col in ("decision", "value", "why"):
        table.add_column(col)
    for row in decision_rows(info):
        table.add_row(*row)
    console.print(table)
    s = result.summary
    console.print(
        f"final val accuracy {s['final']['val_accuracy']:.4f}, val loss "
        f"{s['final']['val_loss']:.4f}; compute {s['compute_multiple']:.3f} x one run "
        f"(probes and discarded branches included); guard rescues {s['guard']['rescues']}"
    )
    for finding in s.get("diagnosis") or []:
        if "error" in finding:
            console.print(f"diagnosis: {finding['error']}")
            continue
        console.print(
            f"diagnosis: [bold]{finding.get('kind')}[/] ({finding.get('severity')}): "
            f"{finding.get('summary', '')} -> {finding.get('advice', '')}"
        )
    console.print(f"run directory:  {result.run_dir}")
    console.print("  autopilot.json, autopilot.png, summary.json, metrics.jsonl, config.yaml")
    console.print(f"TensorBoard:    tensorboard --logdir {result.run_dir / 'tensorboard'}")
    console.print(
        f"resume after an interruption: lrpilot auto --task mnist1d-cnn --optimizer sgd "
        f"--epochs 15 --out {result.run_dir} --resume"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
