"""Microseconds per optimizer step spent in the scheduler's ``step()``: lrpilot's
``attach(...)`` adapter versus the equivalent PyTorch scheduler.

Only ``scheduler.step()`` is timed (the optimizer step is not): both schedulers drive an
SGD optimizer with one parameter group (``--groups`` for more). For each case and each
repeat, the two are timed alternately over ``--steps`` steps (fresh objects per repeat,
so schedules stay inside their range); the table reports the best (minimum) over repeats,
as ``timeit`` advises since load on the machine only ever adds time, plus the median, and
the ratio of the minima lrpilot / PyTorch (target: <= 1.0). Cost: about 20 s of CPU with the defaults.

    OMP_NUM_THREADS=1 .venv/bin/python bench/schedule_overhead.py [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch
import torch.optim.lr_scheduler as L
from rich.console import Console
from rich.progress import track
from rich.table import Table

from lrpilot import schedules as S

LR = 0.1


def cases(n: int) -> dict[str, tuple[Callable, Callable]]:
    warm = n // 10
    return {
        "cosine": (
            lambda o: L.CosineAnnealingLR(o, T_max=n, eta_min=1e-4),
            lambda o: S.attach(o, S.cosine(LR, n, final_lr=1e-4)),
        ),
        "one-cycle (+momentum)": (
            lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=n + 1),
            lambda o: S.attach(o, S.one_cycle(LR, n + 1), momentum=S.one_cycle_momentum(n + 1)),
        ),
        "warmup+cosine": (
            lambda o: L.SequentialLR(
                o,
                [
                    L.LinearLR(o, start_factor=1e-3, end_factor=1.0, total_iters=warm),
                    L.CosineAnnealingLR(o, T_max=n - warm, eta_min=1e-4),
                ],
                milestones=[warm],
            ),
            lambda o: S.attach(
                o, S.warmup(S.cosine(LR, n - warm, final_lr=1e-4), warm, start_lr=LR * 1e-3)
            ),
        ),
        "multistep": (
            lambda o: L.MultiStepLR(o, milestones=[n // 3, 2 * n // 3], gamma=0.1),
            lambda o: S.attach(o, S.multistep(LR, [n // 3, 2 * n // 3], 0.1)),
        ),
    }


def make_optimizer(groups: int) -> torch.optim.Optimizer:
    from lrpilot.optim import create_optimizer

    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    return create_optimizer("sgd", params, lr=LR, momentum=0.9)


def time_steps(make: Callable, n: int, groups: int) -> float:
    """Microseconds per ``step()`` over ``n`` steps (the optimizer itself is not stepped:
    a flag marks it as stepped so PyTorch's ordering check sees normal use)."""
    opt = make_optimizer(groups)
    sched = make(opt)
    opt._opt_called = True  # what the wrapped optimizer.step() would set (no warning)
    step = sched.step
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            step()
        t1 = time.perf_counter_ns()
    finally:
        gc.enable()
    return (t1 - t0) / n / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--groups", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import warnings

    warnings.simplefilter("ignore")  # SequentialLR prints a one-time deprecation note
    table = Table(
        title=f"scheduler.step() cost, µs per optimizer step: best (median) of "
        f"{args.repeats} x {args.steps} steps, {args.groups} param group(s)"
    )
    for col in ("schedule", "PyTorch µs", "lrpilot µs", "ratio", "target <= 1.0"):
        table.add_column(col, justify="right" if col != "schedule" else "left")
    for name, (ref, ours) in track(list(cases(args.steps).items()), description="timing"):
        t_ref, t_ours = [], []
        for _ in range(args.repeats):
            t_ref.append(time_steps(ref, args.steps, args.groups))
            t_ours.append(time_steps(ours, args.steps, args.groups))
        r, o = min(t_ref), min(t_ours)
        rm, om = statistics.median(t_ref), statistics.median(t_ours)
        table.add_row(
            name,
            f"{r:.2f} ({rm:.2f})",
            f"{o:.2f} ({om:.2f})",
            f"{o / r:.2f}",
            "yes" if o <= r else "NO",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
