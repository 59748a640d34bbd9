"""The training loop: ``lrpilot.fit`` and its pieces (config, data order, checkpoints,
divergence guard, logging), each a small module of its own.

>>> from lrpilot.train import parse_config
>>> parse_config({"task": "mnist1d-cnn", "accumulate": 4}).accumulate
4
"""

from lrpilot.train.checkpoint import CheckpointManager, atomic_save, load_checkpoint
from lrpilot.train.config import FitConfig, apply_overrides, load_yaml, parse_config
from lrpilot.train.data import BatchFetcher, DataOrder
from lrpilot.train.early_stop import BestTracker
from lrpilot.train.guard import DivergenceGuard, classify
from lrpilot.train.loop import fit
from lrpilot.train.result import RunResult

__all__ = [
    "BatchFetcher",
    "BestTracker",
    "CheckpointManager",
    "DataOrder",
    "DivergenceGuard",
    "FitConfig",
    "RunResult",
    "apply_overrides",
    "atomic_save",
    "classify",
    "fit",
    "load_checkpoint",
    "load_yaml",
    "parse_config",
]
