"""The optimizer registry: one place that says how lrpilot builds each optimizer.

Every command that builds an optimizer (``lrpilot fit``, ``lrpilot find``, the memory probe
of ``lrpilot batch`` and the benchmarks) goes through :func:`create_optimizer`, so a name
means the same class, the same default hyperparameters and the same kernel everywhere.
An entry (:class:`OptimizerSpec`) holds:

* ``name`` (``"sgd"``, ``"adam"``, ``"adamw"``) and the ``torch.optim`` class;
* ``family``: ``"sgd"`` or ``"adam"``, which fixes the LR-scaling exponent ``kappa`` (the
  peak LR taken to grow as ``batch ** kappa``): 1 for SGD, the linear rule (P. Goyal et al.,
  "Accurate, Large Minibatch SGD", 2017), 1/2 for the Adam family, the square-root rule
  (S. Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms",
  NeurIPS 2022);
* ``defaults``: every hyperparameter the entry takes and its default (a task's
  ``optimizer`` defaults are merged over them by :func:`resolve_settings`);
* ``kernels``: the implementations PyTorch offers for the class (``fused``, ``foreach``,
  ``for-loop``), resolved from a config's ``optimizer.implementation`` by
  :func:`resolve_implementation`.

>>> import torch
>>> p = [torch.nn.Parameter(torch.zeros(2))]
>>> opt = create_optimizer("sgd", p, lr=0.5)
>>> type(opt).__name__, opt.param_groups[0]["momentum"], get_optimizer("adamw").lr_exponent
('SGD', 0.0, 0.5)
>>> create_optimizer("lion", p)
Traceback (most recent call last):
lrpilot.errors.ConfigError: unknown optimizer 'lion'; valid: adam, adamw, sgd
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import nn

from lrpilot.errors import ConfigError

__all__ = [
    "AUTO_FUSED_DEVICES",
    "FAMILY_EXPONENTS",
    "IMPLEMENTATIONS",
    "OptimizerSpec",
    "build_optimizer",
    "build_param_groups",
    "create_optimizer",
    "family_of",
    "get_optimizer",
    "implementation_of",
    "load_optimizer_state",
    "makes_sparse_grads",
    "optimizer_defaults",
    "optimizer_names",
    "register_optimizer",
    "resolve_implementation",
    "resolve_settings",
]

#: optimizer family -> LR-scaling exponent ``kappa`` (peak LR ~ ``batch ** kappa``)
FAMILY_EXPONENTS: Mapping[str, float] = MappingProxyType({"adam": 0.5, "sgd": 1.0})
#: how ``torch.optim`` runs the update (:func:`resolve_implementation`)
IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
#: devices on which ``implementation: auto`` picks PyTorch's fused optimizer kernels
AUTO_FUSED_DEVICES = ("cpu", "cuda")
_KERNEL_FLAGS: Mapping[str, dict[str, bool]] = MappingProxyType(
    {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
)


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer (module doc). ``defaults`` lists every hyperparameter."""

    name: str
    cls: type[torch.optim.Optimizer]
    family: str
    defaults: Mapping[str, Any]
    kernels: tuple[str, ...] = ("fused", "foreach", "for-loop")
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILY_EXPONENTS:
            raise ConfigError(
                f"optimizer family {self.family!r}; valid: {', '.join(sorted(FAMILY_EXPONENTS))}"
            )
        if "lr" not in self.defaults:
            raise ConfigError(f"optimizer {self.name!r}: defaults need an 'lr'")
        bad = [k for k in self.kernels if k not in _KERNEL_FLAGS]
        if bad:
            raise ConfigError(
                f"optimizer {self.name!r}: kernels {bad}; valid: fused, foreach, for-loop"
            )
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @property
    def lr_exponent(self) -> float:
        """``kappa`` of the family: 1 for SGD, 1/2 for the Adam family."""
        return FAMILY_EXPONENTS[self.family]


_REGISTRY: dict[str, OptimizerSpec] = {}
#: classes that are no registered entry but whose family the finder knows (subclasses too)
_EXTRA_FAMILIES: dict[type[torch.optim.Optimizer], str] = {
    torch.optim.NAdam: "adam",
    torch.optim.RAdam: "adam",
    torch.optim.Adamax: "adam",
}


def register_optimizer(spec: OptimizerSpec) -> None:
    """Add ``spec`` to the registry; a name already registered raises."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"optimizer {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def optimizer_names() -> tuple[str, ...]:
    """Registered names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_optimizer(name: str) -> OptimizerSpec:
    """The entry for ``name``; unknown names raise listing the valid ones."""
    spec = _REGISTRY.get(str(name).lower()) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(optimizer_names())}")
    return spec


def optimizer_defaults(name: str) -> dict[str, Any]:
    """A fresh copy of ``name``'s default hyperparameters (tuples as lists, config form).

    >>> optimizer_defaults("sgd")
    {'lr': 0.1, 'momentum': 0.0, 'nesterov': False, 'weight_decay': 0.0}
    """
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in get_optimizer(name).defaults.items()
    }


def resolve_settings(name: str | None, task_optimizer: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"name": ..., **hyperparameters}`` for optimizer ``name`` (``None``: the task's, else
    ``"sgd"``): the registry defaults, with the task's ``optimizer`` defaults merged over them
    when the task names the same optimizer (another optimizer starts from its own
    defaults). This is the rule ``lrpilot fit``'s config applies, so ``lrpilot find``
    probes the optimizer ``lrpilot fit`` trains.

    >>> resolve_settings("sgd", {"name": "adamw", "lr": 0.01})
    {'name': 'sgd', 'lr': 0.1, 'momentum': 0.0, 'nesterov': False, 'weight_decay': 0.0}
    >>> resolve_settings(None, {"name": "sgd", "momentum": 0.9})["momentum"]
    0.9
    """
    task_opt = dict(task_optimizer or {})
    chosen = name if name is not None else str(task_opt.get("name", "sgd"))
    spec = get_optimizer(chosen)
    merged: dict[str, Any] = {"name": spec.name, **optimizer_defaults(spec.name)}
    if str(task_opt.get("name", spec.name)).lower() == spec.name:
        merged.update({k: v for k, v in task_opt.items() if k != "name"})
    return merged


def create_optimizer(
    name: str,
    params: Any,
    *,
    implementation: str | None = None,
    **hyperparameters: Any,
) -> torch.optim.Optimizer:
    """``name``'s class over ``params`` (tensors or param groups) with its defaults updated
    by ``hyperparameters``; ``implementation`` is ``"fused"``, ``"foreach"``,
    ``"for-loop"`` or ``None`` (PyTorch's own default, no flag set). Unknown
    hyperparameters raise listing the valid ones.
    """
    spec = get_optimizer(name)
    unknown = sorted(set(hyperparameters) - set(spec.defaults))
    if unknown:
        raise ConfigError(
            f"optimizer {spec.name!r} takes no {', '.join(unknown)}; valid: "
            + ", ".join(sorted(spec.defaults))
        )
    kwargs: dict[str, Any] = {**spec.defaults, **hyperparameters}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    if implementation is not None:
        if implementation not in spec.kernels:
            raise ConfigError(
                f"optimizer {spec.name!r} has no {implementation!r} kernel; valid: "
                + ", ".join(spec.kernels)
            )
        kwargs.update(_KERNEL_FLAGS[implementation])
    return spec.cls(params, **kwargs)


class _HasOptimizer(Protocol):
    @property
    def optimizer(self) -> Any: ...


def build_optimizer(
    cfg: _HasOptimizer, groups: list[dict[str, Any]], implementation: str = "for-loop"
) -> torch.optim.Optimizer:
    """The optimizer a validated run config (``cfg.optimizer``: name and one attribute per
    hyperparameter) asks for, over ``groups``, run by ``implementation`` (a name
    :func:`resolve_implementation` returns)."""
    o = cfg.optimizer
    spec = get_optimizer(o.name)
    hyper = {key: getattr(o, key) for key in spec.defaults}
    return create_optimizer(spec.name, groups, implementation=implementation, **hyper)


def family_of(optimizer: torch.optim.Optimizer) -> str | None:
    """The family (``"sgd"``/``"adam"``) of an optimizer instance: the entry whose class (or
    a subclass) it is, or one of NAdam, RAdam, Adamax; ``None`` for others.

    >>> p = [torch.nn.Parameter(torch.zeros(1))]
    >>> family_of(torch.optim.NAdam(p)), family_of(torch.optim.Adagrad(p))
    ('adam', None)
    """
    for spec in _REGISTRY.values():
        if isinstance(optimizer, spec.cls):
            return spec.family
    for cls, family in _EXTRA_FAMILIES.items():
        if isinstance(optimizer, cls):
            return family
    return None


def family_classes() -> dict[type[torch.optim.Optimizer], str]:
    """Every class :func:`family_of` recognises -> its family."""
    out = {spec.cls: spec.family for spec in _REGISTRY.values()}
    out.update(_EXTRA_FAMILIES)
    return out


def _split_no_decay(
    groups: list[dict[str, Any]], mults: list[float], labels: list[str]
) -> tuple[list[dict[str, Any]], list[float], list[str]]:
    """Each group split in two: parameters with at most one dimension (biases,
    normalisation weights) get ``weight_decay`` 0, the others keep the optimizer's."""
    out: list[dict[str, Any]] = []
    out_mults: list[float] = []
    out_labels: list[str] = []
    for group, mult, label in zip(groups, mults, labels, strict=True):
        decay = [p for p in group["params"] if p.ndim > 1]
        keep = [p for p in group["params"] if p.ndim <= 1]
        extra: dict[str, Any]
        for params, extra, name in (
            (decay, {}, label),
            (keep, {"weight_decay": 0.0}, f"{label}/no_decay"),
        ):
            if params:
                out.append({"params": params, **extra})
                out_mults.append(mult)
                out_labels.append(name)
    return out, out_mults, out_labels


def build_param_groups(
    model: nn.Module, layer_lr: Mapping[str, float], no_decay: str = "none"
) -> tuple[list[dict[str, Any]], list[float], list[str]]:
    """Param groups for ``layer_lr``: ``(groups, multipliers, labels)``.

    With ``no_decay="auto"`` (``optimizer.no_decay``) each group is split: its parameters
    with at most one dimension (biases and normalisation weights) go to a group labelled
    ``<label>/no_decay`` with ``weight_decay`` 0 and the same multiplier (as timm and
    Hugging Face do; Loshchilov and Hutter, "Decoupled Weight Decay Regularization", 2019).

    Each parameter goes to the first pattern (in config order) that matches, with
    ``fnmatch``, its module name (``"0"``, ``"encoder.layer1"``) or its full parameter name
    (``"0.bias"``); unmatched parameters form the first group with multiplier 1. A pattern
    matching nothing is an error (a silently ignored option would be worse).

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> _, mults, labels = build_param_groups(m, {"2": 0.1})
    >>> mults, labels
    ([1.0, 0.1], ['default', '2'])
    >>> build_param_groups(m, {"2": 0.1}, no_decay="auto")[2]
    ['default', 'default/no_decay', '2', '2/no_decay']
    """
    groups, mults, labels = _layer_groups(model, layer_lr)
    if no_decay == "auto":
        return _split_no_decay(groups, mults, labels)
    if no_decay != "none":
        raise ConfigError(f"optimizer.no_decay={no_decay!r} is not allowed; valid: none, auto")
    return groups, mults, labels


def _layer_groups(
    model: nn.Module, layer_lr: Mapping[str, float]
) -> tuple[list[dict[str, Any]], list[float], list[str]]:
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
    groups: list[dict[str, Any]] = []
    mults: list[float] = []
    labels: list[str] = []
    for label, params in buckets.items():
        if params:
            groups.append({"params": params})
            mults.append(1.0 if label == "default" else float(layer_lr[label]))
            labels.append(label)
    return groups, mults, labels


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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` that keeps the implementation the optimizer was
    built with. PyTorch's loader copies each saved param group's ``fused``/``foreach``
    flags over the live ones; a checkpoint from before ``optimizer.implementation`` (flags
    unset) would otherwise switch a fused optimizer to the for-loop while the optimizer
    still tells a ``GradScaler`` that its step handles overflow itself. As for every
    setting added since a run began, the resumed run takes the setting's value now.
    """
    kept: list[dict[str, Any]] = [
        {k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept, strict=True):
        group.update(flags)


for _spec in (
    OptimizerSpec(
        "sgd",
        torch.optim.SGD,
        "sgd",
        {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
        description="SGD, optionally with (Nesterov) momentum",
    ),
    OptimizerSpec(
        "adamw",
        torch.optim.AdamW,
        "adam",
        {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 1e-2},
        description="Adam with decoupled weight decay (Loshchilov & Hutter 2019)",
    ),
    OptimizerSpec(
        "adam",
        torch.optim.Adam,
        "adam",
        {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0},
        description="Adam (Kingma & Ba 2015)",
    ),
):
    register_optimizer(_spec)
