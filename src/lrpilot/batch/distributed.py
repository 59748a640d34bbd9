"""Names kept for ``lrpilot.batch.distributed`` users; each now has one home.

* the process group, collectives, DDP wrapping, the rank-0 test and the effective batch:
  :mod:`lrpilot._distributed` (the distributed service);
* the sharded data order (``ShardedOrder``, ``make_order``): :mod:`lrpilot.train._data`
  (not re-exported here: ``batch`` sits below ``train``);
* the ``lr_scaling`` config and the schedule's LR factor: :mod:`lrpilot.batch.scaling`;
* the ``noise_scale`` config and the online :class:`NoiseMonitor`: :mod:`lrpilot.batch.noise`.

>>> lr_scale_factor({"rule": "linear", "base_batch": 64, "conservative": 0.0}, 256)
4.0
"""

from __future__ import annotations

from lrpilot._distributed import (
    DistEnv,
    barrier,
    broadcast_object,
    check_resume_world_size,
    current_env,
    effective_batch,
    has_batchnorm,
    init_from_env,
    is_main_process,
    mean_over_processes,
    process_device,
    shutdown,
    sync_context,
    unwrap,
    wrap_ddp,
)
from lrpilot.batch.noise import NOISE_KEYS, NoiseMonitor, parse_noise_scale
from lrpilot.batch.scaling import (
    LR_SCALING_KEYS,
    lr_scale_factor,
    parse_lr_scaling,
    scale_schedule,
)

__all__ = [
    "LR_SCALING_KEYS",
    "NOISE_KEYS",
    "DistEnv",
    "NoiseMonitor",
    "barrier",
    "broadcast_object",
    "check_resume_world_size",
    "current_env",
    "effective_batch",
    "has_batchnorm",
    "init_from_env",
    "is_main_process",
    "lr_scale_factor",
    "mean_over_processes",
    "parse_lr_scaling",
    "parse_noise_scale",
    "process_device",
    "scale_schedule",
    "shutdown",
    "sync_context",
    "unwrap",
    "wrap_ddp",
]
