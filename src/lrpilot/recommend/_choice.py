"""Which optimizer's LR sweep looks better: a pure function of two recorded sweeps.

Both sweeps start from the same initial weights and see the same mini-batches in the same
order (``lrpilot.recommend._measure`` runs them so); only the optimizer differs. Each is
analysed by :func:`lrpilot.finder.decision.analyze_curve` (centred smoothing, robust noise
``sigma`` in the units analysed, ``ln(loss)`` when every loss is positive). Then:

1. A sweep is **usable** when its verdict is ``"ok"`` or ``"never diverged"`` (the loss
   fell clearly above its noise). One usable sweep wins over an unusable one; two unusable
   sweeps are a tie.
2. Two usable sweeps are compared by the **lowest smoothed loss** they reached, on the
   scale analysed (``ln(loss)`` when both are on the log scale, else the loss). The lower
   one wins when the two minima differ by more than ``TIE_SIGMAS * sqrt(sigma_a^2 +
   sigma_b^2)``; otherwise it is a tie.

A tie returns ``None`` (the caller keeps its default). The lowest loss reached over an
exponential LR sweep of equal length, from equal starting points, is how far each optimizer
got with the same data and the same number of steps over its whole usable LR range; it is
not the loss after a tuned run, which is why ``bench/optimizer_choice.py`` measures how
often it agrees with the grid-search oracles.

>>> import math
>>> lrs = [10 ** (-5 + 0.1 * i) for i in range(50)]
>>> def curve(depth):  # falls to 2 - depth around lr=1e-2, blows up past lr=1
...     return [2.0 - depth / (1 + math.exp(-4 * (math.log10(lr) + 2))) + max(0, 30 * (lr - 1))
...             for lr in lrs]
>>> r = better_sweep({"sgd": (lrs, curve(0.5), 2.0), "adamw": (lrs, curve(1.2), 2.0)})
>>> r.pick, r.scores["adamw"] < r.scores["sgd"]
('adamw', True)
>>> better_sweep({"sgd": (lrs, curve(0.5), 2.0), "adamw": (lrs, curve(0.5), 2.0)}).pick is None
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lrpilot.errors import ConfigError

USABLE = ("ok", "never diverged")
TIE_SIGMAS = 1.0

Sweep = tuple[Sequence[float], Sequence[float], float]  # (lrs, losses, initial_loss)


@dataclass(frozen=True)
class SweepComparison:
    """``pick``: the better sweep's name or ``None`` (tie); ``scores``: each sweep's lowest
    smoothed loss on the compared scale (``nan`` when unusable); ``verdicts``; ``reason``."""

    pick: str | None
    scores: dict[str, float]
    verdicts: dict[str, str]
    margin: float
    scale: str
    reason: str


def _summary(sweep: Sweep) -> tuple[str, float, float, str]:
    """``(verdict, lowest smoothed loss, noise, scale)`` of one recorded sweep."""
    from lrpilot.finder.decision import analyze_curve

    lrs, losses, initial = sweep
    a = analyze_curve(list(lrs), [float(v) for v in losses], float(initial))
    finite = [s for s in a.smoothed if math.isfinite(s)]
    low = min(finite) if finite else math.nan
    return a.verdict, low, a.noise, a.scale


def better_sweep(sweeps: Mapping[str, Sweep]) -> SweepComparison:
    """Compare exactly two recorded sweeps by the rule in the module docstring."""
    if len(sweeps) != 2:
        raise ConfigError(f"better_sweep compares 2 sweeps, got {len(sweeps)}")
    (na, a), (nb, b) = sweeps.items()
    va, low_a, sa, scale_a = _summary(a)
    vb, low_b, sb, scale_b = _summary(b)
    verdicts = {na: va, nb: vb}
    ua, ub = va in USABLE, vb in USABLE
    log = scale_a == scale_b == "log" and low_a > 0 and low_b > 0
    scale = "log" if log else "linear"
    if not log:  # noise was measured on ln(loss) for one of them: compare losses
        sa = sb = 0.0
    ya = math.log(low_a) if log else low_a
    yb = math.log(low_b) if log else low_b
    scores = {na: ya if ua else math.nan, nb: yb if ub else math.nan}
    margin = TIE_SIGMAS * math.hypot(sa, sb)
    if ua != ub:
        pick = na if ua else nb
        other = nb if ua else na
        reason = f"only {pick}'s sweep is usable ({other}: {verdicts[other]!r})"
        return SweepComparison(pick, scores, verdicts, margin, scale, reason)
    if not ua:
        reason = f"neither sweep is usable ({na}: {va!r}, {nb}: {vb!r})"
        return SweepComparison(None, scores, verdicts, margin, scale, reason)
    what = "ln(loss)" if log else "loss"
    text = f"lowest smoothed {what}: {na} {ya:.4g}, {nb} {yb:.4g} (tie margin {margin:.3g})"
    if abs(ya - yb) <= margin or not (math.isfinite(ya) and math.isfinite(yb)):
        return SweepComparison(None, scores, verdicts, margin, scale, "tie: " + text)
    pick = na if ya < yb else nb
    return SweepComparison(pick, scores, verdicts, margin, scale, f"{pick} reached lower: {text}")
