"""The autopilot: ``lrpilot.auto`` / ``lrpilot auto`` (:mod:`lrpilot.autopilot.run`).

Decisions are pure functions of recorded probes (:mod:`lrpilot.autopilot.decide`); the
budget plan (:mod:`lrpilot.autopilot.plan`), the schedules (:mod:`lrpilot.autopilot.shapes`)
and the probe phase on the training engine (:mod:`lrpilot.autopilot.probe`).
"""

from lrpilot.autopilot.run import auto, fit, load_report

__all__ = ["auto", "fit", "load_report"]
