"""The autopilot: ``lrpilot.auto`` / ``lrpilot auto`` (:mod:`lrpilot.autopilot._run`).

Decisions are pure functions of recorded probes (:mod:`lrpilot.autopilot._decide`); the
budget plan (:mod:`lrpilot.autopilot._plan`), the schedules (:mod:`lrpilot.autopilot._shapes`)
and the probe phase on the training engine (:mod:`lrpilot.autopilot._probe`).
"""

from __future__ import annotations

from lrpilot.autopilot._report import decision_rows
from lrpilot.autopilot._run import auto, fit, load_report

__all__ = [
    "auto",
    "decision_rows",
    "fit",
    "load_report",
]
