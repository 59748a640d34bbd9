"""Tasks: what a user trains.

A :class:`Task` bundles a model factory, train and validation datasets, a loss, metrics and
default hyperparameters. Built-in tasks are offline; a user's own task is named
``"module:function"`` where the function returns a ``Task``.

>>> from lrpilot.tasks import get_task
>>> task = get_task("mnist1d-mlp")
>>> len(task.train_set), len(task.val_set)
(4000, 1000)
"""

from __future__ import annotations

from lrpilot.tasks.base import (
    Task,
    TaskInfo,
    accuracy,
    get_task,
    list_tasks,
    register_task,
    task_info,
)
from lrpilot.tasks.builtin import digits_cnn, mnist1d_cnn, mnist1d_mlp

__all__ = [
    "Task",
    "TaskInfo",
    "accuracy",
    "digits_cnn",
    "get_task",
    "list_tasks",
    "mnist1d_cnn",
    "mnist1d_mlp",
    "register_task",
    "task_info",
]
