"""The arithmetic of a run without a model: :func:`plan_run` gives the schedule (LR
scaling rule applied), the momentum schedule, steps per epoch, total steps, effective batch
and the LR scaling factor of a config, for the demo, ``lrpilot schedule show``,
``lrpilot check``, the autopilot and :class:`~lrpilot.train._engine.Engine`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lrpilot import _distributed as distributed
from lrpilot.batch.scaling import lr_scale_factor
from lrpilot.tasks import Task, get_task
from lrpilot.tasks.base import dataset_len
from lrpilot.train._builders import build_schedule
from lrpilot.train._config import FitConfig, parse_config
from lrpilot.train._data import make_order


@dataclass(frozen=True)
class RunPlan:
    """The arithmetic of a run, without a model: see :func:`plan_run`."""

    schedule: Callable[[int], float]
    momentum: Callable[[int], float] | None
    plateau: Any
    steps_per_epoch: int
    total_steps: int
    effective_batch: int
    lr_scale_factor: float


def plan_run(config: FitConfig | Mapping[str, Any], task: Task | None = None) -> RunPlan:
    """Schedule (LR scaling rule applied), momentum schedule, steps per epoch
    (``ceil(ceil(N / batch_size) / accumulate)`` per process), total steps, effective batch
    (``batch_size * accumulate * world_size``) and the LR scaling rule's factor.

    >>> plan = plan_run({"task": "mnist1d-cnn", "epochs": 2})
    >>> plan.steps_per_epoch, plan.total_steps, plan.effective_batch
    (63, 126, 64)
    """
    cfg = config if isinstance(config, FitConfig) else parse_config(dict(config), task=task)
    task = task if task is not None else get_task(cfg.task)
    order = make_order(dataset_len(task.train_set), cfg.batch_size, cfg.accumulate, cfg.seed)
    spe = order.steps_per_epoch()
    total = order.total_steps(cfg.epochs)
    schedule, momentum, plateau = build_schedule(cfg, spe, total)
    effective = distributed.effective_batch(cfg.batch_size, cfg.accumulate)
    return RunPlan(
        schedule=schedule,
        momentum=momentum,
        plateau=plateau,
        steps_per_epoch=spe,
        total_steps=total,
        effective_batch=effective,
        lr_scale_factor=lr_scale_factor(cfg.lr_scaling, effective),
    )
