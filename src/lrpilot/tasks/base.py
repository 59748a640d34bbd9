"""The ``Task`` record and the task registry."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lrpilot.errors import ConfigError, short_repr

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
    ``"module:function"`` and ``"path/to/file.py:function"`` name a user's factory; see
    :func:`load_factory` for what it must be.
    """
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"task must be a name or 'module:function', got {_spec(spec)}")
    if ":" in spec:
        return call_factory(spec, load_factory(spec))
    if spec not in _REGISTRY:
        raise ConfigError(
            f"unknown task {_spec(spec)}; valid: {', '.join(list_tasks())} or module:function"
        )
    if spec not in _CACHE:
        _CACHE[spec] = _REGISTRY[spec]()
    return _CACHE[spec]


def _spec(spec: object) -> str:
    """A task spec for messages: whole up to 200 characters (a file path), else shortened."""
    text = repr(spec)
    return text if len(text) <= 200 else short_repr(spec)


def _import_module(spec: str, module_name: str) -> ModuleType:
    """``module_name`` as a dotted module (found on ``sys.path``) or a ``.py`` file path."""
    is_path = module_name.endswith(".py") or "/" in module_name or os.sep in module_name
    try:
        if is_path:
            return _import_file(spec, Path(module_name))
        if not all(part.isidentifier() for part in module_name.split(".")):
            raise ConfigError(
                f"task {_spec(spec)}: {short_repr(module_name)} is neither a module name "
                "nor a .py file"
            )
        return importlib.import_module(module_name)
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(
            f"task {_spec(spec)}: cannot import module {module_name!r}: {exc}"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(
            f"task {_spec(spec)}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None


def _import_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(f"task {_spec(spec)}: {str(path)!r} is not a .py file")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"_lrpilot_task_{resolved.stem if resolved.stem.isidentifier() else 'file'}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"task {_spec(spec)}: cannot load {str(path)!r}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # pickling (DataLoader workers) finds classes defined there
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_factory(spec: str) -> Callable[[], Task]:
    """The factory a ``"module:function"`` (or ``"path/file.py:function"``) spec names,
    checked before it is called: a Python function (or class) defined in Python, callable
    with no arguments, whose return annotation, if any, is ``Task``. Built-ins (``os:system``,
    ``sys:exit``) and functions with required parameters are refused without being called.

    >>> load_factory("lrpilot.tasks.builtin:mnist1d_mlp").__name__
    'mnist1d_mlp'
    >>> load_factory("os:system")
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: task 'os:system': system is a built-in function, not a Task factory (a Python function taking no arguments and returning lrpilot.Task)
    """
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"task {_spec(spec)}: expected 'module:function' or 'path/to/file.py:function' "
            "with both parts"
        )
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"task {_spec(spec)}: {short_repr(attr)} is not a function name")
    obj: Any = _import_module(spec, module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"task {_spec(spec)}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    _check_factory(spec, obj, attr)
    return obj


_EXPECTED = "a Python function taking no arguments and returning lrpilot.Task"


def _check_factory(spec: str, obj: Any, attr: str) -> None:
    name = attr
    if isinstance(obj, ModuleType):
        raise ConfigError(f"task {_spec(spec)}: {name} is a module, not a Task factory")
    if not callable(obj):
        raise ConfigError(
            f"task {_spec(spec)}: {name} is a {type(obj).__name__}, not callable "
            f"(expected {_EXPECTED})"
        )
    if inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj):
        raise ConfigError(
            f"task {_spec(spec)}: {name} is a built-in function, not a Task factory ({_EXPECTED})"
        )
    if inspect.isclass(obj) and not issubclass(obj, Task):
        raise ConfigError(
            f"task {_spec(spec)}: {name} is a class that is not lrpilot.Task (expected {_EXPECTED})"
        )
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        raise ConfigError(
            f"task {_spec(spec)}: cannot inspect {name}'s parameters (expected {_EXPECTED})"
        ) from None
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise ConfigError(
            f"task {_spec(spec)}: {name}() has required parameters ({', '.join(required)}); "
            f"expected {_EXPECTED}"
        )
    returns = signature.return_annotation
    if returns is not signature.empty and returns is not Task:
        text = returns if isinstance(returns, str) else getattr(returns, "__name__", "")
        if not (isinstance(text, str) and text.rsplit(".", 1)[-1] == "Task"):
            raise ConfigError(
                f"task {_spec(spec)}: {name}() is annotated to return {text or returns!r}, "
                "not lrpilot.Task"
            )


def call_factory(spec: str, factory: Callable[[], Task]) -> Task:
    """Call a user's factory; anything it raises (``SystemExit`` too) becomes one
    ``ConfigError`` line with the exception's type and message."""
    name = getattr(factory, "__name__", "factory")
    try:
        task = factory()
    except (Exception, SystemExit) as exc:
        detail = " ".join(str(exc).split()) or "(no message)"
        raise ConfigError(
            f"task {_spec(spec)}: {name}() raised {type(exc).__name__}: {short_repr_text(detail)}"
        ) from None
    if not isinstance(task, Task):
        raise ConfigError(
            f"task {_spec(spec)}: {name}() returned {type(task).__name__}, expected lrpilot.Task"
        )
    return task


def short_repr_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
