"""Batch size: what fits, what is useful, and how the learning rate follows.

* :mod:`lrpilot.batch.memory`: :func:`max_batch_size` / :func:`probe_memory`, the largest
  per-device batch that fits (CUDA: out-of-memory search; CPU: fitted peak-RSS model).
* :mod:`lrpilot.batch.noise`: :func:`noise_scale` and the online :class:`NoiseScale`
  record, the gradient noise scale ``B_simple = tr(Σ)/|G|²`` (McCandlish et al. 2018).
* :mod:`lrpilot.batch.scaling`: :func:`scale_lr` under a named rule (linear, sqrt, none)
  and :func:`scale_warmup`.
* :mod:`lrpilot.batch.plan`: :func:`plan_accumulation`, per-device batch, accumulation and
  learning rate for a nominal batch on N processes.
* :mod:`lrpilot.batch.recommend`: :func:`recommend_batch`, the three above together with
  the reasons in words (what ``lrpilot batch`` prints).
* :mod:`lrpilot.batch.scaling` also parses the run's ``lr_scaling`` config
  (:func:`~lrpilot.batch.scaling.lr_scale_factor`), and :mod:`lrpilot.batch.noise` the
  ``noise_scale`` config and its online :class:`~lrpilot.batch.noise.NoiseMonitor`.
* :mod:`lrpilot.batch.distributed`: the former ``torchrun`` helpers, kept as re-exports;
  the process group, DDP and the rank-0 test live in :mod:`lrpilot._distributed`, the
  sharded data order in :mod:`lrpilot.train._data`.

>>> from lrpilot import batch
>>> batch.scale_lr(0.1, 64, 256)
0.4
"""

from __future__ import annotations

from lrpilot.batch.memory import MemoryProbe, max_batch_size, probe_memory
from lrpilot.batch.noise import NoiseScale, NoiseScaleResult, noise_scale, unbiased_estimates
from lrpilot.batch.plan import AccumulationPlan, has_batchnorm, plan_accumulation
from lrpilot.batch.recommend import BatchRecommendation, recommend_batch
from lrpilot.batch.scaling import (
    get_rule,
    list_rules,
    register_rule,
    rule_for_optimizer,
    scale_lr,
    scale_warmup,
)

__all__ = [
    "AccumulationPlan",
    "BatchRecommendation",
    "MemoryProbe",
    "NoiseScale",
    "NoiseScaleResult",
    "get_rule",
    "has_batchnorm",
    "list_rules",
    "max_batch_size",
    "noise_scale",
    "plan_accumulation",
    "probe_memory",
    "recommend_batch",
    "register_rule",
    "rule_for_optimizer",
    "scale_lr",
    "scale_warmup",
    "unbiased_estimates",
]
