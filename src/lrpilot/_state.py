"""Snapshots of training state as CPU copies: :func:`cpu_clone`, :func:`copy_into` (a
copy that reuses the buffers of an earlier one), :func:`take_snapshot` and
:func:`restore_snapshot` of a model and its optimizer. The one home of state capture: the
training engine (:mod:`lrpilot.train._engine`), its guard and the LR finder's
:mod:`lrpilot.finder.snapshot` use it; it imports nothing of lrpilot's.

>>> import torch
>>> a = cpu_clone({"w": torch.zeros(2), "n": 3})
>>> b = copy_into(a, {"w": torch.ones(2), "n": 4})
>>> b["w"].tolist(), b["n"], b["w"] is a["w"]
([1.0, 1.0], 4, True)
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def cpu_clone(obj: Any) -> Any:
    """Deep copy with every tensor detached, cloned and moved to the CPU."""
    return copy_into(None, obj)


def copy_into(old: Any, obj: Any) -> Any:
    """:func:`cpu_clone` of ``obj`` that copies into the CPU tensors of ``old`` (an earlier
    copy of the same structure that nobody else holds) where shape and dtype match, so a
    snapshot taken again and again does not allocate again and again.

    >>> a = cpu_clone({"w": torch.zeros(2)})
    >>> b = copy_into(a, {"w": torch.ones(2)})
    >>> b["w"].tolist(), b["w"] is a["w"]
    ([1.0, 1.0], True)
    """
    kind = type(obj)
    if kind in _IMMUTABLE:  # most leaves of an optimizer's param groups: checked first
        return obj
    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        if (
            type(old) is torch.Tensor
            and old.is_cpu
            and old.layout is torch.strided
            and obj.layout is torch.strided
            and old.dtype is obj.dtype
            and old.shape == obj.shape
        ):
            return old.copy_(obj)
        return obj.clone() if obj.is_cpu else obj.to("cpu")
    if isinstance(obj, dict):
        previous = old if isinstance(old, dict) else _EMPTY
        out = dict(obj)  # immutable values stay; the rest are copied below
        for k, v in obj.items():
            if type(v) not in _IMMUTABLE:
                out[k] = copy_into(previous.get(k), v)
        return out
    if isinstance(obj, (list, tuple)):
        if all(type(v) in _IMMUTABLE for v in obj):
            return list(obj) if isinstance(obj, list) else obj
        same = isinstance(old, kind) and len(old) == len(obj)
        items = [copy_into(old[i] if same else None, v) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (bool, int, float, str, bytes)):
        return obj  # a subclass of an immutable type
    return copy.copy(obj)


_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes})
_EMPTY: dict = {}


def take_snapshot(
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    reuse: dict | None = None,
) -> dict:
    """A CPU copy of the model and optimizer state at ``step`` (checkpointable as is).

    ``reuse``: a snapshot that is being dropped (held nowhere else); its tensors receive
    the new copy instead of new allocations."""
    reuse = reuse or {}
    return {
        "step": step,
        "model": copy_into(reuse.get("model"), model.state_dict()),
        "optimizer": copy_into(reuse.get("optimizer"), optimizer.state_dict()),
    }


def restore_snapshot(
    snapshot: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Put the snapshot's weights and optimizer state back (copies; the snapshot stays).

    The optimizer's per-group learning rates are left to the caller (the schedule adapter
    re-applies them)."""
    model.load_state_dict(snapshot["model"])
    lrs = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(cpu_clone(snapshot["optimizer"]))
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
