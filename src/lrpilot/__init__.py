"""lrpilot: a learning-rate and batch-size autopilot for PyTorch training.

The top level is the public surface; ``import lrpilot`` loads nothing heavy (no torch, no
optional dependency): each name below, and each subpackage (``lrpilot.schedules``,
``lrpilot.finder``, ``lrpilot.batch``, ``lrpilot.diagnosis``, ``lrpilot.tasks``,
``lrpilot.train``, ``lrpilot.optim``...), is imported on first use (PEP 562).

>>> import lrpilot
>>> lrpilot.__version__
'0.1.0'
>>> callable(lrpilot.find_lr), lrpilot.schedules.__name__
(True, 'lrpilot.schedules')
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from lrpilot.errors import ConfigError, TrainingAborted

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "FinderResult": "lrpilot.finder",
    "find_lr": "lrpilot.finder",
    "find_for_task": "lrpilot.finder",
    "Finding": "lrpilot.diagnosis",
    "diagnose": "lrpilot.diagnosis",
    "Plateau": "lrpilot.schedules",
    "attach": "lrpilot.schedules",
    "from_config": "lrpilot.schedules",
    "Task": "lrpilot.tasks",
    "get_task": "lrpilot.tasks",
    "list_tasks": "lrpilot.tasks",
    "RunResult": "lrpilot.train",
    "fit": "lrpilot.autopilot",  # lrpilot.train.fit, and configs with auto values
    "auto": "lrpilot.autopilot",
}

__all__ = [
    "ConfigError",
    "FinderResult",
    "Finding",
    "Plateau",
    "RunResult",
    "Task",
    "TrainingAborted",
    "__version__",
    "attach",
    "auto",
    "batch",
    "diagnose",
    "find_for_task",
    "find_lr",
    "fit",
    "from_config",
    "get_task",
    "list_tasks",
    "schedules",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from lrpilot import batch, schedules
    from lrpilot.autopilot import auto, fit
    from lrpilot.diagnosis import Finding, diagnose
    from lrpilot.finder import FinderResult, find_for_task, find_lr
    from lrpilot.schedules import Plateau, attach, from_config
    from lrpilot.tasks import Task, get_task, list_tasks
    from lrpilot.train import RunResult


def __getattr__(name: str) -> Any:
    """Import a public name or a subpackage on first access (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"lrpilot.{name}") is not None:
        value = importlib.import_module(f"lrpilot.{name}")
    else:
        raise AttributeError(f"module 'lrpilot' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *__all__})
