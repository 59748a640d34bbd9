"""Demonstration: the gradient noise scale B_simple on the built-in tasks.

For each built-in task: the probe (``lrpilot.batch.noise_scale``, small batch 8, big batch
256, 32 draws) at initialisation; then a short ``lrpilot.fit`` run (the task's optimizer and
LR, batch 16 x accumulate 4 = 64, ``noise_scale: true`` so the loop measures B_simple
online from its micro-batches); then the probe again on the trained model. McCandlish et
al. (2018) report that B_simple grows as training progresses; whether it does here is what
the table shows. The online value is an EMA (beta 0.99) over the whole trajectory, so it
lags the end-of-run probe; at fixed weights the two agree (tests/test_batch_distributed.py).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/batch_noise.py [--epochs 3]`` (about a
minute on one core).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=["digits-cnn", "mnist1d-cnn", "mnist1d-mlp"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from rich.console import Console
    from rich.table import Table

    from lrpilot import fit
    from lrpilot.batch import noise_scale
    from lrpilot.tasks import get_task

    rows = []
    for name in args.tasks:
        task = get_task(name)
        t0 = time.perf_counter()
        init = noise_scale(task, small_batch=8, big_batch=256, measurements=32, seed=0)
        probe_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as out:
            cfg = {
                "task": name,
                "epochs": args.epochs,
                "batch_size": 16,
                "accumulate": 4,
                "noise_scale": True,
            }
            run = fit(cfg, out_dir=f"{out}/run", progress="none")
        trained = noise_scale(
            run.model,
            task.train_set,
            loss_fn=task.loss_fn,
            small_batch=8,
            big_batch=256,
            measurements=32,
            seed=1,
        )
        online = run.summary["noise_scale"]
        acc = run.summary["final"].get("val_accuracy", float("nan"))
        rows.append((name, init, trained, online, acc, probe_s))
    table = Table(
        title=f"gradient noise scale B_simple (probe: b=8, B=256, 32 draws; fit: {args.epochs} epochs)"
    )
    for col in (
        "task",
        "at init",
        f"after {args.epochs} epochs",
        "online EMA in fit",
        "val acc",
        "probe s",
    ):
        table.add_column(col, justify="right")
    for name, init, trained, online, acc, secs in rows:
        table.add_row(
            name,
            f"{init.b_simple:.1f} ± {init.stderr:.1f}",
            f"{trained.b_simple:.1f} ± {trained.stderr:.1f}",
            "-" if online is None else f"{online:.1f}",
            f"{acc:.3f}",
            f"{secs:.1f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
