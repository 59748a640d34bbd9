"""lrpilot: a learning-rate and batch-size autopilot for PyTorch training."""

from __future__ import annotations

from lrpilot.errors import ConfigError, TrainingAborted
from lrpilot.tasks import Task, get_task, list_tasks

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Task",
    "TrainingAborted",
    "__version__",
    "get_task",
    "list_tasks",
]
