"""Builders for a training run: device, model wrapping, parameter groups (``layer_lr``),
optimizer, schedule, training data, and the small helpers the loop calls (autocast,
evaluation, gradient norm). Each is a plain function of the validated ``FitConfig``, so the
engine (:mod:`lrpilot.train._engine`) stays about the step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lrpilot import _distributed as distributed
from lrpilot import optim
from lrpilot._distributed import is_main_process as is_main_process  # its home; re-exported
from lrpilot.batch.scaling import scale_schedule
from lrpilot.errors import ConfigError
from lrpilot.tasks import Task
from lrpilot.train._config import FitConfig
from lrpilot.train._data import BatchFetcher, DataOrder, make_order
from lrpilot.train._knobs import build_model as build_model  # the knobs' builders, re-exported
from lrpilot.train._knobs import training_loss as training_loss

# The optimizer functions live in the registry, lrpilot.optim; these names stay for the loop.
AUTO_FUSED_DEVICES = optim.AUTO_FUSED_DEVICES
build_optimizer = optim.build_optimizer
build_param_groups = optim.build_param_groups
implementation_of = optim.implementation_of
load_optimizer_state = optim.load_optimizer_state
makes_sparse_grads = optim.makes_sparse_grads
resolve_implementation = optim.resolve_implementation

_MAIN_LR_PARAM = {"one_cycle": "max_lr", "linear": "start_lr"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def wrap_model(model: nn.Module, cfg: FitConfig, device: torch.device) -> nn.Module:
    """Place the model on ``device``; under torchrun wrap it in DDP (SyncBatchNorm on CUDA),
    see :mod:`lrpilot._distributed`."""
    model = model.to(device)
    env = distributed.current_env()
    return distributed.wrap_ddp(model, device, env) if env.distributed else model


def schedule_mapping(cfg: FitConfig) -> dict:
    """The schedule config with ``optimizer.lr`` filled in where the schedule has no LR
    (rule in :mod:`lrpilot.train._config`); a constant schedule when none is given."""
    if cfg.schedule is None:
        return {"name": "constant", "lr": cfg.optimizer.lr}
    mapping = dict(cfg.schedule)
    name = mapping.get("name")
    if isinstance(name, str):
        import lrpilot.schedules as schedules

        factory = getattr(schedules, name, None)
        key = _MAIN_LR_PARAM.get(name, "lr")
        if callable(factory) and key not in mapping:
            try:
                params = inspect.signature(factory).parameters
            except (TypeError, ValueError):  # pragma: no cover
                params = {}
            if key in params:
                mapping[key] = cfg.optimizer.lr
    return mapping


def build_schedule(cfg: FitConfig, steps_per_epoch: int, total_steps: int):  # type: ignore[no-untyped-def]
    """``(schedule, momentum schedule or None, Plateau or None)`` from the config."""
    from lrpilot.schedules import Plateau, from_config, momentum_from_config

    mapping = schedule_mapping(cfg)
    try:
        schedule = from_config(mapping, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        schedule = scale_schedule(schedule, cfg.lr_scaling, cfg.batch_size, cfg.accumulate)
        momentum = momentum_from_config(
            mapping, steps_per_epoch=steps_per_epoch, total_steps=total_steps
        )
    except ConfigError as exc:
        raise ConfigError(f"schedule: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"schedule: {exc}") from exc
    if momentum is not None and cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0:
        raise ConfigError(
            "schedule: a momentum cycle needs optimizer.momentum > 0 with sgd "
            "(PyTorch's SGD ignores momentum set to 0 at construction)"
        )
    plateau = None
    if cfg.plateau is not None:
        params = {k: v for k, v in cfg.plateau.items() if k != "monitor"}
        try:
            plateau = Plateau(**params)
        except ValueError as exc:
            raise ConfigError(f"plateau: {exc}") from exc
    return schedule, momentum, plateau


@dataclass
class TrainData:
    """Everything the loop needs to produce batches."""

    order: DataOrder
    fetch: BatchFetcher
    val_fetch: BatchFetcher
    val_batch_size: int
    num_train: int


def build_train_data(cfg: FitConfig, task: Task, device: torch.device) -> TrainData:
    """Data order and batch fetchers (the single place a distributed sampler would go)."""
    n = len(task.train_set)
    return TrainData(
        order=make_order(n, cfg.batch_size, cfg.accumulate, cfg.seed),
        fetch=BatchFetcher(task.train_set, device),
        val_fetch=BatchFetcher(task.val_set, device),
        val_batch_size=max(cfg.batch_size, 256),
        num_train=n,
    )


def autocast_context(enabled: bool, device: torch.device):  # type: ignore[no-untyped-def]
    """bf16 autocast on CPU, fp16 on CUDA; a no-op when AMP is off."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def evaluate(
    model: nn.Module, task: Task, data: TrainData, amp: bool, device: torch.device
) -> dict[str, float]:
    """Sample-weighted mean validation loss and metrics (``val_loss``, ``val_<name>``)."""
    was_training = model.training
    model.eval()
    total = 0
    loss_sum = 0.0
    metric_sums = dict.fromkeys(task.metrics, 0.0)
    with torch.inference_mode():
        for inputs, targets in data.val_fetch.sequential(data.val_batch_size):
            with autocast_context(amp, device):
                outputs = model(inputs)
                loss = task.loss_fn(outputs, targets)
            size = len(targets)
            total += size
            loss_sum += float(loss) * size
            outputs = outputs.float()
            for name, fn in task.metrics.items():
                metric_sums[name] += float(fn(outputs, targets)) * size
    model.train(was_training)
    out = {"val_loss": loss_sum / max(total, 1)}
    out.update({f"val_{k}": v / max(total, 1) for k, v in metric_sums.items()})
    return out


def grad_clearer(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function doing ``optimizer.zero_grad(set_to_none=True)``.

    For an optimizer that keeps ``torch.optim.Optimizer.zero_grad`` it sets ``p.grad =
    None`` on the optimizer's parameters directly: the same effect without the
    profiler-label context that ``zero_grad`` enters on every call (a measurable share of a
    small model's step). An optimizer with its own ``zero_grad`` gets its own method.
    Param groups added to the optimizer later are not seen: build it after the groups.
    """
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return functools.partial(optimizer.zero_grad, set_to_none=True)
    params = tuple(p for group in optimizer.param_groups for p in group["params"])

    def clear() -> None:
        for p in params:
            p.grad = None

    return clear


def grad_norm(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """Total L2 norm of the gradients (as ``clip_grad_norm_`` computes it)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack(norms))


def params_finite(params: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor of ``params`` is finite (one fused norm, one host sync).

    >>> params_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    False
    """
    if not params:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(list(params)))).all())
