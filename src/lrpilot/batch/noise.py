"""Gradient noise scale: the batch size beyond which bigger batches stop paying.

The *simple noise scale* (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training", appendix A) is ``B_simple = tr(Σ) / |G|²``, where ``G`` is the true gradient and
``Σ`` the per-example gradient covariance. The mean gradient of a batch of ``b`` examples
satisfies ``E|G_b|² = |G|² + tr(Σ)/b``; with squared norms measured at a small batch ``b``
and a big batch ``B`` the unbiased estimators are

    |G|²  ≈ (B |G_B|² − b |G_b|²) / (B − b)
    tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

Both are noisy, so :class:`NoiseScale` keeps separate (exponential) moving averages of the
two and reports the ratio of the averages — never the average of ratios, which is biased
and explodes whenever a single ``|G|²`` estimate comes out near zero or negative.

Batches drawn without replacement from a finite set of ``N`` examples change the two
expectations by the factor ``(N − b)/(N − 1)``; the ``tr(Σ)`` estimator then equals
``N/(N−1)`` times the set's covariance trace and ``|G|²`` is low by ``tr(Σ)/(N−1)``, both
negligible when ``N ≫ B``.

Two ways to use it:

* :func:`noise_scale`: a short probe at fixed parameters before training. Each measurement
  draws ``big_batch`` examples, computes the gradient of each of its ``big_batch // small_batch``
  micro-batches and their mean (the big-batch gradient), exactly as data-parallel devices
  and their all-reduce would; the model (a copy) is never stepped.
* :class:`NoiseScale`: the small online record ``lrpilot fit`` updates each step from the
  squared norms it already has (per-device vs all-reduced gradient under DDP, micro-batch vs
  accumulated gradient with accumulation).

>>> ns = NoiseScale(beta=None)
>>> g2, tr = 4.0, 64.0   # |G|² and tr(Σ)
>>> ns.update(g2 + tr / 8, 8, g2 + tr / 64, 64)
16.0
>>> ns.state_dict()["version"]
1
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, TensorDataset

from lrpilot.errors import ConfigError, check_int, check_keys, check_range, check_seed

STATE_VERSION = 1


def unbiased_estimates(
    small_sq: float, small_batch: float, big_sq: float, big_batch: float
) -> tuple[float, float]:
    """``(|G|², tr(Σ))`` from squared gradient norms at two batch sizes (formulas above).

    >>> unbiased_estimates(12.0, 8, 5.0, 64)
    (4.0, 64.0)
    """
    b, B = float(small_batch), float(big_batch)
    if not (0 < b < B):
        raise ConfigError(
            f"need 0 < small_batch < big_batch, got {small_batch!r} and {big_batch!r}"
        )
    g2 = (B * big_sq - b * small_sq) / (B - b)
    trace = (small_sq - big_sq) / (1.0 / b - 1.0 / B)
    return g2, trace


class NoiseScale:
    """Moving averages of the ``|G|²`` and ``tr(Σ)`` estimates; ``value`` is their ratio.

    ``beta``: EMA factor in ``[0, 1)`` (bias-corrected, as Adam's moments), or ``None`` for
    the plain mean of every measurement (what a fixed-parameter probe wants). ``value`` is
    ``nan`` until the averaged ``|G|²`` is positive. Non-finite measurements are skipped
    (counted in ``skipped``).
    """

    def __init__(self, beta: float | None = 0.99) -> None:
        if beta is not None:
            check_range("noise_scale beta", beta, low=0, high=1, high_inclusive=False)
        self.beta = beta
        self.g2 = 0.0
        self.trace = 0.0
        self.count = 0
        self.skipped = 0

    def _weight_sum(self) -> float:
        if self.beta is None:
            return float(self.count)
        return 1.0 - self.beta**self.count

    def update(self, small_sq: float, small_batch: float, big_sq: float, big_batch: float) -> float:
        """Add one measurement (squared norms of the small- and big-batch mean gradients)."""
        g2, trace = unbiased_estimates(small_sq, small_batch, big_sq, big_batch)
        if not (math.isfinite(g2) and math.isfinite(trace)):
            self.skipped += 1
            return self.value
        if self.beta is None:
            self.g2 += g2
            self.trace += trace
        else:
            self.g2 = self.beta * self.g2 + (1.0 - self.beta) * g2
            self.trace = self.beta * self.trace + (1.0 - self.beta) * trace
        self.count += 1
        return self.value

    @property
    def mean_g2(self) -> float:
        return self.g2 / self._weight_sum() if self.count else math.nan

    @property
    def mean_trace(self) -> float:
        return self.trace / self._weight_sum() if self.count else math.nan

    @property
    def value(self) -> float:
        """``B_simple = tr(Σ)/|G|²`` from the averages (``nan`` if ``|G|²`` is not positive)."""
        if not self.count or self.g2 <= 0:
            return math.nan
        return self.trace / self.g2

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "beta": self.beta,
            "g2": self.g2,
            "trace": self.trace,
            "count": self.count,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(
                f"noise-scale state version {state.get('version')!r} is not {STATE_VERSION}"
            )
        self.beta = state["beta"]
        self.g2 = float(state["g2"])
        self.trace = float(state["trace"])
        self.count = int(state["count"])
        self.skipped = int(state["skipped"])


@dataclass(frozen=True)
class NoiseScaleResult:
    """A probe's outcome: ``b_simple = trace / g2``; ``stderr`` is the jackknife standard
    error of ``b_simple`` over the measurements (``nan`` with fewer than 2)."""

    b_simple: float
    trace: float
    g2: float
    stderr: float
    small_batch: int
    big_batch: int
    measurements: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _jackknife(g2s: Sequence[float], traces: Sequence[float]) -> float:
    n = len(g2s)
    if n < 2:
        return math.nan
    sg, st = sum(g2s), sum(traces)
    loo = []
    for g, t in zip(g2s, traces, strict=True):
        den = sg - g
        loo.append((st - t) / den if den > 0 else math.nan)
    if any(not math.isfinite(v) for v in loo):
        return math.nan
    mean = sum(loo) / n
    return math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in loo))


def _gather(dataset: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return x[idx], y[idx]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.stack(
        [torch.as_tensor(it[1]) for it in items]
    )


def noise_scale(
    task_or_model: object,
    dataset: Dataset | None = None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    small_batch: int = 16,
    big_batch: int = 256,
    measurements: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> NoiseScaleResult:
    """Probe ``B_simple`` at the model's current parameters (see the module docstring).

    ``task_or_model``: an ``lrpilot.Task`` (or its name; a fresh model is built under
    ``torch.manual_seed(seed)``, data and loss from the task) or an ``nn.Module`` (then
    ``dataset`` of ``(input, target)`` pairs and a mean-reduced ``loss_fn`` are required).
    A module is deep-copied first: its parameters, gradients and buffers (BatchNorm running
    statistics) are left exactly as they were. ``big_batch`` must be a multiple of
    ``small_batch`` and at most the dataset size.

    >>> from lrpilot.tasks import get_task
    >>> r = noise_scale(get_task("mnist1d-mlp"), small_batch=16, big_batch=64, measurements=4)
    >>> r.b_simple > 0 and r.measurements == 4
    True
    """
    from lrpilot.tasks.base import dataset_len

    small_batch = check_int("small_batch", small_batch, low=1)
    big_batch = check_int("big_batch", big_batch, low=2)
    measurements = check_int("measurements", measurements, low=1)
    seed = check_seed(seed)
    if big_batch % small_batch or big_batch == small_batch:
        raise ConfigError(
            f"big_batch={big_batch} must be a multiple of small_batch={small_batch} and larger"
        )
    model, dataset, loss_fn = _probe_objects(task_or_model, dataset, loss_fn, seed)
    n = dataset_len(dataset)
    if big_batch > n:
        raise ConfigError(f"big_batch={big_batch} is larger than the dataset ({n} examples)")
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    stats = NoiseScale(beta=None)
    g2s: list[float] = []
    traces: list[float] = []
    start = time.perf_counter()
    for _ in range(measurements):
        x, y = _gather(dataset, torch.randperm(n, generator=gen)[:big_batch])
        small_sq, big_sq = _squared_norms(
            model, params, loss_fn, x.to(device), y.to(device), small_batch
        )
        g2, trace = unbiased_estimates(small_sq, small_batch, big_sq, big_batch)
        stats.update(small_sq, small_batch, big_sq, big_batch)
        g2s.append(g2)
        traces.append(trace)
    return NoiseScaleResult(
        b_simple=stats.value,
        trace=stats.mean_trace,
        g2=stats.mean_g2,
        stderr=_jackknife(g2s, traces),
        small_batch=small_batch,
        big_batch=big_batch,
        measurements=measurements,
        seconds=time.perf_counter() - start,
    )


def _probe_objects(
    task_or_model: object, dataset: Dataset | None, loss_fn: Callable | None, seed: int
) -> tuple[nn.Module, Dataset, Callable]:
    """``(model, dataset, loss_fn)`` of :func:`noise_scale`: a task's fresh model (built
    under ``torch.manual_seed(seed)``), data and loss, or a deep copy of a module."""
    from lrpilot.tasks import Task, get_task

    if isinstance(task_or_model, str):
        task_or_model = get_task(task_or_model)
    if isinstance(task_or_model, Task):
        task = task_or_model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = task.build_model()
        dataset = task.train_set if dataset is None else dataset
        loss_fn = task.loss_fn if loss_fn is None else loss_fn
    elif isinstance(task_or_model, nn.Module):
        if dataset is None or loss_fn is None:
            raise ConfigError("noise_scale(model, ...) needs dataset= and loss_fn=")
        model = copy.deepcopy(task_or_model)
    else:
        raise ConfigError(
            f"noise_scale needs a Task, a task name or an nn.Module, got {type(task_or_model).__name__}"
        )
    assert dataset is not None and loss_fn is not None  # set by both branches above
    return model, dataset, loss_fn


def _squared_norms(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    loss_fn: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    small_batch: int,
) -> tuple[float, float]:
    """``(mean |G_small|^2 over the micro-batches, |G_big|^2)`` on one big batch ``(x, y)``
    split into micro-batches of ``small_batch``."""
    micro = x.shape[0] // small_batch
    total = [torch.zeros_like(p) for p in params]
    small_sq = 0.0
    for k in range(micro):
        sl = slice(k * small_batch, (k + 1) * small_batch)
        loss = loss_fn(model(x[sl]), y[sl])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sq = 0.0
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t.add_(g)
                sq += float(g.detach().pow(2).sum())
        small_sq += sq
    small_sq /= micro
    big_sq = sum(float(t.div_(micro).pow(2).sum()) for t in total)
    return small_sq, big_sq


# ------------------------------------------------------ online noise scale in fit
#: Keys of the ``noise_scale`` config section.
NOISE_KEYS = ("beta", "every")


def parse_noise_scale(raw: Any, accumulate: int, world_size: int) -> dict | None:
    """Validate ``noise_scale``: ``true`` or ``{beta: 0.99, every: 1}``; needs several
    processes or ``accumulate >= 2`` (see the module docstring)."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"noise_scale must be true, false or {{beta, every}}, got {raw!r}")
    check_keys("noise_scale", raw, NOISE_KEYS)
    if world_size < 2 and accumulate < 2:
        raise ConfigError(
            "noise_scale compares a small-batch and a big-batch gradient each step: it needs "
            "accumulate >= 2 or several processes (torchrun); for a one-off estimate use "
            "lrpilot batch / lrpilot.batch.noise_scale"
        )
    return {
        "beta": check_range(
            "noise_scale.beta", raw.get("beta", 0.99), low=0, high=1, high_inclusive=False
        ),
        "every": check_int("noise_scale.every", raw.get("every", 1), low=1),
    }


def _sq_norm(tensors) -> float:  # type: ignore[no-untyped-def]
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return 0.0
    return float(sum(float(n) ** 2 for n in torch._foreach_norm(tensors)))


class NoiseMonitor:
    """Online ``B_simple`` inside the loop; state is the :class:`NoiseScale` record.

    Per optimizer step: ``begin_step(step, n_local)``, then around each micro-batch backward
    ``before_backward()`` / ``after_backward(weight, size)``, then ``end_step(grad_scale)``
    before clipping; ``value`` is the current estimate. Cost on a measured step: in one
    process a copy of the gradients per micro-batch; under DDP one squared norm per bucket
    (kept on the device) and one extra all-reduce of a single number. ``every`` thins it.
    """

    def __init__(self, model: nn.Module, beta: float = 0.99, every: int = 1) -> None:
        self.stats = NoiseScale(beta=beta)
        self.every = every
        self.ddp = isinstance(model, DistributedDataParallel)
        self.world = dist.get_world_size() if self.ddp else 1
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._measure = False
        self._local_sq: float | torch.Tensor = 0.0
        self._micro_sq: list[float] = []
        self._micro_sizes: list[int] = []
        self._prev: list[torch.Tensor] | None = None
        self._local_batch = 0
        if self.ddp:
            model.register_comm_hook(self, _noise_allreduce_hook)  # type: ignore[operator]

    @property
    def value(self) -> float:
        return self.stats.value

    def begin_step(self, step: int, n_local: int) -> None:
        """Start optimizer step ``step`` (1-based) of ``n_local`` samples on this process."""
        self._measure = step % self.every == 0
        self._local_batch = n_local
        self._local_sq = 0.0
        self._micro_sq, self._micro_sizes = [], []

    def before_backward(self) -> None:
        if self._measure and not self.ddp:
            self._prev = [
                torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                for p in self.params
            ]

    def after_backward(self, weight: float, size: int) -> None:
        if not (self._measure and not self.ddp and self._prev is not None):
            return
        deltas = [
            (p.grad.detach() - prev) if p.grad is not None else prev
            for p, prev in zip(self.params, self._prev, strict=True)
        ]
        self._micro_sq.append(_sq_norm(deltas) / (weight * weight))
        self._micro_sizes.append(size)
        self._prev = None

    def end_step(self, grad_scale: float = 1.0) -> float:
        """Add this step's measurement. Call it after the gradients are unscaled and before
        clipping; ``grad_scale`` is the fp16 loss scale the micro-batch (or pre-all-reduce)
        gradients were recorded under (1 without a ``GradScaler``)."""
        if not self._measure:
            return self.value
        big_sq = _sq_norm([p.grad for p in self.params])  # already unscaled
        if self.ddp:
            local = torch.as_tensor(self._local_sq, dtype=torch.float32).reshape(1)
            if dist.get_backend() == "nccl" and not local.is_cuda:
                local = local.cuda()
            dist.all_reduce(local)
            small_sq = float(local[0]) / self.world / grad_scale**2
            small, big = self._local_batch, self._local_batch * self.world
        else:
            if len(set(self._micro_sizes)) != 1 or len(self._micro_sizes) < 2:
                return self.value  # unequal micro-batches (end of epoch): skip
            small_sq = sum(self._micro_sq) / len(self._micro_sq) / grad_scale**2
            small = self._micro_sizes[0]
            big = small * len(self._micro_sizes)
        if big > small:
            self.stats.update(small_sq, small, big_sq, big)
        return self.value

    def state_dict(self) -> dict:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)


def _noise_allreduce_hook(state: NoiseMonitor, bucket):  # type: ignore[no-untyped-def]
    """DDP communication hook: record the local squared gradient norm, then all-reduce
    (mean) exactly as DDP's default hook does."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if state._measure:  # stays on the device: no synchronisation inside backward
        state._local_sq = state._local_sq + bucket.buffer().detach().float().pow(2).sum()
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]
