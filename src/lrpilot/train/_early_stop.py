"""Best-epoch tracking and early stopping: a small state record with a versioned
``state_dict()``.

An epoch *improves* when ``value < best - min_delta`` (mode ``min``) or
``value > best + min_delta`` (mode ``max``); a non-finite value never improves. With a
``patience``, ``patience`` epochs in a row without improvement stop the run (Keras/Lightning
semantics: stop when ``bad_epochs >= patience``).

>>> tracker = BestTracker("val_loss", "min", patience=2)
>>> [tracker.update(v, epoch=i, step=10 * i) for i, v in enumerate([1.0, 0.8, 0.9, 0.85])]
[True, True, False, False]
>>> tracker.should_stop, tracker.best, tracker.best_epoch
(True, 0.8, 1)
"""

from __future__ import annotations

import math
from typing import Any

STATE_VERSION = 1


class BestTracker:
    def __init__(
        self, monitor: str, mode: str, *, patience: int | None = None, min_delta: float = 0.0
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}; allowed: min, max")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.bad_epochs = 0

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, *, epoch: int, step: int) -> bool:
        """Record one epoch's value; return whether it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.best_step = float(value), epoch, step
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"early-stopping state version {state.get('version')!r}")
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.best_step = state["best_step"]
        self.bad_epochs = int(state["bad_epochs"])
