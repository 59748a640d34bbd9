"""Diagnosis of a training run's curves: what is wrong and what to do.

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
from lrpilot.diagnosis.rules import RULES, Rule, get_rule, register_rule

__all__ = [
    "EXPLAINS",
    "KINDS",
    "RULES",
    "SEVERITIES",
    "Finding",
    "Rule",
    "diagnose",
    "get_rule",
    "register_rule",
]
