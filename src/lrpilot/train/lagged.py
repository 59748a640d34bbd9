"""Late reads of a training step's values, so that the step needs no host sync on CUDA.

On CUDA, reading a tensor on the host (``float(loss)``) waits for the GPU to finish the
work queued so far: the CPU cannot queue the next step meanwhile and the GPU idles between
steps. The engine's *lagged* mode (:meth:`lrpilot.train.Engine.advance`) instead puts each
step's ``[loss, grad norm, overflow]`` into one small device tensor, copies it with
``non_blocking=True`` into a pinned host buffer and records a CUDA event after the copy
(:meth:`LateReader.push`). The host reads it (:meth:`LateReader.read`, which waits on that
event only) one step later, after the next step's kernels are queued, so the GPU always has
work while the host waits. On the CPU there is nothing to overlap: the tensor is read as is
(the lagged mode is used on the CPU only by the tests).

Reference: the CUDA programming guide, "Asynchronous concurrent execution" (pinned memory,
``cudaMemcpyAsync``, events); PyTorch's "A guide on good usage of non_blocking and
pin_memory()" (a device-to-host copy with ``non_blocking=True`` must be waited on, here by
an event, before the host reads it).

>>> reader = LateReader(torch.device("cpu"))
>>> late = reader.push(torch.tensor([0.5, 0.0, 0.0]))
>>> reader.read(late)
[0.5, 0.0, 0.0]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Late:
    """A value copied to the host, not read yet: the buffer and the event after the copy
    (``None`` on the CPU)."""

    buffer: torch.Tensor
    event: Any = None


@dataclass
class PendingStep:
    """A step whose update is queued but whose values the host has not read yet."""

    step: int
    epoch: int
    lr: float
    samples: int
    has_norm: bool
    values: Late


class LateReader:
    """A pool of pinned host buffers and CUDA events for :class:`Late` copies."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._free: dict[int, list[Late]] = {}  # by size

    def push(self, values: torch.Tensor) -> Late:
        """Start the copy of ``values`` to the host (no wait); :meth:`read` it later."""
        if not self.cuda:
            return Late(values)
        free = self._free.setdefault(values.numel(), [])
        late = free.pop() if free else None
        if late is None or late.buffer.shape != values.shape:
            late = Late(
                torch.empty(values.shape, dtype=values.dtype, pin_memory=True),
                torch.cuda.Event(),
            )
        late.buffer.copy_(values, non_blocking=True)
        late.event.record()
        return late

    def read(self, late: Late) -> list[float]:
        """The values (waits for the copy's event only: later work stays queued)."""
        if late.event is None:
            return late.buffer.tolist()
        event = late.event
        while not event.query():  # polls; never a device-wide or stream sync
            time.sleep(0)
        out = late.buffer.tolist()
        self._free[late.buffer.numel()].append(late)  # read: the buffer may take the next copy
        return out


__all__ = ["Late", "LateReader", "PendingStep"]
