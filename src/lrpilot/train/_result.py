"""What :func:`lrpilot.fit` returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lrpilot.history import History


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        summary: the content of ``summary.json`` (final and best metrics, epochs and steps
            run, wall time, samples/s, guard actions).
        history: every record of ``metrics.jsonl``.
        run_dir: the run directory (config, metrics, TensorBoard events, checkpoints).
        model: the trained model (best weights restored when early stopping asks for it).
    """

    summary: dict[str, Any]
    history: History
    run_dir: Path
    model: nn.Module | None = None
