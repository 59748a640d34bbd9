"""The sync-free training step on a GPU (issue 16): where ``lrpilot fit`` still waits for
the GPU, and what the lagged step saves over the eager one.

1. ``steps``: :class:`lrpilot.train.Engine` (lagged, the default on CUDA) runs 20
   steady-state steps (no logging, snapshot or epoch end) under
   ``torch.cuda.set_sync_debug_mode("error")``, fp32 and fp16 + GradScaler: any host sync
   raises.
2. ``fit``: a short ``lrpilot.fit`` (guard on, checkpoints, logging every 10 steps) under
   ``set_sync_debug_mode("warn")``; a callback notes after which steps a sync warning
   came. Syncs are expected only at snapshots, checkpoints and epoch ends; the steps
   whose interval had one are listed. PASS: at most ``epochs + steps / snapshot_every +
   3`` of them.
3. ``speed``: steps/s of the eager and the lagged engine on a launch-bound MLP (batch 64),
   best of 3, after a warm-up. Measured, not asserted.

Prints ``RESULT syncfree PASS|FAIL <reason>`` last (the format of bench/gpu_check.sh).
Run: ``python3 bench/gpu_syncfree.py`` (under a minute on an H200). Seeds: data 3, model 0.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.tasks import Task
from lrpilot.train import Callback, Engine, fit, parse_config
from lrpilot.train._builtin import GuardCallback
from lrpilot.train._callbacks import CallbackList
from lrpilot.train._guard import DivergenceGuard

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}


def make_task(n: int, width: int = 100) -> Task:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n + 1024, 40, generator=gen)
    y = (x @ torch.randn(40, 10, generator=gen)).argmax(1)
    return Task(
        name="syncfree-gpu",
        build_model=lambda: nn.Sequential(
            nn.Linear(40, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        ),
        train_set=TensorDataset(x[:n], y[:n]),
        val_set=TensorDataset(x[n:], y[n:]),
        loss_fn=F.cross_entropy,
    )


def config(**extra) -> dict:
    base = {"task": "syncfree-gpu", "epochs": 2, "batch_size": 64, "device": "cuda"}
    return {**base, "optimizer": SGD, "log_every": 1000, **extra}


def steps_check(task: Task, amp: bool) -> str:
    eng = Engine(parse_config(config(amp=amp), task=task), task)
    assert eng.lagged, "the lagged step is not the default on CUDA"
    calls = CallbackList([GuardCallback(DivergenceGuard(), 0.5, 1000)])
    calls.fit_start(eng)
    eng.run_steps(5, calls)
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(20):
            eng.advance()
            while (outcome := eng.next_outcome()) is not None:
                calls.step_end(eng, outcome)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    losses = [o.loss for o in eng.resolve()]
    assert all(math.isfinite(v) for v in losses)
    return f"amp={amp}: 20 steps without a host sync (step {eng.state.step})"


class SyncSpy(Callback):
    def __init__(self, caught: list) -> None:
        self.caught, self.seen, self.steps = caught, 0, []

    def on_step_end(self, engine, outcome):
        if len(self.caught) > self.seen:
            self.seen = len(self.caught)
            self.steps.append(outcome.step)


def fit_check(task: Task) -> tuple[bool, str]:
    cfg = config(log_every=10, epochs=3, guard={"snapshot_every": 50})
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spy = SyncSpy(caught)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fit(cfg, f"{out}/r", task=task, progress="none", callbacks=[spy])
        finally:
            torch.cuda.set_sync_debug_mode(0)
    steps = result.summary["steps_run"]
    allowed = 3 + steps // 50 + 3
    text = (
        f"fit: {steps} steps, {len(caught)} sync warnings in all; steps whose interval "
        f"had one: {len(spy.steps)} (allowed {allowed}): {spy.steps[:30]}"
    )
    return len(spy.steps) <= allowed, text


def speed(task: Task) -> str:
    rows = []
    for lagged in (False, True):
        best = math.inf
        for _ in range(3):
            eng = Engine(parse_config(config(), task=task), task, _lagged=lagged)
            calls = CallbackList([GuardCallback(DivergenceGuard(), 0.5, 50)])
            calls.fit_start(eng)
            eng.run_steps(20, calls)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            eng.run_steps(200, calls)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        rows.append((("lagged" if lagged else "eager"), 200 / best))
    (_, eager), (_, lagged) = rows
    return f"speed (MLP, batch 64, 200 steps): eager {eager:.0f} steps/s, lagged {lagged:.0f} steps/s, ratio {lagged / eager:.2f}"


def main() -> int:
    if not torch.cuda.is_available():
        print("RESULT syncfree SKIP no CUDA device")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    task = make_task(16384)
    ok, lines = True, []
    for amp in (False, True):
        try:
            lines.append(steps_check(task, amp))
        except Exception as exc:  # reported; the next check runs
            ok = False
            lines.append(f"amp={amp}: FAILED {type(exc).__name__}: {exc}")
        print(lines[-1], flush=True)
    passed, text = fit_check(make_task(8192))
    ok = ok and passed
    print(text, flush=True)
    print(speed(task), flush=True)
    print(f"RESULT syncfree {'PASS' if ok else 'FAIL'} " + "; ".join(lines[:2]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
