"""Training: ``lrpilot.fit``, the :class:`Engine` it drives (one optimizer step, no I/O,
snapshot/restore for branching), the :class:`Callback` interface the loop is extended
through, and the pieces (config, data order, checkpoints, divergence guard, logging).

>>> from lrpilot.train import parse_config
>>> parse_config({"task": "mnist1d-cnn", "accumulate": 4}).accumulate
4
"""

from lrpilot.train.callbacks import Callback, Control, StepOutcome
from lrpilot.train.checkpoint import CheckpointManager, atomic_save, load_checkpoint
from lrpilot.train.config import FitConfig, parse_config
from lrpilot.train.data import BatchFetcher, DataOrder
from lrpilot.train.early_stop import BestTracker
from lrpilot.train.engine import Engine
from lrpilot.train.guard import DivergenceGuard, classify
from lrpilot.train.loop import fit
from lrpilot.train.plan import RunPlan, plan_run
from lrpilot.train.result import RunResult
from lrpilot.train.sources import apply_overrides, load_yaml

__all__ = [
    "BatchFetcher",
    "BestTracker",
    "Callback",
    "CheckpointManager",
    "Control",
    "DataOrder",
    "DivergenceGuard",
    "Engine",
    "FitConfig",
    "RunPlan",
    "RunResult",
    "StepOutcome",
    "apply_overrides",
    "atomic_save",
    "classify",
    "fit",
    "load_checkpoint",
    "load_yaml",
    "parse_config",
    "plan_run",
]
