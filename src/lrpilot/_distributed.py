"""The distributed service: one home for the process group and everything rank-aware.

* :func:`init_from_env`: reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (set by
  ``torchrun``) and starts the process group: ``gloo`` on CPU, ``nccl`` on CUDA (each
  process on ``cuda:LOCAL_RANK``). Without those variables (or with ``WORLD_SIZE=1``) it
  is a no-op and the run is single-process.
* :func:`broadcast_object`, :func:`mean_over_processes`, :func:`barrier`,
  :func:`shutdown`: collectives that are identities without a process group.
* :func:`is_main_process`: the rank-0 test (the process that writes files and prints).
* :func:`effective_batch`: samples per optimizer step, ``batch_size * accumulate * world``.
* :func:`wrap_ddp`: ``DistributedDataParallel`` around the model, with BatchNorm converted
  to ``SyncBatchNorm`` on CUDA; on CPU (gloo) SyncBatchNorm is not available, so
  BatchNorm is kept and a message says each process normalises over its own samples.
  :func:`unwrap` and :func:`sync_context` go with it.

The sharded data order lives in :mod:`lrpilot.train._data`, the LR-scaling config in
:mod:`lrpilot.batch.scaling`, the online noise monitor in :mod:`lrpilot.batch.noise`.
This module is the lowest layer: it imports torch and :mod:`lrpilot.errors` only.

>>> env = current_env()
>>> env.world_size, env.is_main, is_main_process()
(1, True, True)
>>> effective_batch(32, 4, DistEnv(rank=0, world_size=2))
256
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lrpilot.errors import ConfigError


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


def launched_world_size() -> int:
    """The processes ``torchrun`` launched (``WORLD_SIZE``; 1 when it is unset)."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={raw!r} is not an integer; allowed: a process count >= 1"
        ) from None


def init_from_env(device: str = "auto") -> DistEnv:
    """Start the process group from ``torchrun``'s environment (see module docstring).

    Returns the environment; a no-op when ``WORLD_SIZE`` is unset or 1, or when a group
    already exists.
    """
    world = launched_world_size()
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


def is_main_process() -> bool:
    """Whether this process writes files and prints (rank 0, or no process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def effective_batch(batch_size: int, accumulate: int, env: DistEnv | None = None) -> int:
    """Samples per optimizer step: ``batch_size * accumulate * world_size``."""
    env = current_env() if env is None else env
    return batch_size * accumulate * env.world_size


# ------------------------------------------------------------------------ wrapping
def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` contains a BatchNorm layer (1d/2d/3d, lazy or synchronised)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap_ddp(model: nn.Module, device: torch.device, env: DistEnv, log=None) -> nn.Module:  # type: ignore[no-untyped-def]
    """DDP around ``model`` (already on ``device``); SyncBatchNorm on CUDA only."""
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
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_context(model: nn.Module, last_micro: bool):  # type: ignore[no-untyped-def]
    """``model.no_sync()`` for all but the last micro-batch of a DDP step (one all-reduce
    per optimizer step; gradients accumulate locally); a no-op otherwise."""
    if isinstance(model, DistributedDataParallel) and not last_micro:
        return model.no_sync()
    return contextlib.nullcontext()
