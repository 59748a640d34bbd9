"""Diagnosis of a training run's curves: what is wrong and what to do.

Public: :func:`diagnose`, :class:`Finding`, the rule registry (:class:`Rule`,
:func:`register_rule`, :func:`kinds`) and the readers in :mod:`lrpilot.diagnosis.readers`.

>>> from lrpilot.history import History
>>> from lrpilot.diagnosis import diagnose
>>> h = History.from_records([{"type": "step", "step": 1, "epoch": 0, "lr": 0.1,
...                            "train_loss": float("nan")}])
>>> [f.kind for f in diagnose(h)]
['nan']
"""

from __future__ import annotations

from lrpilot.diagnosis.diagnose import EXPLAINS, diagnose
from lrpilot.diagnosis.finding import KINDS, SEVERITIES, Finding
from lrpilot.diagnosis.registry import (
    META_KINDS,
    RULES,
    Rule,
    get_rule,
    kinds,
    register_rule,
    unregister_rule,
)

__all__ = [
    "EXPLAINS",
    "KINDS",
    "META_KINDS",
    "RULES",
    "SEVERITIES",
    "Finding",
    "Rule",
    "diagnose",
    "get_rule",
    "kinds",
    "register_rule",
    "unregister_rule",
]
