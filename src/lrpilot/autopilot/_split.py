"""The decision split: a part of the training data the autopilot judges candidates on.

Decisions are never made on the validation set a benchmark (or the user) reports: a fixed,
seeded random part of the *training* set is held out of training until the last decision,
and every candidate is scored on it; from the first epoch boundary after the decision the
final run trains on it too (:class:`~lrpilot.train._data.PhasedOrder`, the plan's
``switch_epoch``). Its size is ``FRACTION`` (5%) of the training
set, at least ``MIN_SPLIT`` and at most ``MAX_SPLIT`` samples, and never more than a
quarter of it. (Version a1 held out 10%, at least 256: 18% of the digits rows' data. The
decisions compare mean losses that differ by 10-50% between ladder steps, well above the
noise of 128-200 samples, and every sample held out is one the run does not learn from.)

>>> decision_size(4000), decision_size(1437), decision_size(100_000), decision_size(300)
(200, 128, 2048, 75)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lrpilot.tasks import Task

MIN_SPLIT = 128
MAX_SPLIT = 2048
FRACTION = 0.05


def decision_size(n: int) -> int:
    """Samples held out for decisions from a training set of ``n`` (module doc)."""
    return min(max(MIN_SPLIT, min(MAX_SPLIT, round(FRACTION * n))), n // 4)


def _subset(data: Dataset, idx: torch.Tensor) -> Dataset:
    """``data`` at ``idx``: a ``TensorDataset`` stays one (the fast in-memory path)."""
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[idx] for t in data.tensors))
    return Subset(data, idx.tolist())


def split_indices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(held, kept)``: sorted indices of the decision split and of the rest, from a seeded
    permutation of ``n`` samples."""
    k = decision_size(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
    return perm[:k].sort().values, perm[k:].sort().values


def split_task(task: Task, seed: int) -> tuple[Task, Dataset]:
    """``(task trained on the rest, decision split)`` (:func:`split_indices`)."""
    held, kept = split_indices(len(task.train_set), seed)  # type: ignore[arg-type]
    return replace(task, train_set=_subset(task.train_set, kept)), _subset(task.train_set, held)


def sample_losses(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Dataset,
    device: torch.device,
    metrics: Mapping[str, Callable[[Any, Any], float]] | None = None,
    batch: int = 512,
) -> tuple[list[float], dict[str, float]]:
    """Per-sample losses of ``model`` (eval mode, no gradient) on ``data`` and the
    sample-weighted metrics; the model's train/eval mode is restored."""
    was = model.training
    model.eval()
    losses: list[float] = []
    sums = dict.fromkeys(metrics or {}, 0.0)
    n = len(data)  # type: ignore[arg-type]
    with torch.inference_mode():
        for start in range(0, n, batch):
            items = [data[i] for i in range(start, min(n, start + batch))]
            x = torch.stack([it[0] for it in items]).to(device)
            y = torch.stack([it[1] for it in items]).to(device)
            out = model(x)
            for i in range(len(items)):
                value = float(loss_fn(out[i : i + 1], y[i : i + 1]))
                losses.append(value if math.isfinite(value) else math.nan)
            for name, fn in (metrics or {}).items():
                sums[name] += float(fn(out.float(), y)) * len(items)
    model.train(was)
    return losses, {k: v / max(n, 1) for k, v in sums.items()}
