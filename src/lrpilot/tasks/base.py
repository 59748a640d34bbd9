"""The ``Task`` record and the task registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrpilot.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by whoever builds a task, not by listing them
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


def dataset_len(dataset: Any) -> int:
    """``len(dataset)``: a task's datasets are map-style with a length (the type of
    ``torch.utils.data.Dataset`` does not say so)."""
    return len(dataset)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the target (a batch mean in [0, 1])."""
    return float((outputs.argmax(dim=-1) == targets).float().mean())


@dataclass(frozen=True)
class Task:
    """What a user trains.

    Attributes:
        name: short identifier (``lrpilot tasks`` lists the built-in ones).
        build_model: returns a freshly initialised model (uses the global torch RNG, so
            seed before calling it for a reproducible initialisation).
        train_set, val_set: map-style datasets yielding ``(input, target)`` pairs.
        loss_fn: mean-reduced loss ``loss_fn(outputs, targets) -> scalar tensor``.
        metrics: name -> batch-mean metric ``fn(outputs, targets) -> float``; a run
            aggregates each as a sample-weighted mean over the validation set. Higher is
            better for every metric listed here.
        defaults: default run settings (``epochs``, ``batch_size``, ``optimizer`` mapping)
            in the ``lrpilot fit`` config form.
        description: one line for listings.
    """

    name: str
    build_model: Callable[[], nn.Module]
    train_set: Dataset
    val_set: Dataset
    loss_fn: LossFn
    metrics: Mapping[str, MetricFn] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training example ``(input, target)`` without a batch dimension."""
        return self.train_set[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.build_model().parameters())


@dataclass(frozen=True)
class TaskInfo:
    """What ``lrpilot tasks`` lists about a task, known without building its datasets when
    the task was registered with it."""

    name: str
    train: int
    val: int
    input_shape: tuple[int, ...]
    parameters: int
    optimizer: str
    description: str = ""

    @classmethod
    def of(cls, task: Task) -> TaskInfo:
        """Measured on a built task (the reference the registered metadata must match)."""
        return cls(
            name=task.name,
            train=dataset_len(task.train_set),
            val=dataset_len(task.val_set),
            input_shape=tuple(task.sample()[0].shape),
            parameters=task.num_parameters(),
            optimizer=str(task.defaults.get("optimizer", {}).get("name", "")),
            description=task.description,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train": self.train,
            "val": self.val,
            "input_shape": list(self.input_shape),
            "parameters": self.parameters,
            "optimizer": self.optimizer,
            "description": self.description,
        }


_REGISTRY: dict[str, Callable[[], Task]] = {}
_INFO: dict[str, TaskInfo] = {}
_CACHE: dict[str, Task] = {}


def register_task(name: str, factory: Callable[[], Task], *, info: TaskInfo | None = None) -> None:
    """Register a built-in or plug-in task factory under ``name``; ``info`` lets
    :func:`task_info` answer without building the task."""
    if ":" in name:
        raise ConfigError(f"task name {name!r} must not contain ':' (reserved for module:function)")
    if info is not None and info.name != name:
        raise ConfigError(f"task {name!r}: its info is named {info.name!r}")
    _REGISTRY[name] = factory
    if info is None:
        _INFO.pop(name, None)
    else:
        _INFO[name] = info


def task_info(name: str) -> TaskInfo:
    """The listing of a registered task: its registered :class:`TaskInfo`, else measured on
    the built task. Unknown names raise listing the valid ones."""
    if name in _INFO:
        return _INFO[name]
    return TaskInfo.of(get_task(name))


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_REGISTRY)


def get_task(spec: str | Task) -> Task:
    """Resolve a task by registered name or ``"module:function"``.

    Built-in tasks are built once per process and cached (their datasets are generated
    locally, never downloaded). Unknown names raise ``ConfigError`` listing the valid ones.
    """
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"task must be a name or 'module:function', got {spec!r}")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"task {spec!r}: cannot import module {module_name!r}: {exc}"
            ) from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"task {spec!r}: {module_name} has no callable {attr!r}")
        task = factory()
        if not isinstance(task, Task):
            raise ConfigError(
                f"task {spec!r}: {attr}() returned {type(task).__name__}, expected lrpilot.Task"
            )
        return task
    if spec not in _REGISTRY:
        raise ConfigError(
            f"unknown task {spec!r}; valid: {', '.join(list_tasks())} or module:function"
        )
    if spec not in _CACHE:
        _CACHE[spec] = _REGISTRY[spec]()
    return _CACHE[spec]
