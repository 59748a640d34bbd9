"""Benchmark: the memory probe's predicted max batch vs the true limit under a CPU budget.

The question: under a fixed CPU memory budget, how close is ``lrpilot.batch.probe_memory``'s
answer to the largest batch that really trains within it, and how long does the probe take?

The true limit, defined honestly: the largest batch ``b`` for which a *fresh* Python
process (this script with ``--trial``: imports torch and lrpilot, builds the task, the
model and its optimizer, then runs 3 training steps at batch ``b`` with glibc's default
allocator settings) has a peak resident set (``VmHWM``) within the budget. It is found by
trial, each batch size in its own subprocess: starting at the prediction, step by 10%
until the answer flips, then bisect until the bracket is within 0.5% (every batch in the
final bracket is on the right side of the limit as measured; peak RSS is assumed monotone
in the batch between the tried points).

The budget: the resident set of such a process right after setup (measured once with a
trial at batch 2) plus a headroom per task. The probe runs in its own fresh process of the
same kind (``--probe``), so both start from the same baseline.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/batch_probe.py`` (9-10 minutes on one
shared core, mostly fresh-process start-ups; ``--cases TASK:HEADROOM_MIB`` to change).
Target: predicted within 10% of the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20
HERE = Path(__file__).resolve().parent
DEFAULT_CASES = ("digits-cnn:1024", "mnist1d-cnn:512", "batch_probe:wide_task:1024")


def wide_task():  # type: ignore[no-untyped-def]
    """A memory-heavy, compute-light task (about 0.5 MiB of activations per sample)."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from lrpilot.tasks import Task

    class Wide(nn.Module):
        def __init__(self, d: int = 32768) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(d))
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(x * self.w)
            return self.head(h.view(x.shape[0], 16, -1).mean(-1))

    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(64, 32768, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    )
    return Task(
        name="wide",
        build_model=Wide,
        train_set=data,
        val_set=data,
        loss_fn=nn.functional.cross_entropy,
        defaults={"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        description="elementwise tanh over 32768 features, SGD",
    )


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _sub(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args}: exit {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ child modes
def _trial(task_name: str, batch: int, steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    from lrpilot.batch._memory_base import make_optimizer, repeat_batch, train_steps
    from lrpilot.batch._memory_cpu import status_kib
    from lrpilot.batch.memory import _resolve
    from lrpilot.tasks import get_task

    task = get_task(task_name)
    factory, x1, y1, loss_fn, opt_spec, _ = _resolve(task, None, None, None)
    model = factory()
    opt = make_optimizer(opt_spec, [p for p in model.parameters() if p.requires_grad])
    rss_before = status_kib("VmRSS") * 1024
    x, y = repeat_batch(x1, y1, batch, torch.device("cpu"))
    train_steps(model, opt, loss_fn, x, y, steps)
    print(json.dumps({"hwm": status_kib("VmHWM") * 1024, "rss_before": rss_before}))


def _probe(task_name: str, budget: int) -> None:
    import torch

    torch.set_num_threads(1)
    from lrpilot.batch import probe_memory
    from lrpilot.batch.memory import _resolve
    from lrpilot.tasks import get_task

    task = get_task(task_name)
    _resolve(task, None, None, None)  # same setup as a trial before measuring the baseline
    t0 = time.perf_counter()
    probe = probe_memory(task, budget=budget, max_batch=10**7)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "batch": probe.batch_size,
                "seconds": seconds,
                "tries": len(probe.points),
                "per_sample": probe.per_sample_bytes,
                "baseline": probe.baseline_bytes,
            }
        )
    )


# ------------------------------------------------------------------------- main
def true_limit(
    task: str, budget: int, guess: int, steps: int, resolution: float, log
) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Largest batch whose fresh-process peak RSS stays within ``budget`` (see docstring)."""
    trials = 0

    def fits(b: int) -> bool:
        nonlocal trials
        trials += 1
        hwm = _sub("--trial", task, str(b), str(steps))["hwm"]
        log(f"    trial b={b}: peak {hwm / MiB:.1f} MiB -> {'fits' if hwm <= budget else 'over'}")
        return hwm <= budget

    b = max(2, guess)
    if fits(b):
        good, bad = b, None
        while bad is None:
            nxt = max(good + 1, int(good * 1.1))
            if fits(nxt):
                good = nxt
            else:
                bad = nxt
    else:
        good, bad = None, b
        while good is None:
            nxt = max(1, int(bad / 1.1))
            if nxt == bad:
                return 0, trials
            if fits(nxt):
                good = nxt
            else:
                bad = nxt
    while bad - good > max(1, int(resolution * good)):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="*",
        default=list(DEFAULT_CASES),
        help="TASK:HEADROOM_MIB entries (TASK may be module:function)",
    )
    parser.add_argument("--steps", type=int, default=3, help="training steps per true-limit trial")
    parser.add_argument("--resolution", type=float, default=0.005)
    parser.add_argument(
        "--trial", nargs=3, metavar=("TASK", "BATCH", "STEPS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--probe", nargs=2, metavar=("TASK", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        _trial(args.trial[0], int(args.trial[1]), int(args.trial[2]))
        return
    if args.probe:
        _probe(args.probe[0], int(args.probe[1]))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    rows = []
    t_all = time.perf_counter()
    for case in args.cases:
        task, _, headroom = case.rpartition(":")
        headroom_b = int(float(headroom) * MiB)
        console.print(f"[bold]{task}[/]: measuring the baseline")
        base = _sub("--trial", task, "2", "1")["rss_before"]
        budget = base + headroom_b
        console.print(
            f"  budget {budget / MiB:.0f} MiB (setup RSS {base / MiB:.0f} + {headroom} MiB); probing"
        )
        t0 = time.perf_counter()
        probe = _sub("--probe", task, str(budget))
        probe_wall = time.perf_counter() - t0
        console.print(
            f"  predicted {probe['batch']} in {probe['seconds']:.1f} s; searching the true limit"
        )
        truth, trials = true_limit(
            task, budget, probe["batch"], args.steps, args.resolution, console.print
        )
        err = (probe["batch"] - truth) / truth * 100 if truth else float("nan")
        rows.append(
            (
                task,
                budget / MiB,
                probe["batch"],
                truth,
                err,
                probe["seconds"],
                probe_wall,
                probe["tries"],
                trials,
            )
        )
    table = Table(title="memory probe vs true limit (CPU, peak RSS budget)")
    for col in (
        "task",
        "budget MiB",
        "predicted",
        "true limit",
        "error %",
        "probe s",
        "probe s incl. start",
        "probe tries",
        "truth trials",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r[0],
            f"{r[1]:.0f}",
            str(r[2]),
            str(r[3]),
            f"{r[4]:+.1f}",
            f"{r[5]:.1f}",
            f"{r[6]:.1f}",
            str(r[7]),
            str(r[8]),
        )
    Console(width=140).print(table)
    worst = max(abs(r[4]) for r in rows)
    print(
        f"worst error {worst:.1f}% (target: within 10%); total bench time "
        f"{time.perf_counter() - t_all:.0f} s"
    )


if __name__ == "__main__":
    main()
