"""Training: ``lrpilot.fit``, the :class:`Engine` it drives (one optimizer step, no I/O,
snapshot/restore for branching), the :class:`Callback` interface the loop is extended
through, and the pieces (config, data order, checkpoints, divergence guard, logging).

>>> from lrpilot.train import parse_config
>>> parse_config({"task": "mnist1d-cnn", "accumulate": 4}).accumulate
4
"""

from __future__ import annotations

from lrpilot.train._callbacks import Callback, Control, StepOutcome
from lrpilot.train._config import FitConfig, parse_config
from lrpilot.train._engine import Engine
from lrpilot.train._loop import fit
from lrpilot.train._plan import RunPlan, plan_run
from lrpilot.train._result import RunResult

__all__ = [
    "Callback",
    "Control",
    "Engine",
    "FitConfig",
    "RunPlan",
    "RunResult",
    "StepOutcome",
    "fit",
    "parse_config",
    "plan_run",
]
