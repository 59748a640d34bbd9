"""The autopilot's decisions: pure functions of recorded probe results.

Nothing here trains, plots or touches a file. Each function takes what the probes measured
(:class:`Probe` records, as stored in ``autopilot.json``) and returns a :class:`Decision`
holding the value, the evidence it was judged on and the reason in words, so every choice
can be re-derived from the run directory.

The method (``lrpilot.autopilot`` module doc has the whole procedure): candidates branch
from one shared snapshot, train ``hold`` steps at their LR, then take a short linear
cooldown to 0 and are scored by the mean loss on a *decision split* held out of the
training data (never the validation set a benchmark reports). Comparing after a cooldown
rather than on the raw loss removes most of the short-horizon bias towards small LRs
("rankings ... flip during training due to learning rate decay", arXiv 2509.02046);
the rest is handled by :func:`choose_peak`'s tie rule: among candidates whose paired loss
difference to the best is within ``z`` standard errors (the same samples score every
candidate, so the difference is paired), the largest LR wins.

>>> a = Probe("r1-0", lr=0.01, score=0.80, losses=(0.7, 0.9, 0.8, 0.8))
>>> b = Probe("r1-1", lr=0.03, score=0.79, losses=(0.69, 0.88, 0.79, 0.80))
>>> c = Probe("r1-2", lr=0.1, score=float("nan"), diverged=True)
>>> d = choose_peak([a, b, c])
>>> d.value, d.evidence["best"], d.evidence["diverged"]
(0.03, 'r1-1', ['r1-2'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: paired standard errors within which two candidates count as tied (:func:`choose_peak`)
TIE_Z = 1.0
#: the progress tie tried and rejected (``bench/results/autopilot_research.md``): a
#: candidate that made at least ``1 - PROGRESS_TIE`` of the best candidate's progress from
#: the start ties with it. Replayed on the recorded probes of the three calibration rows it
#: looked best at 0.5-0.7; trained, it lost 8-23 points on two of three mnist1d-cnn seeds
#: and picked 0.37 on the language model (loss 2.55, against 1.7-1.8 near 0.03), so
#: :func:`choose_peak` does not use it unless asked (``progress=PROGRESS_TIE``)
PROGRESS_TIE = 0.5
#: the finder's prior is left for a SMALLER candidate only when the prior's decision-split
#: loss exceeds that candidate's by more than this fraction (:func:`anchored_peak`).
#: Replayed on the recorded first rounds of the three calibration rows with probes
#: (``bench/autopilot_rule_research.py``), every value from 0.25 to 1.0 gives the same
#: picks (mnist1d-cnn/SGD: the finder's 0.17-0.25 kept, 93.8% interpolated, against 88.9%
#: for the unanchored rule); 0.5 is the middle of that plateau
DOWN_GAP = 0.5
#: how much larger the probes' lowest-loss LR is than the best one-cycle peak (probes held
#: at one-cycle's level, :func:`blend_peak`): a quarter decade. On the a3 probes of the
#: calibration rows the lowest-loss LR sat 1.5-3x above the one-cycle grid's best on
#: 6 of 7 rows (digits-cnn/SGD: 0.8x)
PROBE_BIAS = 10**0.25
#: the bias by optimizer family (:func:`probe_bias`): half a decade for Adam. The best peak
#: of a long Adam run moves further below the short horizon's best than SGD's does
#: (Bjorck et al. 2024, "Scaling Optimal LR Across Token Horizons"). With a quarter
#: decade, auto's Adam picks sat 2-3x above a half-decade grid's best on the held-out
#: kinds of ``bench/autopilot_settings.py`` (a transformer classifier, an LSTM LM,
#: tiny-lm); with half a decade the panel's Adam rows moved by -0.3 to +0.01 (inside
#: their seed noise) and settings L, N, E by +6.0 points, -3.4% and -2.5% of the loss
FAMILY_PROBE_BIAS = {"sgd": PROBE_BIAS, "adam": 10**0.5}
#: a candidate "learned" when its score is at least this fraction below the start's
#: (:func:`learned`; the divergence guard's stall rule uses the same 1%)
STALL_MARGIN = 0.01
#: one ladder step of the first round (a half decade: 10 ** 0.5)
LADDER_STEP = 10**0.5
#: the refinement step of the second round (a quarter decade)
REFINE_STEP = 10**0.25
#: the calibrated defaults the autopilot falls back to (AlgoPerf's "one good default")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
#: the first round's range without a finder suggestion: the 4-step half-decade ladder's
#: (fewer candidates make it coarser, not shorter: 3 once spanned 1e-3 to 1e-2 for Adam, and
#: a GRU whose optimum was 0.1 learned at none of them)
NO_PRIOR_SPAN = 10**1.5


@dataclass(frozen=True)
class Probe:
    """One candidate's measurement.

    ``score``: mean loss on the decision split after the cooldown (nan when the branch
    diverged or the loss is not finite); ``losses``: the per-sample losses behind it (for
    the paired comparison); ``samples``: forward+backward samples the branch spent (hold
    and cooldown); ``kept``: steps of it that the final run continues from (the winner's
    hold), the rest is discarded compute.
    """

    name: str
    lr: float
    score: float
    losses: tuple[float, ...] = ()
    round: int = 1
    start_step: int = 0
    hold: int = 0
    cooldown: int = 0
    samples: int = 0
    diverged: bool = False
    accuracy: float | None = None
    train_loss: float | None = None

    @property
    def ok(self) -> bool:
        return not self.diverged and math.isfinite(self.score)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["losses"] = [v if math.isfinite(v) else None for v in self.losses]
        out["score"] = None if not math.isfinite(self.score) else self.score
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Probe:
        kw = dict(d)
        kw["score"] = math.nan if kw.get("score") is None else float(kw["score"])
        kw["losses"] = tuple(math.nan if v is None else float(v) for v in kw.get("losses", ()))
        return cls(**kw)


@dataclass(frozen=True)
class Decision:
    """A choice, what it was judged on, and why."""

    name: str
    value: Any
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "reason": self.reason,
            "evidence": self.evidence,
        }


def paired_gap(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of ``a[i] - b[i]`` over the finite pairs.

    >>> paired_gap([1.0, 2.0, 3.0], [0.5, 1.5, 2.0])
    (0.6666666666666666, 0.16666666666666666)
    >>> paired_gap([1.0], [float("nan")])
    (nan, nan)
    """
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if math.isfinite(x) and math.isfinite(y)]
    n = len(pairs)
    if n == 0:
        return math.nan, math.nan
    diffs = [x - y for x, y in pairs]
    mean = sum(diffs) / n
    if n < 2:
        return mean, math.nan
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n)


def _no_usable_probe(probes: Sequence[Probe], fallback: float | None) -> tuple[float | None, str]:
    """``choose_peak``'s value and reason when no probe is usable."""
    if fallback is not None:
        return fallback, f"no usable probe ({len(probes)} tried); the fallback"
    if probes:
        smallest = min(p.lr for p in probes)
        return smallest / LADDER_STEP, (
            f"all {len(probes)} candidates diverged or gave no finite loss; one ladder "
            f"step below the smallest ({smallest:.3g})"
        )
    return None, "no probe was run"


def _tied(
    gap: float,
    se: float,
    best_score: float,
    *,
    z: float,
    tolerance: float,
    progress: float | None,
    initial: float | None,
) -> bool:
    """Whether a candidate ``gap`` above the best score ties with it (``choose_peak``)."""
    made = (initial - best_score) if initial is not None else math.nan
    if gap <= tolerance * abs(best_score):
        return True
    if progress is not None and math.isfinite(made) and made > 0 and gap <= progress * made:
        return True
    return gap <= z * se if math.isfinite(se) else gap <= 0.0


def choose_peak(
    probes: Sequence[Probe],
    *,
    z: float = TIE_Z,
    tolerance: float = 0.0,
    progress: float | None = None,
    initial: float | None = None,
    fallback: float | None = None,
    name: str = "peak_lr",
) -> Decision:
    """The peak LR: the lowest cooldown score; among the candidates tied with it (paired
    gap below ``z`` standard errors, or equal scores when no per-sample losses were kept,
    or a gap of at most ``tolerance`` times the best score, or of at most ``progress``
    times the best candidate's progress ``initial - best score`` from the decision-split
    loss ``initial`` at the start) the largest LR.

    No usable probe (every one diverged, non-finite or none run): ``fallback`` when given,
    else the smallest LR tried divided by one ladder step (below every failure), else
    ``None``; the reason says which.
    """
    ok = [p for p in probes if p.ok]
    bad = [p.name for p in probes if not p.ok]
    table = {p.name: {"lr": p.lr, "score": p.score if p.ok else None} for p in probes}
    if not ok:
        value, why = _no_usable_probe(probes, fallback)
        return Decision(name, value, why, {"candidates": table, "diverged": bad})
    best = min(ok, key=lambda p: (p.score, -p.lr))
    tied = []
    gaps = {}
    for p in ok:
        if p is best:
            continue
        gap, se = paired_gap(p.losses, best.losses)
        if not math.isfinite(gap):
            gap, se = p.score - best.score, math.nan
        gaps[p.name] = {"gap": gap, "se": se}
        within = _tied(
            gap, se, best.score, z=z, tolerance=tolerance, progress=progress, initial=initial
        )
        if within:
            tied.append(p)
    chosen = max([best, *tied], key=lambda p: p.lr)
    if chosen is best:
        reason = f"lowest decision-split loss after cooldown ({best.score:.4g})"
    else:
        reason = (
            f"tied with the lowest loss ({best.score:.4g} at {best.lr:.3g}): within "
            f"{z:g} paired standard error(s)"
            + (
                f" or at least {1 - progress:.0%} of its progress from {initial:.4g}"
                if progress is not None and initial is not None
                else ""
            )
            + "; the largest tied LR is taken (short probes favour small LRs)"
        )
    evidence = {
        "initial": initial,
        "progress_tie": progress,
        "candidates": table,
        "best": best.name,
        "chosen": chosen.name,
        "tied": [p.name for p in tied],
        "gaps": gaps,
        "diverged": bad,
    }
    return Decision(name, chosen.lr, reason, evidence)


def anchored_peak(
    probes: Sequence[Probe],
    anchor: float | None,
    *,
    z: float = TIE_Z,
    down_gap: float = DOWN_GAP,
    initial: float | None = None,
    name: str = "peak_lr",
) -> Decision:
    """The peak LR with the finder's suggestion ``anchor`` as the prior: the probes can only
    lower it, and only on decisive evidence.

    With ``a`` the anchor's own probe and "decisively worse" :func:`decisively_worse`
    (a gap above ``down_gap`` of the better one's progress from ``initial``; without
    ``initial``, a loss ratio above ``1 + down_gap``):

    1. a smaller candidate ``b`` such that ``a`` is decisively worse than ``b`` (e.g. at
       chance level): the best such ``b``;
    2. else, when the next larger candidate failed (diverged, or decisively worse than
       ``a``: the prior sits within one ladder step of the instability), a margin:
       ``anchor / 10 ** 0.25`` (the run continues from ``a``'s snapshot);
    3. else the anchor. A larger LR is never taken: probes held at one-cycle's level
       favour the larger LRs (method a3 moved up on 7 of 12 calibration runs and lost
       3-20 points on each row where it did; ``bench/results/autopilot_research.md``).

    Without an anchor, or when the anchor's probe failed or is not among ``probes``, the
    decision is :func:`choose_peak`'s (lowest score, paired-SE ties to the larger LR),
    except when no candidate learned (:func:`learned`; ``initial``: the decision-split loss
    at the start): then their ranking is noise, and the largest LR that did not diverge is
    taken (the ladder without a prior goes up from a conservative default).

    >>> a = Probe("lo", 0.01, 1.0, losses=(1.0, 1.1, 0.9))
    >>> b = Probe("mid", 0.03, 1.2, losses=(1.2, 1.3, 1.1))
    >>> c = Probe("hi", 0.1, 0.9, losses=(0.8, 1.0, 0.9))
    >>> anchored_peak([a, b, c], 0.03).value  # 20% worse than 0.01: not decisive
    0.03
    >>> anchored_peak([a, b, c], 0.03, down_gap=0.1).value
    0.01
    >>> anchored_peak([a, b, Probe("hi", 0.1, 2.3)], 0.03).value  # 0.1 at chance: margin
    0.01687
    >>> lo, mid = Probe("lo", 0.01, 0.08), Probe("mid", 0.03, 0.124)  # near the floor:
    >>> anchored_peak([lo, mid], 0.03).value, anchored_peak([lo, mid], 0.03, initial=2.3).value
    (0.01, 0.03)
    """
    free = choose_peak(probes, z=z, name=name)
    ok = [p for p in probes if p.ok]
    own = None
    if anchor is not None and math.isfinite(anchor):
        own = next((p for p in ok if math.isclose(p.lr, anchor, rel_tol=1e-3)), None)
    if own is None or free.value is None:
        why = "no usable probe at the prior" if anchor is not None else "no prior"
        ev = {**free.evidence, "anchor": anchor, "free_pick": free.value}
        if ok and not any(learned(p, initial) for p in ok):
            top = max(ok, key=lambda p: p.lr)
            why += (
                f"; no candidate learned (every loss within {STALL_MARGIN:.0%} of the start, "
                f"{initial:.4g}): the largest that did not diverge"
            )
            return Decision(name, top.lr, why, {**ev, "no_progress": True})
        return Decision(name, free.value, f"{free.reason} ({why})", ev)
    ev = {**free.evidence, "anchor": own.lr, "free_pick": free.value, "down_gap": down_gap}
    lower = [p for p in ok if p.lr < own.lr and decisively_worse(own, p, down_gap, initial)]
    if lower:
        best = min(lower, key=lambda p: (p.score, -p.lr))
        why = (
            f"the prior {own.lr:.3g} is decisively worse ({own.score:.4g} against "
            f"{best.score:.4g} at {best.lr:.3g}; {_worse_test(down_gap, initial, best)}): move down"
        )
        return Decision(name, best.lr, why, ev)
    above = [p for p in probes if p.lr > own.lr]
    nxt = min(above, key=lambda p: p.lr) if above else None
    if nxt is not None and (not nxt.ok or decisively_worse(nxt, own, down_gap, initial)):
        value = float(f"{own.lr / REFINE_STEP:.4g}")
        what = (
            "diverged"
            if not nxt.ok
            else f"scored {nxt.score:.4g} against {own.score:.4g} "
            f"({_worse_test(down_gap, initial, own)})"
        )
        why = (
            f"the next LR above the prior, {nxt.lr:.3g}, {what}: a quarter-decade margin "
            f"below the prior {own.lr:.3g}"
        )
        return Decision(name, value, why, {**ev, "margin": nxt.name, "continue_from": own.name})
    why = (
        f"the prior {own.lr:.3g} is kept (no smaller LR is decisively better: "
        f"{_worse_test(down_gap, initial)}; larger LRs are never taken, short probes at "
        "one-cycle's level favour them)"
    )
    return Decision(name, own.lr, why, ev)


def decisively_worse(worse: Probe, better: Probe, down_gap: float, initial: float | None) -> bool:
    """Whether ``worse`` lost more than ``down_gap`` of the progress ``better`` made from
    the decision-split loss at the start: ``worse - better > down_gap x (initial -
    better)``. Unlike a ratio of losses this does not grow as the losses near their floor
    (on digits a loss of 0.12 against 0.08 is a ratio of 1.5 but 2% of the progress from
    2.3). Without a start that ``better`` improved on (``initial`` None or not above it),
    the ratio: ``worse > (1 + down_gap) x better``.

    >>> decisively_worse(Probe("a", 0.1, 0.124), Probe("b", 0.03, 0.078), 0.5, 2.3)
    False
    >>> decisively_worse(Probe("a", 0.1, 2.0), Probe("b", 0.03, 0.36), 0.5, 2.3)
    True
    >>> decisively_worse(Probe("a", 0.1, 0.124), Probe("b", 0.03, 0.078), 0.5, None)
    True
    """
    if initial is None or not math.isfinite(initial) or initial <= better.score:
        return worse.score > (1 + down_gap) * better.score
    return worse.score - better.score > down_gap * (initial - better.score)


def _worse_test(down_gap: float, initial: float | None, better: Probe | None = None) -> str:
    """The words for :func:`decisively_worse`'s test (of ``better`` against another, when
    given: the ratio when ``initial`` is not above its score)."""
    if (
        initial is None
        or not math.isfinite(initial)
        or (better is not None and initial <= better.score)
    ):
        return f"decisive: a loss ratio above {1 + down_gap:g}"
    return f"decisive: a gap above {down_gap:g} of the progress from {initial:.4g}"


def blend_peak(
    anchored: Decision, probes: Sequence[Probe], *, bias: float = PROBE_BIAS, name: str = "peak_lr"
) -> Decision:
    """The peak: the geometric mean of the prior's decision (:func:`anchored_peak`) and the
    probes' own estimate, their lowest-loss LR divided by ``bias`` (probes held at
    one-cycle's level favour LRs above the best one-cycle peak: a quarter decade by
    default, :func:`probe_bias` per optimizer family):
    ``sqrt(anchored x lowest / bias)``. Two noisy estimates with different errors (the
    finder's suggestion varies 3x between seeds; the probes' pick by a ladder step) are
    averaged in log LR. The run continues from the usable probe nearest to the peak in
    log LR (``continue_from``). Without an anchored decision (no prior, no usable probe at
    it) the decision is returned as it is.

    >>> a = Probe("lo", 0.01, 1.0)
    >>> b = Probe("mid", 0.03, 0.9)
    >>> c = Probe("hi", 0.1, 0.8)
    >>> d = blend_peak(anchored_peak([a, b, c], 0.03), [a, b, c])
    >>> d.value, d.evidence["probe_estimate"], d.evidence["continue_from"]
    (0.04107, 0.05623413251903491, 'mid')
    """
    ok = [p for p in probes if p.ok]
    if "down_gap" not in anchored.evidence or anchored.value is None or not ok:
        return Decision(name, anchored.value, anchored.reason, anchored.evidence)
    lowest = min(ok, key=lambda p: (p.score, -p.lr))
    est = lowest.lr / bias
    value = float(f"{math.sqrt(anchored.value * est):.4g}")
    near = min(ok, key=lambda p: (abs(math.log(p.lr / value)), p.lr))
    evidence = {
        **anchored.evidence,
        "anchored": anchored.value,
        "lowest": lowest.name,
        "probe_estimate": est,
        "bias": bias,
        "continue_from": near.name,
    }
    held = (
        f"/ {bias:.3g}: the probe bias, lrpilot.autopilot._decide.probe_bias"
        if bias != 1
        else "probes held at the peak itself: no bias"
    )
    why = (
        f"geometric mean of the prior's decision {anchored.value:.3g} and the probes' "
        f"estimate {est:.3g} (lowest loss at {lowest.lr:.3g}, {held}); continues from "
        f"{near.name} ({near.lr:.3g})"
    )
    return Decision(name, value, why, evidence)


def probe_bias(family: str, held_at_peak: bool = False) -> float:
    """:func:`blend_peak`'s ``bias`` for an optimizer family (:data:`FAMILY_PROBE_BIAS`).

    The family's bias has two parts. A quarter decade (:data:`PROBE_BIAS`) corrects
    probes held *below* the peak (one-cycle's level at the decision point), which favour
    larger peaks; Adam's other quarter decade is the horizon's (its long-run optimum
    falls further below the short probes' best). Probes held at the peak itself
    (``held_at_peak``: warmup-stable-decay, warmup+cosine) compare peaks directly, so only
    the horizon's part applies: 1 for SGD, a quarter decade for Adam. Measured:
    ``bench/autopilot_shapes.py``.

    >>> round(probe_bias("sgd"), 3), round(probe_bias("adam"), 3)
    (1.778, 3.162)
    >>> probe_bias("sgd", held_at_peak=True), round(probe_bias("adam", held_at_peak=True), 3)
    (1.0, 1.778)
    """
    bias = FAMILY_PROBE_BIAS[family]
    return bias / PROBE_BIAS if held_at_peak else bias


def learned(probe: Probe, initial: float | None) -> bool:
    """Whether ``probe`` ended clearly below the decision-split loss at the start:
    ``score < initial - STALL_MARGIN x |initial|`` (the guard's stall margin). Unknown
    ``initial``: ``True`` (nothing to compare with).

    >>> learned(Probe("a", 0.01, 2.31), 2.3026), learned(Probe("b", 0.03, 1.95), 2.3026)
    (False, True)
    """
    if initial is None or not math.isfinite(initial):
        return True
    return probe.ok and probe.score < initial - STALL_MARGIN * abs(initial)


def prior_lr(prior: Mapping[str, Any]) -> float | None:
    """The finder's suggestion when its verdict is ``ok`` (else ``None``)."""
    sugg = prior.get("suggestion")
    if prior.get("verdict") == "ok" and isinstance(sugg, (int, float)) and math.isfinite(sugg):
        return float(sugg) if sugg > 0 else None
    return None
