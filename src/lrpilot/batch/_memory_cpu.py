"""The CPU memory probe (:mod:`lrpilot.batch.memory`, method ``cpu-rss-fit``): each
measurement forks a child that trains ``steps`` steps at batch ``b`` and reports how much its
peak resident set (``VmHWM``) exceeds its resident set at the start; a line
``peak(b) = RSS now + fixed + per_sample x b`` fitted to the three largest measurements is
solved for the budget (the method and its measurements: the docstring of
:mod:`lrpilot.batch.memory`)."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable

import torch

from lrpilot.batch._memory_base import GiB, MemoryProbe, make_optimizer, repeat_batch, train_steps
from lrpilot.errors import ConfigError

MAX_PROBE_ADDED_BYTES = 2 * GiB


def status_kib(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"{field_name} not found in /proc/self/status")


def available_memory() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (Linux)."""
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable not found in /proc/meminfo")


def current_rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    return status_kib("VmRSS") * 1024


def _cpu_child(conn, factory, x1, y1, loss_fn, optimizer, b, steps) -> None:  # pragma: no cover
    try:
        torch.set_num_threads(1)  # OpenMP pools do not survive fork; one thread is safe
        start = status_kib("VmRSS") * 1024
        model = factory()
        opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
        x, y = repeat_batch(x1, y1, b, torch.device("cpu"))
        train_steps(model, opt, loss_fn, x, y, steps)
        conn.send(("ok", status_kib("VmHWM") * 1024 - start))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def measure_cpu(factory, x1, y1, loss_fn, optimizer, b, steps, timeout=600.0) -> int:
    """Bytes a training run at batch ``b`` adds to the resident set at its peak, measured
    in a forked child (peak ``VmHWM`` minus the child's ``VmRSS`` when it starts)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_cpu_child, args=(send, factory, x1, y1, loss_fn, optimizer, b, steps)
    )
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise OSError(f"memory probe at batch {b} did not finish within {timeout:.0f} s")
        status, value = recv.recv()
    except EOFError:
        status, value = "error", f"child exited with code {proc.exitcode} (killed for memory?)"
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    if status != "ok":
        raise ConfigError(f"memory probe at batch {b} failed: {value}")
    return int(value)


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares ``(fixed, per_sample)`` for ``peak = fixed + per_sample * batch``.

    >>> fixed, slope = fit_line([(1, 110), (2, 120), (4, 140)])
    >>> round(fixed, 9), round(slope, 9)
    (100.0, 10.0)
    """
    n = len(points)
    if n < 2:
        raise ValueError("need at least two points to fit a line")
    mx = sum(b for b, _ in points) / n
    my = sum(m for _, m in points) / n
    sxx = sum((b - mx) ** 2 for b, _ in points)
    sxy = sum((b - mx) * (m - my) for b, m in points)
    slope = sxy / sxx
    return my - slope * mx, slope


def _cpu_budget(budget: int | None, fraction: float) -> tuple[int, int]:
    """``(this process's RSS now, budget)``; the default budget is the RSS now plus
    ``fraction`` of ``MemAvailable``."""
    if (
        not os.path.exists("/proc/self/status")
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        raise ConfigError("the CPU memory probe needs Linux (/proc and fork)")
    base = current_rss()
    if budget is None:
        budget = int(base + fraction * available_memory())
    if budget <= base:
        raise ConfigError(
            f"budget {budget / GiB:.3f} GiB is below this process's resident memory "
            f"({base / GiB:.3f} GiB) before any training"
        )
    return base, budget


def _cpu_points(
    measure: Callable[[int], int], headroom: int, cap: int, progress: Callable | None
) -> list[tuple[int, int]]:
    """``(batch, bytes added at the peak)`` measurements: batches double from 2 until the
    memory added reaches half the headroom (or 2 GiB, or ``cap``), then one more just below
    the predicted limit."""
    target_added = min(0.5 * headroom, MAX_PROBE_ADDED_BYTES)
    points: list[tuple[int, int]] = []

    def add(b: int) -> int:
        points.append((b, measure(b)))
        if progress is not None:
            progress(*points[-1])
        return points[-1][1]

    b = min(2, cap)  # 2, not 1: BatchNorm refuses a batch of one in training mode
    while add(b) < target_added and b < cap:
        nxt = min(2 * b, cap)
        if len(points) >= 2:  # never launch a try predicted to exceed the budget
            fixed, slope = fit_line(points[-3:])
            if slope > 0 and fixed + slope * nxt > headroom:
                break
        b = nxt
    if len(points) >= 2 and b < cap:
        # refine: one more measurement just below the predicted limit (bounded by the
        # 2 GiB probe cap), so the final line interpolates instead of extrapolating
        fixed, slope = fit_line(points[-3:])
        if slope > 0:
            guess = (headroom - fixed) / slope
            limit = (MAX_PROBE_ADDED_BYTES - fixed) / slope
            nxt = min(int(0.9 * guess), int(limit), cap)
            if nxt > b:
                add(nxt)
    return points


def probe_cpu(factory, x1, y1, loss_fn, optimizer, budget, fraction, cap, steps, progress):
    """The CPU probe (module doc): a :class:`MemoryProbe` with method ``cpu-rss-fit``."""
    base, budget = _cpu_budget(budget, fraction)
    headroom = budget - base
    t0 = time.perf_counter()
    points = _cpu_points(
        lambda b: measure_cpu(factory, x1, y1, loss_fn, optimizer, b, steps),
        headroom,
        cap,
        progress,
    )
    seconds = time.perf_counter() - t0
    if len(points) >= 2:
        fixed, per_sample = fit_line(points[-3:])
    else:
        fixed, per_sample = float(points[0][1]), 0.0
    reasons = [
        f"measured the memory {steps} training steps add at their peak (forked child, "
        f"VmHWM) at batches {', '.join(str(p[0]) for p in points)} ({seconds:.1f} s)",
    ]
    if per_sample <= 0:
        best = cap
        reasons.append("memory did not grow with the batch in the measured range")
    else:
        best = math.floor((headroom - fixed) / per_sample)
        reasons.append(
            f"fitted peak = {base / GiB:.3f} GiB now + {fixed / GiB:.3f} GiB + "
            f"{per_sample / 1024:.1f} KiB x batch; solved for the budget of {budget / GiB:.3f} GiB"
        )
    capped = best >= cap
    best = min(best, cap)
    if best < 1:
        raise ConfigError(
            f"even a batch of 1 does not fit in {budget / GiB:.3f} GiB "
            f"({base / GiB:.3f} GiB resident now, {per_sample / 1024:.1f} KiB per sample)"
        )
    if capped:
        reasons.append(f"capped at {cap} samples (not a memory limit)")
    return MemoryProbe(
        batch_size=best,
        device="cpu",
        method="cpu-rss-fit",
        budget_bytes=int(budget),
        baseline_bytes=int(base),
        memory_bytes=float(fixed + base + per_sample * best),
        fixed_bytes=float(fixed + base),
        per_sample_bytes=float(per_sample),
        points=tuple((pb, pm + base) for pb, pm in points),
        capped=capped,
        seconds=seconds,
        reasons=tuple(reasons),
    )
