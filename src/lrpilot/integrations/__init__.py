"""Plug lrpilot into the trainers people already use.

* :mod:`lrpilot.integrations.lightning` (``pip install lrpilot[lightning]``): the
  ``LRPilot`` callback (schedule stepped once per optimizer step, LR range test before
  training, divergence guard with rollback, ``metrics.jsonl``, state in Lightning
  checkpoints) and ``configure_optimizers`` for a LightningModule;
* :mod:`lrpilot.integrations.transformers` (``pip install lrpilot[hf]``):
  ``make_scheduler`` for ``Trainer(optimizers=...)``, ``LRPilotTrainer`` (schedules from a
  config, works with ``model_init``), ``LRPilotCallback`` (guard signals, ``metrics.jsonl``,
  diagnosis at the end) and ``find_lr`` for models whose output has a ``loss``.

Importing this package imports neither Lightning nor Transformers: each submodule is
loaded on first access, and a missing library raises an ``ImportError`` naming the extra
to install.

>>> import sys, lrpilot.integrations
>>> "lightning" in dir(lrpilot.integrations)
True
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["lightning", "transformers"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
