"""LR range test: sweep, restore everything, decide from the recorded curve.

Public: :func:`find_lr` (any model, optimizer and loader), :func:`find_for_task` (a task with
the calibrated protocol, what ``lrpilot find`` runs), the curve analysis
:func:`analyze_curve`, the calibrated policy (:func:`suggest_peak_lr`,
:func:`schedule_config`, :data:`SCHEDULE_FRACTIONS`, :data:`OPTIMIZER_FAMILIES`) and the
protocol (:func:`probe_plan`). Modules: ``snapshot`` (CPU snapshot/restore of model,
optimizer, scaler and RNG state), ``sweep`` (raise the LR, record raw losses, stop on
divergence), ``decision`` (pure functions of the curve: smoothing, instability point,
verdicts), ``policy`` (the calibrated suggestion and the schedule it is for), ``result``
(:class:`FinderResult`), ``plot`` (PNG), ``protocol`` (the calibrated probing protocol),
``core`` (:func:`find_lr`) and ``task_probe`` (:func:`find_for_task`).
"""

from __future__ import annotations

from lrpilot.finder.core import find_lr, optimizer_family_of
from lrpilot.finder.decision import CurveAnalysis, analyze_curve
from lrpilot.finder.policy import (
    CALIBRATION_RATIOS,
    OPTIMIZER_FAMILIES,
    SCHEDULE_FRACTIONS,
    schedule_config,
    suggest_peak_lr,
    suggestion_interval,
)
from lrpilot.finder.protocol import ProbePlan, probe_plan
from lrpilot.finder.result import FinderResult
from lrpilot.finder.task_probe import TaskFinding, find_for_task, prepare_probe

__all__ = [
    "CALIBRATION_RATIOS",
    "OPTIMIZER_FAMILIES",
    "SCHEDULE_FRACTIONS",
    "CurveAnalysis",
    "FinderResult",
    "ProbePlan",
    "TaskFinding",
    "analyze_curve",
    "find_for_task",
    "find_lr",
    "optimizer_family_of",
    "prepare_probe",
    "probe_plan",
    "schedule_config",
    "suggest_peak_lr",
    "suggestion_interval",
]
