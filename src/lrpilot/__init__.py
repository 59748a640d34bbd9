"""lrpilot: a learning-rate and batch-size autopilot for PyTorch training."""

from __future__ import annotations

from lrpilot import batch, schedules
from lrpilot.diagnosis import Finding, diagnose
from lrpilot.errors import ConfigError, TrainingAborted
from lrpilot.finder import FinderResult, find_lr
from lrpilot.schedules import Plateau, attach, from_config
from lrpilot.tasks import Task, get_task, list_tasks
from lrpilot.train import RunResult, fit

__version__ = "0.1.0"

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
    "batch",
    "diagnose",
    "find_lr",
    "fit",
    "from_config",
    "get_task",
    "list_tasks",
    "schedules",
]
