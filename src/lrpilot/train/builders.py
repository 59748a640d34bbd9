"""Builders for a training run: device, model wrapping, parameter groups (``layer_lr``),
optimizer, schedule, training data, and the small helpers the loop calls (autocast,
evaluation, gradient norm). Each is a plain function of the validated ``FitConfig``, so the
engine (:mod:`lrpilot.train.engine`) stays about the step.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lrpilot.batch import distributed as bdist
from lrpilot.errors import ConfigError
from lrpilot.tasks import Task
from lrpilot.train.config import (
    IMPLEMENTATIONS,
    FitConfig,
)
from lrpilot.train.data import BatchFetcher, DataOrder

_MAIN_LR_PARAM = {"one_cycle": "max_lr", "linear": "start_lr"}


def is_main_process() -> bool:
    """Whether this process writes files and prints (rank 0, or no process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def wrap_model(model: nn.Module, cfg: FitConfig, device: torch.device) -> nn.Module:
    """Place the model on ``device``; under torchrun wrap it in DDP (SyncBatchNorm on CUDA),
    see :mod:`lrpilot.batch.distributed`."""
    model = model.to(device)
    env = bdist.current_env()
    return bdist.wrap_ddp(model, device, env) if env.distributed else model


def build_param_groups(
    model: nn.Module, layer_lr: Mapping[str, float]
) -> tuple[list[dict], list[float], list[str]]:
    """Param groups for ``layer_lr``: ``(groups, multipliers, labels)``.

    Each parameter goes to the first pattern (in config order) that matches, with
    ``fnmatch``, its module name (``"0"``, ``"encoder.layer1"``) or its full parameter name
    (``"0.bias"``); unmatched parameters form the first group with multiplier 1. A pattern
    matching nothing is an error (a silently ignored option would be worse).

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> _, mults, labels = build_param_groups(m, {"2": 0.1})
    >>> mults, labels
    ([1.0, 0.1], ['default', '2'])
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not layer_lr:
        return [{"params": [p for _, p in named]}], [1.0], ["default"]
    buckets: dict[str, list[nn.Parameter]] = {"default": []}
    buckets.update({pattern: [] for pattern in layer_lr})
    for name, param in named:
        module = name.rsplit(".", 1)[0] if "." in name else ""
        for pattern in layer_lr:
            if fnmatch.fnmatchcase(module, pattern) or fnmatch.fnmatchcase(name, pattern):
                buckets[pattern].append(param)
                break
        else:
            buckets["default"].append(param)
    for pattern in layer_lr:
        if not buckets[pattern]:
            modules = sorted({n.rsplit(".", 1)[0] for n, _ in named if "." in n})
            raise ConfigError(
                f"layer_lr pattern {pattern!r} matches no parameter; module names: "
                f"{', '.join(modules)}"
            )
    groups, mults, labels = [], [], []
    for label, params in buckets.items():
        if params:
            groups.append({"params": params})
            mults.append(1.0 if label == "default" else float(layer_lr[label]))
            labels.append(label)
    return groups, mults, labels


#: devices on which ``implementation: auto`` picks PyTorch's fused optimizer kernels
AUTO_FUSED_DEVICES = ("cpu", "cuda")


def makes_sparse_grads(model: nn.Module) -> bool:
    """Whether a module of ``model`` produces sparse gradients (``nn.Embedding`` or
    ``nn.EmbeddingBag`` with ``sparse=True``), which the fused kernels do not take.

    >>> makes_sparse_grads(nn.Embedding(10, 3, sparse=True)), makes_sparse_grads(nn.Linear(2, 2))
    (True, False)
    """
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in model.modules())


def resolve_implementation(
    choice: str, params: Sequence[torch.Tensor], *, sparse_grads: bool = False
) -> str:
    """The optimizer implementation that ``optimizer.implementation = choice`` means for
    ``params``: ``"fused"``, ``"foreach"`` or ``"for-loop"``.

    All three apply the same update rule (``torch.optim.SGD``/``Adam``/``AdamW``); they
    differ in speed and, through the order of floating-point operations, in the last bits
    (at most about 1e-6 apart after 200 steps, ``bench/optimizer_step.py``). ``auto`` picks
    ``fused`` when every parameter is a dense floating-point tensor on CPU or CUDA and no
    module makes sparse gradients; otherwise PyTorch's own default (``foreach`` when every
    parameter is on CUDA, else ``for-loop``). Why fused: on this project's CPU (one thread)
    the optimizer step of the built-in tasks' models with SGD, AdamW or Adam takes 2.3-3.9x
    less time fused than with PyTorch's default for-loop, 2.2-3.4x for a 4M-parameter MLP
    (``bench/optimizer_step.py``). ``fused`` asked for where it cannot run is an error.

    >>> p = [torch.zeros(3, requires_grad=True)]
    >>> resolve_implementation("auto", p), resolve_implementation("for-loop", p)
    ('fused', 'for-loop')
    >>> resolve_implementation("auto", p, sparse_grads=True)
    'for-loop'
    """
    unsupported = [
        p
        for p in params
        if p.device.type not in AUTO_FUSED_DEVICES or not torch.is_floating_point(p)
    ]
    fusable = not unsupported and not sparse_grads
    if choice == "fused":
        if not fusable:
            bad = unsupported[0] if unsupported else None
            what = (
                "a module makes sparse gradients (nn.Embedding/EmbeddingBag with sparse=True)"
                if bad is None
                else f"a parameter is {bad.dtype} on {bad.device.type}"
            )
            others = ", ".join(name for name in IMPLEMENTATIONS if name != "fused")
            raise ConfigError(
                "optimizer.implementation='fused' needs dense floating-point parameters on "
                f"{' or '.join(AUTO_FUSED_DEVICES)}, but {what}; valid here: {others}"
            )
        return "fused"
    if choice in ("foreach", "for-loop"):
        return choice
    if choice != "auto":
        raise ConfigError(
            f"optimizer.implementation={choice!r} is not allowed; valid: "
            + ", ".join(IMPLEMENTATIONS)
        )
    if fusable:
        return "fused"
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    return "foreach" if on_cuda else "for-loop"


def implementation_of(optimizer: torch.optim.Optimizer) -> str:
    """The implementation an optimizer's first param group runs: ``"fused"``, ``"foreach"``
    or ``"for-loop"`` (unset flags mean PyTorch's default: foreach when every parameter is
    on CUDA).

    >>> p = [torch.zeros(2, requires_grad=True)]
    >>> plain, fused = torch.optim.SGD(p, lr=0.1), torch.optim.SGD(p, lr=0.1, fused=True)
    >>> implementation_of(plain), implementation_of(fused)
    ('for-loop', 'fused')
    """
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None:
        foreach = all(p.device.type == "cuda" for p in group["params"])
    return "foreach" if foreach else "for-loop"


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` that keeps the implementation the optimizer was
    built with. PyTorch's loader copies each saved param group's ``fused``/``foreach``
    flags over the live ones; a checkpoint from before ``optimizer.implementation`` (flags
    unset) would otherwise switch a fused optimizer to the for-loop while the optimizer
    still tells a ``GradScaler`` that its step handles overflow itself. As for every
    setting added since a run began, the resumed run takes the setting's value now.
    """
    kept = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept, strict=True):
        group.update(flags)


def build_optimizer(
    cfg: FitConfig, groups: list[dict], implementation: str = "for-loop"
) -> torch.optim.Optimizer:
    """The configured ``torch.optim`` optimizer over ``groups``, run by ``implementation``
    (a name :func:`resolve_implementation` returns)."""
    o = cfg.optimizer
    kernel = {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for-loop": {"foreach": False},
    }[implementation]
    if o.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            weight_decay=o.weight_decay,
            **kernel,
        )
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **kernel)


def schedule_mapping(cfg: FitConfig) -> dict:
    """The schedule config with ``optimizer.lr`` filled in where the schedule has no LR
    (rule in :mod:`lrpilot.train.config`); a constant schedule when none is given."""
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
        schedule = bdist.scale_schedule(schedule, cfg.lr_scaling, cfg.batch_size, cfg.accumulate)
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
        order=bdist.make_order(n, cfg.batch_size, cfg.accumulate, cfg.seed),
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
