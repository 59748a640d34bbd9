"""LR range test: sweep, restore everything, decide from the recorded curve.

Modules: ``snapshot`` (CPU snapshot/restore of model, optimizer, scaler and RNG state),
``sweep`` (raise the LR, record raw losses, stop on divergence), ``decision`` (pure
functions of the curve: smoothing, instability point, verdicts, suggestion), ``result``
(:class:`FinderResult`), ``plot`` (PNG), ``protocol`` (the calibrated probing protocol)
and ``core`` (:func:`find_lr`).
"""

from __future__ import annotations

from lrpilot.finder.core import find_lr, optimizer_family_of
from lrpilot.finder.decision import (
    OPTIMIZER_FAMILIES,
    SCHEDULE_FRACTIONS,
    analyze_curve,
    suggest_peak_lr,
)
from lrpilot.finder.protocol import ProbePlan, probe_plan
from lrpilot.finder.result import FinderResult

__all__ = [
    "OPTIMIZER_FAMILIES",
    "SCHEDULE_FRACTIONS",
    "FinderResult",
    "ProbePlan",
    "analyze_curve",
    "find_lr",
    "optimizer_family_of",
    "probe_plan",
    "suggest_peak_lr",
]
