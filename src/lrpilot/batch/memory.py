"""What fits: the largest per-device batch whose forward, backward and optimizer step fit.

Two methods, one question:

* **CUDA** (``device="cuda[:i]"``): real probing. A fresh copy of the model and optimizer
  runs ``steps`` training steps at batch ``b``; ``b`` doubles until a try runs out of
  memory (``torch.cuda.OutOfMemoryError``) or its peak allocated memory exceeds the budget,
  then bisection between the last success and the first failure finds the largest ``b``
  that succeeds. Every try ends by dropping its tensors, ``gc.collect()`` and
  ``torch.cuda.empty_cache()``. The peak memory of the chosen batch is reported. Default
  budget: ``fraction`` x (free device memory + memory this process already reserves).
  This is the search Lightning's ``BatchSizeFinder`` does (double until OOM, then bisect).
* **CPU**: a measured per-sample memory model. Each measurement forks a child process
  that builds a fresh model and optimizer, runs ``steps`` training steps at batch ``b``
  and reports how much its peak resident set (``VmHWM``) exceeds its resident set at the
  start; the prediction adds that to this process's RSS now. Batches double from 2 until the memory added over
  the baseline reaches half of the budget's headroom (or 2 GiB, or ``max_batch``); a
  line ``peak(b) = RSS now + fixed + per_sample x b`` fitted to the three largest
  measurements predicts the limit; one more measurement at 0.9 x that prediction (if it
  adds at most 2 GiB) refines it, and the line refitted to the three largest measurements
  is solved for the budget:
  ``b* = floor((budget - RSS now - fixed) / per_sample)``. Default budget:
  ``current RSS + fraction x MemAvailable`` (the budget is the process's total peak RSS).
  The child keeps this process's allocator state (glibc's dynamic mmap threshold is
  usually already raised, as in any process after its first training step), so heap
  fragmentation shows in the measurement as it does in real training; fixing the
  threshold instead measured up to 15% less than fresh training processes really use
  (``bench/batch_probe.py``).
  This is Ultralytics AutoBatch's idea (measure a few batches, fit a line, solve) with
  peak RSS in place of CUDA allocator statistics.

The model and optimizer passed in are never modified: CUDA tries use deep copies; CPU
measurements happen in child processes.

>>> from lrpilot.tasks import get_task
>>> probe = probe_memory(get_task("mnist1d-mlp"), budget=4 * 2**30, max_batch=64)
>>> probe.batch_size, probe.capped
(64, True)
"""

from __future__ import annotations

import copy
import gc
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lrpilot.errors import ConfigError, check_int, check_range
from lrpilot.optim import create_optimizer, resolve_implementation, resolve_settings

GiB = 2**30
MAX_PROBE_ADDED_BYTES = 2 * GiB
DEFAULT_MAX_BATCH = 65536
#: a registry name, settings (``lrpilot.optim.resolve_settings``) or a factory ``f(params)``
OptimizerChoice = str | Mapping[str, Any] | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MemoryProbe:
    """A memory probe's outcome.

    ``batch_size``: the largest per-device batch that fits. ``baseline_bytes``: memory in use
    before the probe (this process's RSS on CPU, allocated device memory on CUDA).
    ``memory_bytes``: memory at that
    batch (peak allocated on CUDA, measured; peak RSS predicted by the fit on CPU).
    ``fixed_bytes``/``per_sample_bytes``: the fitted line (CPU). ``points``: every
    measurement ``(batch, peak bytes or -1 for out-of-memory)``. ``capped``: the answer is
    ``max_batch``, not a memory limit.
    """

    batch_size: int
    device: str
    method: str
    budget_bytes: int
    baseline_bytes: int
    memory_bytes: float
    fixed_bytes: float | None
    per_sample_bytes: float | None
    points: tuple[tuple[int, int], ...]
    capped: bool
    seconds: float
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["points"] = [list(p) for p in self.points]
        d["reasons"] = list(self.reasons)
        return d


# ----------------------------------------------------------------------------- helpers


def make_optimizer(spec: OptimizerChoice, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The probed optimizer: a factory ``spec(params)``, a registry name (``"sgd"``,
    ``"adam"``, ``"adamw"``, :mod:`lrpilot.optim`; its defaults) or settings as
    :func:`lrpilot.optim.resolve_settings` returns them (a task's: what ``lrpilot fit``
    trains with, momentum buffers and kernel included)."""
    if callable(spec):
        return spec(params)
    settings = resolve_settings(spec, None) if isinstance(spec, str) else dict(spec)
    impl = resolve_implementation(str(settings.get("implementation", "auto")), params)
    hyper = {k: v for k, v in settings.items() if k not in ("name", "implementation")}
    return create_optimizer(settings["name"], params, implementation=impl, **hyper)


def _resolve(
    task_or_model: object,
    sample: object,
    loss_fn: LossFn | None,
    optimizer: OptimizerChoice | None,
) -> tuple[
    Callable[[], nn.Module], torch.Tensor, torch.Tensor | None, LossFn | None, OptimizerChoice, int
]:
    """-> (model factory, one input, one target or None, loss, optimizer, default max batch)."""
    from lrpilot.tasks import Task, get_task
    from lrpilot.tasks.base import dataset_len

    if isinstance(task_or_model, str):
        task_or_model = get_task(task_or_model)
    if isinstance(task_or_model, Task):
        task = task_or_model
        factory = task.build_model
        sample = task.sample() if sample is None else sample
        loss_fn = task.loss_fn if loss_fn is None else loss_fn
        if optimizer is None or isinstance(optimizer, str):  # the settings fit trains with
            optimizer = resolve_settings(optimizer, task.defaults.get("optimizer", {}))
        default_cap = dataset_len(task.train_set)
    elif isinstance(task_or_model, nn.Module):
        module = task_or_model

        def factory() -> nn.Module:
            return copy.deepcopy(module)

        if sample is None:
            raise ConfigError("max_batch_size(model, sample): a sample (input, target) is needed")
        optimizer = "adamw" if optimizer is None else optimizer
        default_cap = DEFAULT_MAX_BATCH
    else:
        raise ConfigError(
            f"expected a Task, a task name or an nn.Module, got {type(task_or_model).__name__}"
        )
    if isinstance(sample, (tuple, list)):
        if len(sample) != 2:
            raise ConfigError(
                f"sample must be (input, target) or an input tensor, got {len(sample)} items"
            )
        x1, y1 = torch.as_tensor(sample[0]), torch.as_tensor(sample[1])
    elif isinstance(sample, torch.Tensor):
        x1, y1 = sample, None
    else:
        raise ConfigError(
            f"sample must be (input, target) or a tensor, got {type(sample).__name__}"
        )
    if y1 is None:
        loss_fn = None  # a proxy loss is used: outputs.float().mean()
    elif loss_fn is None:
        raise ConfigError("a loss_fn is needed with an (input, target) sample and a module")
    if isinstance(optimizer, str):
        optimizer = resolve_settings(optimizer, None)  # validates the name
    return factory, x1, y1, loss_fn, optimizer, default_cap


def _batch(x1: torch.Tensor, y1: torch.Tensor | None, b: int, device: torch.device):
    """``b`` copies of one example, materialised on ``device`` (memory as a real batch)."""
    x = x1.to(device).unsqueeze(0).expand(b, *x1.shape).clone()
    y = None if y1 is None else y1.to(device).unsqueeze(0).expand(b, *y1.shape).clone()
    return x, y


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _train_steps(model, opt, loss_fn, x, y, steps: int) -> None:
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = out.float().mean() if loss_fn is None else loss_fn(out, y)
        loss.backward()
        opt.step()


def search_largest(fits: Callable[[int], bool], start: int, cap: int) -> int:
    """Largest ``b`` in ``[1, cap]`` with ``fits(b)``, assuming ``fits`` is monotone.

    Doubling from ``start`` until a failure (or ``cap``), then bisection between the last
    success and the first failure. Returns 0 when even ``b = 1`` fails.

    >>> search_largest(lambda b: b <= 37, 1, 1000)
    37
    >>> search_largest(lambda b: b <= 5000, 4, 1000)
    1000
    """
    start = max(1, min(start, cap))
    good, bad = 0, None
    b = start
    while True:
        if fits(b):
            good = b
            if b >= cap:
                return b
            b = min(2 * b, cap)
        else:
            bad = b
            break
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


# ----------------------------------------------------------------------------- CUDA


def _probe_cuda(factory, x1, y1, loss_fn, optimizer, device, budget, fraction, cap, steps, start):
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available on this machine")
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(dev)
    baseline = torch.cuda.memory_allocated(dev)
    if budget is None:
        budget = int(fraction * (free + torch.cuda.memory_reserved(dev)))
    points: list[tuple[int, int]] = []
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        model = opt = x = y = None
        oom = False
        peak = -1
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            model = factory().to(dev)
            opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
            x, y = _batch(x1, y1, b, dev)
            _train_steps(model, opt, loss_fn, x, y, steps)
            torch.cuda.synchronize(dev)
            peak = int(torch.cuda.max_memory_allocated(dev))
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not _is_oom(exc):
                raise
            oom = True
        finally:
            del model, opt, x, y
            gc.collect()
            torch.cuda.empty_cache()
        points.append((b, -1 if oom else peak))
        if oom:
            return False
        peaks[b] = peak
        return peak <= budget

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev.index]):  # model inits leave the caller's RNG alone
        best = search_largest(fits, start, cap)
    seconds = time.perf_counter() - t0
    if best == 0:
        raise ConfigError(
            f"even a batch of 1 does not fit on {dev} within {budget / GiB:.3f} GiB "
            f"(tries: {points})"
        )
    capped = best >= cap
    reasons = [
        f"on {dev}: doubled the batch until a try ran out of memory or exceeded the budget "
        f"of {budget / GiB:.2f} GiB, then bisected; {len(points)} tries in {seconds:.1f} s",
        f"batch {best} peaks at {peaks[best] / GiB:.3f} GiB allocated "
        f"(device total {total / GiB:.1f} GiB)",
    ]
    if capped:
        reasons.append(f"stopped at the cap of {cap} samples, not at a memory limit")
    return MemoryProbe(
        batch_size=best,
        device=str(dev),
        method="cuda-oom-search",
        budget_bytes=int(budget),
        baseline_bytes=int(baseline),
        memory_bytes=float(peaks[best]),
        fixed_bytes=None,
        per_sample_bytes=None,
        points=tuple(points),
        capped=capped,
        seconds=seconds,
        reasons=tuple(reasons),
    )


# ----------------------------------------------------------------------------- CPU


def _status_kib(field_name: str) -> int:
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
    return _status_kib("VmRSS") * 1024


def _cpu_child(conn, factory, x1, y1, loss_fn, optimizer, b, steps) -> None:  # pragma: no cover
    try:
        torch.set_num_threads(1)  # OpenMP pools do not survive fork; one thread is safe
        start = _status_kib("VmRSS") * 1024
        model = factory()
        opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
        x, y = _batch(x1, y1, b, torch.device("cpu"))
        _train_steps(model, opt, loss_fn, x, y, steps)
        conn.send(("ok", _status_kib("VmHWM") * 1024 - start))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _measure_cpu(factory, x1, y1, loss_fn, optimizer, b, steps, timeout=600.0) -> int:
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


def _probe_cpu(factory, x1, y1, loss_fn, optimizer, budget, fraction, cap, steps, progress):
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
    headroom = budget - base
    target_added = min(0.5 * headroom, MAX_PROBE_ADDED_BYTES)
    points: list[tuple[int, int]] = []  # (batch, bytes added at the peak)
    t0 = time.perf_counter()
    b = min(2, cap)  # 2, not 1: BatchNorm refuses a batch of one in training mode
    while True:
        added = _measure_cpu(factory, x1, y1, loss_fn, optimizer, b, steps)
        points.append((b, added))
        if progress is not None:
            progress(b, added)
        if b >= cap or added >= target_added:
            break
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
                points.append((nxt, _measure_cpu(factory, x1, y1, loss_fn, optimizer, nxt, steps)))
                if progress is not None:
                    progress(*points[-1])
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
    fixed += base
    points = [(pb, pm + base) for pb, pm in points]
    return MemoryProbe(
        batch_size=best,
        device="cpu",
        method="cpu-rss-fit",
        budget_bytes=int(budget),
        baseline_bytes=int(base),
        memory_bytes=float(fixed + per_sample * best),
        fixed_bytes=float(fixed),
        per_sample_bytes=float(per_sample),
        points=tuple(points),
        capped=capped,
        seconds=seconds,
        reasons=tuple(reasons),
    )


# ----------------------------------------------------------------------------- API


def probe_memory(
    task_or_model: object,
    sample: object = None,
    *,
    device: str = "cpu",
    budget: float | None = None,
    fraction: float = 0.9,
    loss_fn: LossFn | None = None,
    optimizer: OptimizerChoice | None = None,
    max_batch: int | None = None,
    steps: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> MemoryProbe:
    """Probe the largest batch that trains within ``budget`` bytes (see the module docstring).

    ``task_or_model``: a Task, a task name or an ``nn.Module`` (with ``sample`` = one
    ``(input, target)`` pair without the batch dimension and ``loss_fn``; a bare input
    tensor uses ``outputs.mean()`` as the loss). ``optimizer``: a name of the optimizer
    registry (``"sgd"``, ``"adam"``, ``"adamw"``), settings or a factory (default: a task's
    optimizer, else AdamW); with a task, a name gets the settings ``lrpilot fit`` would train
    it with (:func:`lrpilot.optim.resolve_settings`). ``max_batch``: upper limit
    (default: the task's training-set size, else 65536). ``steps``: training steps per try
    (2, so that optimizer state exists during a backward pass). ``progress``: called as
    ``progress(batch, added_bytes)`` after each CPU measurement (for a progress display).
    """
    check_range("fraction", fraction, low=0, high=1, low_inclusive=False)
    steps = check_int("steps", steps, low=1)
    if budget is not None:
        budget = int(check_range("budget", budget, low=0, low_inclusive=False))
    factory, x1, y1, loss_fn, optimizer, default_cap = _resolve(
        task_or_model, sample, loss_fn, optimizer
    )
    cap = default_cap if max_batch is None else check_int("max_batch", max_batch, low=1)
    if not isinstance(device, str):
        device = str(device)
    if device.startswith("cuda"):
        return _probe_cuda(
            factory, x1, y1, loss_fn, optimizer, device, budget, fraction, cap, steps, 2
        )
    if device != "cpu":
        raise ConfigError(f"device={device!r}; allowed: cpu, cuda, cuda:N")
    return _probe_cpu(factory, x1, y1, loss_fn, optimizer, budget, fraction, cap, steps, progress)


def max_batch_size(
    task_or_model: object,
    sample: object = None,
    *,
    device: str = "cpu",
    budget: float | None = None,
    fraction: float = 0.9,
    **kwargs: Any,
) -> int:
    """The largest per-device batch whose forward+backward+optimizer step fits (an int);
    :func:`probe_memory` gives the full report. ``budget`` in bytes.

    >>> import torch
    >>> model = torch.nn.Linear(10, 2)
    >>> max_batch_size(model, (torch.zeros(10), torch.tensor(0)), budget=8 * 2**30,
    ...                loss_fn=torch.nn.functional.cross_entropy, max_batch=16)
    16
    """
    return probe_memory(
        task_or_model, sample, device=device, budget=budget, fraction=fraction, **kwargs
    ).batch_size
