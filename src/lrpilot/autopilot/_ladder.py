"""What the probes try: the first round's ladder of candidate peaks and the second round's
refinement, pure functions of the prior and the first round (:mod:`lrpilot.autopilot._decide`
judges what they measured).

>>> ladder(0.01, 3)
[0.003162, 0.01, 0.03162]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrpilot.autopilot._decide import (
    DEFAULT_LR,
    LADDER_STEP,
    NO_PRIOR_SPAN,
    REFINE_STEP,
    Decision,
    Probe,
    prior_lr,
)
from lrpilot.autopilot._prior import describe_sweeps


def ladder(center: float, n: int, step: float = LADDER_STEP, skew: int = 0) -> list[float]:
    """``n`` LRs a factor ``step`` apart around ``center``; ``skew`` shifts the ladder up by
    that many steps (rounded to 4 significant digits).

    >>> ladder(0.1, 3)
    [0.03162, 0.1, 0.3162]
    >>> ladder(1e-3, 4, skew=1)
    [0.001, 0.003162, 0.01, 0.03162]
    """
    if n < 1:
        raise ValueError(f"n={n!r} is out of range; allowed: [1, inf]")
    first = -((n - 1) // 2) + skew
    return [float(f"{center * step ** (first + i):.4g}") for i in range(n)]


def first_round(prior: Mapping[str, Any], family: str, n: int) -> Decision:
    """The first round's candidates from the prior.

    ``prior``: the finder's result (``verdict``, ``suggestion``, ``interval``) or empty.
    A usable suggestion centres the ladder on it (the finder's interval is only a prior: on
    kinds it was not calibrated on it is often 4x off, so the ladder spans about
    ``(n - 1) / 2`` half-decades on each side). Without one (``noisy``, ``flat``, no sweep)
    the ladder spans :data:`NO_PRIOR_SPAN` evenly for any ``n``: Adam from the calibrated
    default up (conservative on small models), SGD from a half decade below it (rarely too
    high at batch 64). The reason says which.

    >>> first_round({"verdict": "noisy"}, "adam", 3).value
    [0.001, 0.005623, 0.03162]
    """
    verdict = prior.get("verdict")
    sugg = prior_lr(prior)
    if sugg is not None:
        lrs = ladder(sugg, n)
        why = f"half-decade ladder centred on the finder's suggestion {sugg:.3g}"
    else:
        base = DEFAULT_LR[family]
        low = base if family == "adam" else base / LADDER_STEP
        lrs = [float(f"{low * NO_PRIOR_SPAN ** (i / max(n - 1, 1)):.4g}") for i in range(n)]
        why = (
            f"finder gave no usable suggestion (verdict {verdict!r}); {n} LRs from "
            f"{lrs[0]:.3g} to {lrs[-1]:.3g} around the calibrated default {base:g}"
        )
    sweeps = describe_sweeps(prior)  # lrpilot.autopilot._prior.combine_sweeps
    if sweeps:
        how = "the median" if sugg is not None else "the first gave none: no prior"
        why += f" ({sweeps}; {how})"
    return Decision("round1_candidates", lrs, why, {"prior": dict(prior), "family": family})


def second_round(round1: Sequence[Probe], peak: Decision) -> Decision:
    """The second round's candidates around the first round's pick: a quarter decade on
    each side; at an edge of the first ladder (its best was the largest or smallest LR and
    the next step was not a failure) the ladder is extended one half-decade past the edge
    instead, keeping the pick.

    >>> from lrpilot.autopilot._decide import choose_peak
    >>> r = [Probe("a", 0.01, 1.0), Probe("b", 0.03, 0.9)]
    >>> second_round(r, choose_peak(r)).value
    [0.03, 0.05335, 0.09487]
    """
    lrs = sorted({p.lr for p in round1})
    pick = peak.value
    if pick is None:
        return Decision("round2_candidates", [], "no first-round pick", {})
    failed_above = any(not p.ok and p.lr > pick for p in round1)
    failed_below = any(not p.ok and p.lr < pick for p in round1)
    if pick >= lrs[-1] and not failed_above and len(lrs) > 1:
        out = [pick, pick * REFINE_STEP, pick * LADDER_STEP]
        why = "the pick is the largest LR tried: extend the ladder upwards"
    elif pick <= lrs[0] and not failed_below and len(lrs) > 1 and all(p.ok for p in round1):
        out = [pick / LADDER_STEP, pick / REFINE_STEP, pick]
        why = "the pick is the smallest LR tried: extend the ladder downwards"
    else:
        out = [pick / REFINE_STEP, pick, pick * REFINE_STEP]
        why = "a quarter decade on each side of the pick"
    out = [float(f"{v:.4g}") for v in out]
    return Decision("round2_candidates", out, why, {"round1_pick": pick})
