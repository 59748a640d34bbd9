"""Regularisation knobs of ``lrpilot fit`` configs (issue 19): parsing and building.

* ``loss: {label_smoothing: eps}``, for tasks whose loss is cross-entropy: PyTorch's
  ``label_smoothing``, the target ``(1 - eps) * onehot(y) + eps / C``. On the training loss
  only, so ``val_loss`` stays the plain cross-entropy and comparable between runs.
* ``optimizer.no_decay: auto``: no weight decay on parameters with at most one dimension
  (biases, normalisation weights), as timm and Hugging Face do; split in
  :func:`lrpilot.optim.build_param_groups`. ``none`` (default) decays every parameter.
* ``model: {dropout: 0.2, ...}``: keyword arguments for ``task.build_model``, for a task that
  builds its model from settings; each name must be one of its arguments.

Reference: C. Szegedy et al., "Rethinking the Inception Architecture", 2016 (label
smoothing); I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", 2019.

>>> from lrpilot.tasks import get_task
>>> parse_loss({"label_smoothing": 0.1}, get_task("digits-cnn"))
{'label_smoothing': 0.1}
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from lrpilot.errors import ConfigError, check_range
from lrpilot.tasks import Task

if TYPE_CHECKING:
    from lrpilot.train._config import FitConfig

__all__ = ["LOSS_KEYS", "NO_DECAY", "build_model", "parse_loss", "parse_model", "training_loss"]

#: ``optimizer.no_decay``: ``none`` (weight decay on every parameter) or ``auto`` (not on the
#: parameters with at most one dimension: biases and normalisation weights)
NO_DECAY = ("none", "auto")
LOSS_KEYS = ("label_smoothing",)


def _is_cross_entropy(loss_fn: Any) -> bool:
    return loss_fn is nn.functional.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss)


def parse_loss(raw: Any, task: Task) -> dict[str, float]:
    """``loss: {label_smoothing}`` validated: in ``[0, 1)``, and > 0 only for cross-entropy."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"loss must be a mapping, got {raw!r}")
    for key in raw:
        if key not in LOSS_KEYS:
            raise ConfigError(f"unknown config key 'loss.{key}'; valid: {', '.join(LOSS_KEYS)}")
    if "label_smoothing" not in raw:
        return {}
    ls = check_range(
        "loss.label_smoothing", raw["label_smoothing"], low=0, high=1, high_inclusive=False
    )
    if ls > 0 and not _is_cross_entropy(task.loss_fn):
        raise ConfigError(
            f"loss.label_smoothing={ls:g} needs a task whose loss is cross-entropy "
            "(torch.nn.functional.cross_entropy or nn.CrossEntropyLoss)"
        )
    return {"label_smoothing": ls}


def parse_model(raw: Any, task: Task) -> dict[str, Any]:
    """``model``: keyword arguments for ``task.build_model`` (e.g. for
    ``def build_model(dropout=0.1, width=128)``); each name must be one of its parameters."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"model must map build_model's arguments to values, got {raw!r}")
    params = inspect.signature(task.build_model).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(raw)
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in raw:
        if key not in valid:
            choices = ", ".join(valid) if valid else "none: it builds its model without settings"
            raise ConfigError(
                f"model.{key}: task {task.name!r}'s build_model has no argument {key!r}; "
                f"valid: {choices}"
            )
    return dict(raw)


def build_model(task: Task, cfg: FitConfig) -> nn.Module:
    """``task.build_model(**cfg.model)``: the task's model with the config's model settings.
    A ``TypeError``, ``ValueError`` or ``RuntimeError`` that ``build_model`` raises with
    them (a value of the wrong type or out of its range) becomes a one-line ``ConfigError`` naming the settings."""
    if not cfg.model:
        return task.build_model()
    try:
        return task.build_model(**cfg.model)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"model={cfg.model!r}: task {task.name!r}'s build_model rejected them: {first}"
        ) from exc


def training_loss(task: Task, cfg: FitConfig) -> Callable[..., Any]:
    """The loss the training step minimises: the task's, with ``loss.label_smoothing``
    (PyTorch's cross-entropy ``label_smoothing``) when set; evaluation keeps the task's.

    >>> import torch
    >>> from lrpilot.tasks import get_task
    >>> from lrpilot.train._config import parse_config
    >>> cfg = parse_config({"task": "digits-cnn", "loss": {"label_smoothing": 0.1}})
    >>> fn = training_loss(get_task("digits-cnn"), cfg)
    >>> x, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    >>> float(fn(x, y)) == float(nn.functional.cross_entropy(x, y, label_smoothing=0.1))
    True
    """
    ls = cfg.loss.get("label_smoothing", 0.0)
    if not ls:
        return task.loss_fn
    base = task.loss_fn
    if isinstance(base, nn.CrossEntropyLoss):
        return nn.CrossEntropyLoss(
            weight=base.weight,
            ignore_index=base.ignore_index,
            reduction=base.reduction,
            label_smoothing=ls,
        )
    return functools.partial(nn.functional.cross_entropy, label_smoothing=ls)
