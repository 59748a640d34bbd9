"""The final run's diagnosis, qualified by what the autopilot measured.

:func:`lrpilot.diagnose` reads one run's curves. Two of its findings advise another learning
rate from the curve's shape alone: ``too_slow`` (raise it) and ``oscillating`` (lower it).
The autopilot chose its peak after measuring candidates on both sides of it. When it
measured a candidate at least a quarter decade from its pick on the side the advice points
to, the advice is replaced by those measurements, and the finding's severity becomes
``info``. The finding itself (kind, summary, step) stays: the curve has that shape. Without
such a candidate the finding is left as it is, since the autopilot has no evidence there.

Why: on the settings of ``bench/autopilot_settings.py`` (seed 0, method a11), the final
run's diagnosis advised another LR on 4 of 10 settings. It said to raise it 3x on the
transformer classifier (L) and tiny-lm (E), and to lower it 3x on both Friedman settings
(I, J). In each case the half-decade grid was worse at the advised LR than at the chosen
one, and in each case the autopilot had a candidate on that side.

>>> from lrpilot.autopilot._decide import Probe
>>> from lrpilot.diagnosis import Finding
>>> slow = Finding("too_slow", "warning", advice="raise the learning rate from 0.0068 to about 0.02")
>>> probes = [Probe("r1-0", 0.0022, 1.78), Probe("r1-1", 0.0068, 1.66), Probe("r1-2", 0.022, 1.50)]
>>> [(f.severity, f.evidence["autopilot"]["measured"]) for f in qualify_lr_advice([slow], probes, 0.0068)]
[('info', [[0.022, 1.5]])]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from lrpilot.autopilot._decide import Probe

#: the findings whose advice moves the learning rate: +1 raise it, -1 lower it
LR_DIRECTION = {"too_slow": 1, "oscillating": -1}
#: a candidate counts as measured on the advised side when it is at least this factor
#: away from the pick (the diagnosis advises about 3x; the ladder's step is 10**0.5)
SIDE_FACTOR = 10**0.25


def measured_side(probes: Sequence[Probe], pick: float, direction: int) -> list[Probe]:
    """The usable candidates at least :data:`SIDE_FACTOR` above (``direction`` +1) or below
    (-1) ``pick``, nearest first.

    >>> ps = [Probe("a", 0.01, 1.0), Probe("b", 0.03, 0.9), Probe("c", 0.1, 0.95)]
    >>> [p.name for p in measured_side(ps, 0.03, 1)], [p.name for p in measured_side(ps, 0.03, -1)]
    (['c'], ['a'])
    """
    if not _positive(pick):
        return []
    side = [
        p for p in _usable(probes) if direction * math.log(p.lr / pick) >= math.log(SIDE_FACTOR)
    ]
    return sorted(side, key=lambda p: abs(math.log(p.lr / pick)))


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _usable(probes: Sequence[Probe]) -> list[Probe]:
    """The candidates with a finite score at a positive LR (a hand-edited report may hold
    others)."""
    return [p for p in probes if p.ok and _positive(p.lr)]


def qualify_lr_advice(findings: Sequence[Any], probes: Sequence[Probe], pick: float) -> list[Any]:
    """``findings`` with the LR advice of ``too_slow`` and ``oscillating`` replaced by
    what the autopilot measured on the advised side of its ``pick`` (module doc). Every
    other finding, and one without a measured candidate on its side, is returned as it is.
    """
    usable = _usable(probes)
    if not usable or not _positive(pick):
        return list(findings)
    near = min(usable, key=lambda p: abs(math.log(p.lr / pick)))
    out = []
    for f in findings:
        direction = LR_DIRECTION.get(f.kind, 0)
        side = measured_side(usable, pick, direction) if direction else []
        if not side:
            out.append(f)
            continue
        where = "larger" if direction > 0 else "smaller"
        tried = ", ".join(f"{p.lr:.3g} (decision-split loss {p.score:.4g})" for p in side)
        advice = (
            f"lrpilot auto measured {where} peaks before it chose {pick:.3g}: {tried}, "
            f"against {near.lr:.3g} ({near.score:.4g}); autopilot.json says why it chose "
            f"{pick:.3g}. From the curve alone: {f.advice}"
        )
        evidence = {
            **f.evidence,
            "autopilot": {
                "pick": pick,
                "measured": [[p.lr, p.score] for p in side],
                "reference": [near.lr, near.score],
                "severity_from_curve": f.severity,
            },
        }
        out.append(replace(f, severity="info", advice=advice, evidence=evidence))
    return out


def qualify_from_report(findings: Sequence[Any], report: Mapping[str, Any]) -> list[Any]:
    """:func:`qualify_lr_advice` with the candidates and the pick an ``autopilot.json``
    recorded (``lrpilot diagnose`` of an autopilot run directory says what the run said).
    A report without a peak LR or candidates leaves ``findings`` as they are."""
    pick = next(
        (d.get("value") for d in report.get("decisions", []) if d.get("name") == "peak_lr"),
        None,
    )
    if not isinstance(pick, (int, float)) or isinstance(pick, bool):
        return list(findings)
    probes = [Probe.from_dict(c) for c in report.get("candidates", [])]
    return qualify_lr_advice(findings, probes, float(pick))
