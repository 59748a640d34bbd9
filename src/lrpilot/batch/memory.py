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
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lrpilot.batch._memory_base import (
    GiB,
    LossFn,
    MemoryProbe,
    OptimizerChoice,
    is_oom,
    make_optimizer,
    repeat_batch,
    search_largest,
    train_steps,
)
from lrpilot.batch._memory_cpu import (
    MAX_PROBE_ADDED_BYTES,
    available_memory,
    current_rss,
    fit_line,
    probe_cpu,
)
from lrpilot.errors import ConfigError, check_int, check_range
from lrpilot.optim import resolve_settings

__all__ = [
    "DEFAULT_MAX_BATCH",
    "MAX_PROBE_ADDED_BYTES",
    "GiB",
    "MemoryProbe",
    "OptimizerChoice",
    "available_memory",
    "current_rss",
    "fit_line",
    "make_optimizer",
    "max_batch_size",
    "probe_memory",
    "search_largest",
]

DEFAULT_MAX_BATCH = 65536


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


def _cuda_try(dev: torch.device, make_try: Callable[[int], None], b: int) -> int:
    """Peak allocated bytes of one try at batch ``b`` (``-1``: out of memory); the try's
    tensors are dropped and the cache emptied afterwards."""
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        make_try(b)
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev))
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_oom(exc):
            raise
        return -1
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def _cuda_budget(
    device: str, budget: int | None, fraction: float
) -> tuple[torch.device, int, int, int]:
    """``(device, budget, allocated now, device total)`` in bytes, after emptying the
    cache; the default budget is ``fraction`` x (free + reserved by this process)."""
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
    return dev, budget, baseline, total


def _probe_cuda(
    factory: Callable[[], nn.Module],
    x1: torch.Tensor,
    y1: torch.Tensor | None,
    loss_fn: LossFn | None,
    optimizer: OptimizerChoice,
    device: str,
    budget: int | None,
    fraction: float,
    cap: int,
    steps: int,
    start: int,
) -> MemoryProbe:
    """The CUDA probe (module doc): double until out of memory or over the budget, then
    bisect; a :class:`MemoryProbe` with method ``cuda-oom-search``."""
    dev, budget, baseline, total = _cuda_budget(device, budget, fraction)
    points: list[tuple[int, int]] = []

    def one_try(b: int) -> None:  # its locals (model, optimizer, batch) die with the call
        model = factory().to(dev)
        opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
        x, y = repeat_batch(x1, y1, b, dev)
        train_steps(model, opt, loss_fn, x, y, steps)

    def fits(b: int) -> bool:
        points.append((b, _cuda_try(dev, one_try, b)))
        return 0 <= points[-1][1] <= budget

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev.index]):  # model inits leave the caller's RNG alone
        best = search_largest(fits, start, cap)
    seconds = time.perf_counter() - t0
    if best == 0:
        raise ConfigError(
            f"even a batch of 1 does not fit on {dev} within {budget / GiB:.3f} GiB "
            f"(tries: {points})"
        )
    peak = dict(points)[best]
    reasons = [
        f"on {dev}: doubled the batch until a try ran out of memory or exceeded the budget "
        f"of {budget / GiB:.2f} GiB, then bisected; {len(points)} tries in {seconds:.1f} s",
        f"batch {best} peaks at {peak / GiB:.3f} GiB allocated "
        f"(device total {total / GiB:.1f} GiB)",
    ]
    if best >= cap:
        reasons.append(f"stopped at the cap of {cap} samples, not at a memory limit")
    return MemoryProbe(
        batch_size=best,
        device=str(dev),
        method="cuda-oom-search",
        budget_bytes=int(budget),
        baseline_bytes=int(baseline),
        memory_bytes=float(peak),
        fixed_bytes=None,
        per_sample_bytes=None,
        points=tuple(points),
        capped=best >= cap,
        seconds=seconds,
        reasons=tuple(reasons),
    )


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
    return probe_cpu(factory, x1, y1, loss_fn, optimizer, budget, fraction, cap, steps, progress)


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
