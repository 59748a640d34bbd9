"""Multi-process training helpers for ``torchrun`` (used by ``lrpilot fit``).

* :func:`init_from_env`: reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (set by
  ``torchrun``) and starts the process group: ``gloo`` on CPU, ``nccl`` on CUDA (each
  process on ``cuda:LOCAL_RANK``). Without those variables (or with ``WORLD_SIZE=1``) it
  is a no-op and the run is single-process.
* :class:`ShardedOrder`: the loop's own seeded permutation, shared by every process,
  padded by wrapping around to a multiple of the world size and dealt out
  ``perm[rank::world]``, exactly as ``torch.utils.data.DistributedSampler`` does with
  ``drop_last=False``. Every process therefore runs the same number of micro-batches.
  Since ``ceil(ceil(N/W)/b) = ceil(N/(W*b))``, the optimizer steps per epoch equal those
  of a single process with batch ``W*b``: the schedule sees the same steps.
* :func:`wrap_ddp`: ``DistributedDataParallel`` around the model, with BatchNorm converted
  to ``SyncBatchNorm`` on CUDA; on CPU (gloo) SyncBatchNorm is not available, so
  BatchNorm is kept and a message says each process normalises over its own samples.
* :func:`lr_scale_factor`: the learning-rate multiplier for the effective batch
  ``batch_size * accumulate * world_size`` under a named rule
  (config ``lr_scaling: {rule: linear, base_batch: 64}``), see :mod:`lrpilot.batch.scaling`.
* :class:`NoiseMonitor`: the online gradient-noise-scale measurement (config
  ``noise_scale: true`` or ``{beta, every}``), logged as ``noise_scale`` in step records.
  With DDP the small batch is one process's gradient *before* the all-reduce (read by a
  DDP communication hook) and the big batch the all-reduced gradient; in a single process
  the small batch is one accumulation micro-batch (its gradient is the change it makes to
  the accumulated gradient) and the big batch the whole step. A single process without
  accumulation has only one gradient per step, so ``noise_scale`` then needs
  ``accumulate >= 2`` (or use the probe :func:`lrpilot.batch.noise_scale`).

>>> order = ShardedOrder(10, batch_size=2, accumulate=1, seed=0, rank=1, world_size=4)
>>> [len(b) for b in order.micro_batches(0)], order.steps_per_epoch()
([2, 1], 2)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lrpilot.batch.noise import NoiseScale
from lrpilot.batch.plan import has_batchnorm
from lrpilot.batch.scaling import get_rule, scale_lr
from lrpilot.errors import ConfigError, check_int, check_range
from lrpilot.train.data import DataOrder

LR_SCALING_KEYS = ("rule", "base_batch", "conservative")
NOISE_KEYS = ("beta", "every")


# ------------------------------------------------------------------ process group
@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``; ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    started: bool = False  # this call created the process group (and should destroy it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_env() -> DistEnv:
    """The process group's view (single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(
            dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size()
        )
    return DistEnv()


def init_from_env(device: str = "auto") -> DistEnv:
    """Start the process group from ``torchrun``'s environment (see module docstring).

    Returns the environment; a no-op when ``WORLD_SIZE`` is unset or 1, or when a group
    already exists.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if dist.is_initialized():
        return current_env()
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(
                f"WORLD_SIZE={world} but {key} is not set; launch with torchrun --nproc_per_node N"
            )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank, local_rank, world, started=True)


def process_device(device: torch.device, env: DistEnv) -> torch.device:
    """``cuda:LOCAL_RANK`` for CUDA runs under torchrun, else ``device`` unchanged."""
    if env.distributed and device.type == "cuda":
        return torch.device("cuda", env.local_rank)
    return device


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every process (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar tensor over processes (the value itself without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = value.detach().clone().float()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown(*, synchronize: bool = False) -> None:
    """Destroy the process group if one exists. ``synchronize`` (a run that ended normally
    on every rank): a barrier first, since the ranks end at different times (rank 0 writes
    the summary) and tearing gloo down while a peer still holds its connections can abort a
    process. Not after an error: a peer may be waiting in another collective."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def check_resume_world_size(saved: int) -> None:
    """Refuse to resume a checkpoint written by a different number of processes (the data
    shards, the effective batch and the DDP state would not match).

    >>> check_resume_world_size(1)
    >>> check_resume_world_size(2)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: cannot resume: the checkpoint was written by 2 process(es), this run has 1; resume with torchrun --nproc_per_node 2
    """
    current = current_env().world_size
    if int(saved) != current:
        hint = f"torchrun --nproc_per_node {saved}" if int(saved) > 1 else "a single process"
        raise ConfigError(
            f"cannot resume: the checkpoint was written by {saved} process(es), this run has "
            f"{current}; resume with {hint}"
        )


# ------------------------------------------------------------------------- sharding
class ShardedOrder(DataOrder):
    """:class:`lrpilot.train.data.DataOrder` dealt out across processes (see module docstring)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        accumulate: int,
        seed: int,
        rank: int,
        world_size: int,
    ) -> None:
        super().__init__(num_samples, batch_size, accumulate, seed)
        self.rank = check_int("rank", rank, low=0, high=world_size - 1)
        self.world_size = check_int("world_size", world_size, low=1)

    def shard_size(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def shard(self, epoch: int) -> torch.Tensor:
        perm = self.permutation(epoch)
        total = self.shard_size() * self.world_size
        if total > len(perm):  # wrap around, as DistributedSampler(drop_last=False)
            reps = math.ceil(total / len(perm))
            perm = torch.cat([perm] * reps)[:total]
        return perm[self.rank : total : self.world_size]

    def micro_batches(self, epoch: int) -> list[torch.Tensor]:
        return list(torch.split(self.shard(epoch), self.batch_size))

    def steps_per_epoch(self) -> int:
        micro = -(-self.shard_size() // self.batch_size)
        return -(-micro // self.accumulate)


def make_order(num_samples: int, batch_size: int, accumulate: int, seed: int) -> DataOrder:
    """The loop's data order for this process: sharded under a process group."""
    env = current_env()
    if env.distributed:
        return ShardedOrder(num_samples, batch_size, accumulate, seed, env.rank, env.world_size)
    return DataOrder(num_samples, batch_size, accumulate, seed)


# ------------------------------------------------------------------------ wrapping
def wrap_ddp(model: nn.Module, device: torch.device, env: DistEnv, log=None) -> nn.Module:  # type: ignore[no-untyped-def]
    """DDP around ``model`` (already on ``device``); SyncBatchNorm on CUDA only."""
    from torch.nn.parallel import DistributedDataParallel

    say = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
    if has_batchnorm(model):
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if env.is_main:
                say(
                    f"lrpilot fit: BatchNorm converted to SyncBatchNorm (statistics over "
                    f"all {env.world_size} processes)"
                )
        elif env.is_main:
            say(
                "lrpilot fit: SyncBatchNorm is not available on CPU (gloo); BatchNorm is kept, "
                "so each process normalises over its own micro-batch"
            )
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_context(model: nn.Module, last_micro: bool):  # type: ignore[no-untyped-def]
    """``model.no_sync()`` for all but the last micro-batch of a DDP step (one all-reduce
    per optimizer step; gradients accumulate locally); a no-op otherwise."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not last_micro:
        return model.no_sync()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------- LR scaling
def _reject_unknown_keys(section: str, raw: Mapping, valid: tuple[str, ...]) -> None:
    for key in raw:
        if key not in valid:
            raise ConfigError(
                f"unknown config key '{section}.{key}'; valid: {', '.join(sorted(valid))}"
            )


def parse_lr_scaling(raw: Any) -> dict | None:
    """Validate the ``lr_scaling`` config: ``{rule, base_batch, conservative}``.

    >>> parse_lr_scaling({"rule": "sqrt", "base_batch": 64})
    {'rule': 'sqrt', 'base_batch': 64, 'conservative': 0.0}
    """
    if raw is None or raw is False:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"lr_scaling must be a mapping {{rule, base_batch}}, got {raw!r}")
    _reject_unknown_keys("lr_scaling", raw, LR_SCALING_KEYS)
    if "base_batch" not in raw:
        raise ConfigError("lr_scaling needs base_batch (the batch the learning rate was tuned at)")
    rule = raw.get("rule", "linear")
    if not isinstance(rule, str):
        raise ConfigError(f"lr_scaling.rule must be a name, got {rule!r}")
    try:
        get_rule(rule)
    except ConfigError as exc:
        raise ConfigError(f"lr_scaling.rule: {exc}") from exc
    return {
        "rule": rule,
        "base_batch": check_int("lr_scaling.base_batch", raw["base_batch"], low=1),
        "conservative": check_range(
            "lr_scaling.conservative",
            raw.get("conservative", 0.0),
            low=0,
            high=1,
            high_inclusive=False,
        ),
    }


def effective_batch(batch_size: int, accumulate: int, env: DistEnv | None = None) -> int:
    """Samples per optimizer step: ``batch_size * accumulate * world_size``."""
    env = current_env() if env is None else env
    return batch_size * accumulate * env.world_size


def lr_scale_factor(lr_scaling: Mapping[str, Any] | None, effective: int) -> float:
    """Multiplier for the whole schedule: ``scale_lr(1, base_batch, effective, rule, conservative)``.

    >>> lr_scale_factor({"rule": "linear", "base_batch": 64, "conservative": 0.0}, 256)
    4.0
    >>> lr_scale_factor(None, 256)
    1.0
    """
    if not lr_scaling:
        return 1.0
    return scale_lr(
        1.0,
        lr_scaling["base_batch"],
        effective,
        rule=lr_scaling["rule"],
        conservative=lr_scaling.get("conservative", 0.0),
    )


def scale_schedule(
    schedule, lr_scaling: Mapping[str, Any] | None, batch_size: int, accumulate: int
):  # type: ignore[no-untyped-def]
    """``schedule`` multiplied by :func:`lr_scale_factor` for this run's effective batch
    (``lrpilot.schedules.scale``); unchanged without ``lr_scaling`` or at factor 1."""
    factor = lr_scale_factor(lr_scaling, effective_batch(batch_size, accumulate))
    if factor == 1.0:
        return schedule
    from lrpilot.schedules import scale

    return scale(schedule, factor)


# ----------------------------------------------------------------- online noise scale
def parse_noise_scale(raw: Any, accumulate: int, world_size: int) -> dict | None:
    """Validate ``noise_scale``: ``true`` or ``{beta: 0.99, every: 1}``; needs several
    processes or ``accumulate >= 2`` (see the module docstring)."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"noise_scale must be true, false or {{beta, every}}, got {raw!r}")
    _reject_unknown_keys("noise_scale", raw, NOISE_KEYS)
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
        from torch.nn.parallel import DistributedDataParallel

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
            model.register_comm_hook(self, _noise_allreduce_hook)

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
    return default_hooks.allreduce_hook(None, bucket)
