"""Snapshot and restore of everything an LR range test touches.

``TrainingSnapshot.capture`` copies, to CPU memory (never a second copy on the accelerator):

* every parameter and buffer of the model (BatchNorm running statistics and
  ``num_batches_tracked`` included, non-persistent buffers too), each parameter's ``.grad``
  (or its absence), and the ``training`` flag of every submodule;
* the optimizer's ``state_dict()`` (momentum/Adam moments, step counts, every param group's
  hyperparameters including its learning rate);
* a ``GradScaler``'s ``state_dict()`` when one is given;
* the RNG states: Python ``random``, NumPy's global generator, torch's CPU generator, every
  initialised CUDA device's generator, and any extra ``torch.Generator`` passed (for example
  a DataLoader's or sampler's ``generator``).

``restore()`` writes all of it back in place (parameter tensors keep their identity, so an
optimizer or a hook holding references keeps working). ``find_lr`` calls it in a
``finally`` block, so the caller's training continues bit-identically even when the range
test raises.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> snap = TrainingSnapshot.capture(model, opt)
>>> before = model.weight.detach().clone()
>>> model(torch.ones(1, 2)).sum().backward(); opt.step()
>>> snap.restore()
>>> torch.equal(model.weight, before), opt.state_dict()["state"]
(True, {})
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lrpilot._state import cpu_clone


@dataclass
class TrainingSnapshot:
    """CPU copies of model, optimizer, scaler and RNG state; see the module docstring."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scaler: Any = None
    generators: tuple[torch.Generator, ...] = ()
    _tensors: list[torch.Tensor] = field(default_factory=list, repr=False)
    _saved: list[torch.Tensor] = field(default_factory=list, repr=False)
    _grads: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list, repr=False)
    _modes: list[tuple[nn.Module, bool]] = field(default_factory=list, repr=False)
    _optimizer_state: dict | None = field(default=None, repr=False)
    _opt_called: bool | None = field(default=None, repr=False)
    _scaler_state: dict | None = field(default=None, repr=False)
    _rng: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def capture(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        generators: Iterable[torch.Generator] = (),
    ) -> TrainingSnapshot:
        snap = cls(model, optimizer, scaler, tuple(generators))
        seen: set[int] = set()
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) in seen:
                continue  # shared (tied) tensors are saved once
            seen.add(id(tensor))
            snap._tensors.append(tensor)
            snap._saved.append(cpu_clone(tensor))
        for param in model.parameters():
            grad = None if param.grad is None else cpu_clone(param.grad)
            snap._grads.append((param, grad))
        snap._modes = [(module, module.training) for module in model.modules()]
        if optimizer is not None:
            snap._optimizer_state = cpu_clone(optimizer.state_dict())
            # The flag an attached torch LR scheduler sets on the optimizer at each step (for
            # its "lr_scheduler.step() before optimizer.step()" warning); None = absent.
            snap._opt_called = getattr(optimizer, "_opt_called", None)
        if scaler is not None:
            snap._scaler_state = cpu_clone(scaler.state_dict())
        snap._rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "generators": [g.get_state() for g in snap.generators],
        }
        return snap

    def restore(self, rng: bool = True) -> None:
        """Write every captured value back (in place for parameters and buffers).

        ``rng=False`` leaves the random number generators running (``find_lr`` uses it
        between repeats, so that a repeat sees other batches and dropout masks)."""
        with torch.no_grad():
            for tensor, saved in zip(self._tensors, self._saved, strict=True):
                tensor.copy_(saved)
        for param, grad in self._grads:
            if grad is None:
                param.grad = None
            else:
                param.grad = grad.to(device=param.device, dtype=param.dtype, copy=True)
        for module, mode in self._modes:
            module.training = mode
        if self.optimizer is not None and self._optimizer_state is not None:
            # load_state_dict copies (and casts to each parameter's device) on its own;
            # the CPU snapshot is copied again so that it stays reusable.
            self.optimizer.load_state_dict(cpu_clone(self._optimizer_state))
            if self._opt_called is not None:
                self.optimizer._opt_called = self._opt_called
            elif hasattr(self.optimizer, "_opt_called"):
                del self.optimizer._opt_called
        if self.scaler is not None and self._scaler_state is not None:
            self.scaler.load_state_dict(dict(self._scaler_state))
        if not rng:
            return
        random.setstate(self._rng["python"])
        np.random.set_state(self._rng["numpy"])
        torch.set_rng_state(self._rng["torch"])
        if self._rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(self._rng["cuda"])
        for gen, state in zip(self.generators, self._rng["generators"], strict=True):
            gen.set_state(state)
