"""Rules of thumb as a tool: ``lrpilot recommend`` writes a fit config with every value's
reason, ``lrpilot check`` flags what the rules flag in a config.

* :mod:`lrpilot.recommend._rules`: the rules table (data: id, condition, value, source,
  assumed or measured) that everything here reads.
* :mod:`lrpilot.recommend._recommender`: :func:`recommend`, a pure function of the request
  and the measurements (the records in :mod:`lrpilot.recommend._records`).
* :mod:`lrpilot.recommend._measure`: the cheap measurements on a task (finder, memory,
  noise scale) and the SGD-vs-AdamW probe.
* :mod:`lrpilot.recommend._choice`: :func:`better_sweep`, the pure comparison of two sweeps.
* :mod:`lrpilot.recommend._check`: :func:`check_config`, the warnings.
* :mod:`lrpilot.recommend._advise`: :func:`~lrpilot.recommend._advise.advise`, what
  ``lrpilot recommend`` does (measure, recommend, validate, check) as one call.
"""

from __future__ import annotations

from lrpilot.recommend._recommender import (
    SCENARIOS,
    Choice,
    FinderMeasurement,
    Measurements,
    Recommendation,
    Request,
    recommend,
)
from lrpilot.recommend._rules import RULES, Rule, render_markdown, rule

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
