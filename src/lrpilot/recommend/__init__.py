"""Rules of thumb as a tool: ``lrpilot recommend`` writes a fit config with every value's
reason, ``lrpilot check`` flags what the rules flag in a config.

* :mod:`lrpilot.recommend.rules`: the rules table (data: id, condition, value, source,
  assumed or measured) that everything here reads.
* :mod:`lrpilot.recommend.recommender`: :func:`recommend`, a pure function of the request
  and the measurements (the records in :mod:`lrpilot.recommend.records`).
* :mod:`lrpilot.recommend.measure`: the cheap measurements on a task (finder, memory,
  noise scale) and the SGD-vs-AdamW probe.
* :mod:`lrpilot.recommend.choice`: :func:`better_sweep`, the pure comparison of two sweeps.
* :mod:`lrpilot.recommend.check`: :func:`check_config`, the warnings.
* :mod:`lrpilot.recommend.advise`: :func:`~lrpilot.recommend.advise.advise`, what
  ``lrpilot recommend`` does (measure, recommend, validate, check) as one call.
"""

from __future__ import annotations

from lrpilot.recommend.recommender import (
    SCENARIOS,
    Choice,
    FinderMeasurement,
    Measurements,
    Recommendation,
    Request,
    recommend,
)
from lrpilot.recommend.rules import RULES, Rule, render_markdown, rule

__all__ = [
    "RULES",
    "SCENARIOS",
    "Choice",
    "FinderMeasurement",
    "Measurements",
    "Recommendation",
    "Request",
    "Rule",
    "recommend",
    "render_markdown",
    "rule",
]
