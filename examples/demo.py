"""``make demo``: train mnist1d-cnn with warmup + cosine from an example config.

Shows the schedule (key points table and a PNG), trains with a progress bar (plain lines
when not on a terminal), then prints the summary and where the run directory and the
TensorBoard logs are. Takes well under a minute on one CPU core.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from rich.console import Console
from rich.table import Table

from lrpilot import fit
from lrpilot.schedules.plot import save_schedule_png
from lrpilot.schedules.report import curve, key_points
from lrpilot.tasks import get_task
from lrpilot.train import load_yaml, parse_config
from lrpilot.train.builders import build_schedule
from lrpilot.train.config import steps_per_epoch

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "mnist1d_cnn_warmup_cosine.yaml"


def main() -> int:
    torch.set_num_threads(1)
    console = Console()
    raw = load_yaml(CONFIG)
    cfg = parse_config(raw)
    task = get_task(cfg.task)
    spe = steps_per_epoch(len(task.train_set), cfg.batch_size, cfg.accumulate)
    total = spe * cfg.epochs
    schedule, momentum, _ = build_schedule(cfg, spe, total)

    console.print(f"[bold]lrpilot demo[/]: {CONFIG.relative_to(HERE.parent)}")
    table = Table(title=f"schedule ({spe} steps/epoch, {total} steps)")
    for col in ("step", "epoch", "point", "learning rate"):
        table.add_column(col, justify="right")
    for row in key_points(schedule, total, momentum):
        table.add_row(str(row.step), f"{row.step / spe:g}", row.label, f"{row.lr:.6g}")
    console.print(table)

    result = fit(raw, progress="auto")
    run_dir = result.run_dir
    steps, lrs = curve(schedule, total)
    png = save_schedule_png(
        run_dir / "schedule.png", steps, lrs, steps_per_epoch=spe, title="warmup + cosine"
    )

    s = result.summary
    summary = Table(title="summary")
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    rows = [
        ("status", s["status"]),
        ("epochs / steps", f"{s['epochs_run']} / {s['steps_run']}"),
        ("final val accuracy", f"{s['final']['val_accuracy']:.4f}"),
        ("final val loss", f"{s['final']['val_loss']:.4f}"),
        (
            f"best {s['best']['monitor']} (epoch {s['best']['epoch'] + 1})",
            f"{s['best']['value']:.4f}",
        ),
        ("wall time", f"{s['wall_time_s']:.1f} s"),
        ("training samples/s", f"{s['samples_per_s']:.0f}"),
        ("guard rescues", str(s["guard"]["rescues"])),
    ]
    for key, value in rows:
        summary.add_row(key, value)
    console.print(summary)
    for finding in s.get("diagnosis") or []:
        if "error" in finding:
            console.print(f"diagnosis: {finding['error']}")
            continue
        console.print(
            f"diagnosis: [bold]{finding.get('kind')}[/] ({finding.get('severity')}): "
            f"{finding.get('summary', '')} -> {finding.get('advice', '')}"
        )
    console.print(f"run directory:  {run_dir}")
    console.print(f"  summary.json, metrics.jsonl, config.yaml, checkpoints/, {png.name}")
    console.print(f"TensorBoard:    tensorboard --logdir {run_dir / 'tensorboard'}")
    console.print(
        f"resume after an interruption: lrpilot fit {CONFIG.relative_to(HERE.parent)} --out {run_dir} --resume"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
