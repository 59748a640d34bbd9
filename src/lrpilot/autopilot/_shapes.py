"""The autopilot's schedules, as ``lrpilot fit`` schedule configs (``join`` of pieces).

A trajectory is a list of segments ``(steps, piece)`` on the global step counter; each
piece is a schedule config on its own local time (``linear``, ``constant``, ``cosine``).
Everything is plain data (it goes into ``autopilot.json`` and a fit config) and turns into
a ``step -> lr`` function with :func:`lrpilot.schedules.from_config`.

>>> segs = trunk(0.01, 10) + hold(0.01, 0.03, 20, ramp=5)
>>> s = to_schedule(segs)
>>> s(0), s(10), s(15), s(29)
(0.0, 0.01, 0.03, 0.03)
>>> to_schedule(segs + cooldown(0.03, 4))(33)
0.0075
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpilot.autopilot._decide import Decision

Segment = tuple[int, dict[str, Any]]

#: the schedule shapes the autopilot can choose after its decision point
SHAPES = ("one_cycle", "cosine", "wsd")
#: where one-cycle's peak ends and wsd's decay begins, as fractions of the run
ONE_CYCLE_PEAK = 0.3
WSD_DECAY = 0.2


def _linear(a: float, b: float, steps: int) -> dict[str, Any]:
    return {"name": "linear", "start_lr": a, "end_lr": b, "steps": steps}


def trunk(lr: float, warmup: int) -> list[Segment]:
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps (step 0 has LR 0)."""
    return [(warmup, _linear(0.0, lr, warmup))] if warmup > 0 else []


def hold(start: float, lr: float, steps: int, ramp: int) -> list[Segment]:
    """``steps`` steps at ``lr``, the first ``ramp`` of them a linear ramp from ``start``."""
    ramp = min(ramp, steps) if start != lr else 0
    out: list[Segment] = []
    if ramp > 0:
        out.append((ramp, _linear(start, lr, ramp)))
    if steps - ramp > 0:
        out.append((steps - ramp, {"name": "constant", "lr": lr}))
    return out


def cooldown(lr: float, steps: int) -> list[Segment]:
    """A linear decay from ``lr`` to 0 over ``steps`` steps (a probe's cooldown)."""
    return [(steps, _linear(lr, 0.0, steps))] if steps > 0 else []


def cycle_level(at: int, total: int, start: float = 1 / 25) -> float:
    """One-cycle's LR at step ``at`` as a fraction of its peak (PyTorch's ``OneCycleLR``:
    from ``start`` x peak, a cosine ramp to the peak at ``ONE_CYCLE_PEAK`` of the run):
    ``start + (1 - start) (1 - cos(pi t / ONE_CYCLE_PEAK)) / 2`` with ``t = at / total``,
    1 from the peak on. The autopilot's probes hold at this fraction of their candidate
    peak when the run will end as a one-cycle, so the trajectory is one-cycle-like.

    >>> cycle_level(0, 100), cycle_level(15, 100), cycle_level(40, 100)
    (0.04, 0.52, 1.0)
    """
    import math

    t = at / max(total, 1)
    if t >= ONE_CYCLE_PEAK:
        return 1.0
    return round(start + (1 - start) * (1 - math.cos(math.pi * t / ONE_CYCLE_PEAK)) / 2, 6)


def final(lr: float, shape: str, at: int, total: int, start: float | None = None) -> list[Segment]:
    """The rest of the run from step ``at`` to ``total`` for ``shape``:

    * ``one_cycle``: from ``start`` (default ``lr``) a linear ramp to ``lr`` at
      ``ONE_CYCLE_PEAK`` of the run (a flat top when ``start == lr``), then cosine to 0;
    * ``cosine``: cosine from ``lr`` to 0;
    * ``wsd``: hold ``lr`` to ``1 - WSD_DECAY`` of the run, then linear to 0.

    >>> [n for n, _ in final(0.1, "wsd", 20, 100)]
    [60, 20]
    """
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not valid; allowed: {', '.join(SHAPES)}")
    rest = total - at
    if rest <= 0:
        return []
    if shape == "cosine":
        return [(rest, {"name": "cosine", "lr": lr, "steps": rest})]
    if shape == "one_cycle":
        flat = max(0, min(rest - 1, round(ONE_CYCLE_PEAK * total) - at))
        tail = [(rest - flat, {"name": "cosine", "lr": lr, "steps": rest - flat})]
        if flat > 0 and start is not None and start != lr:
            return [(flat, _linear(start, lr, flat)), *tail]
    else:
        flat = max(0, min(rest - 1, total - round(WSD_DECAY * total) - at))
        tail = [(rest - flat, _linear(lr, 0.0, rest - flat))]
    return ([(flat, {"name": "constant", "lr": lr})] if flat > 0 else []) + tail


#: one-cycle's momentum (SGD's ``momentum``, Adam's ``beta1``): from the high value down to
#: the low one where the LR peaks, back up by the end (PyTorch's ``OneCycleLR`` defaults)
MOMENTUM_LOW, MOMENTUM_HIGH = 0.85, 0.95


def cycle_momentum(total: int) -> dict[str, Any]:
    """One-cycle's momentum over a run of ``total`` steps, as a schedule config: cosine from
    ``MOMENTUM_HIGH`` to ``MOMENTUM_LOW`` where the LR peaks (``ONE_CYCLE_PEAK`` of the
    run), then cosine back up by the end (Smith 2018, "A disciplined approach to neural
    network hyper-parameters": a high LR with a low momentum, and the reverse; PyTorch's
    ``OneCycleLR`` with ``cycle_momentum``).

    >>> from lrpilot.schedules import from_config
    >>> m = from_config(cycle_momentum(100))
    >>> m(0), m(30), m(99) > 0.949
    (0.95, 0.85, True)
    """
    peak = max(1, min(total - 1, round(ONE_CYCLE_PEAK * total)))
    down = {"name": "cosine", "lr": MOMENTUM_HIGH, "final_lr": MOMENTUM_LOW, "steps": peak}
    up = {"name": "cosine", "lr": MOMENTUM_LOW, "final_lr": MOMENTUM_HIGH}
    up["steps"] = max(1, total - peak)
    return {"name": "join", "schedules": [down, up], "boundaries": [peak]}


def to_config(segments: Sequence[Segment]) -> dict[str, Any]:
    """The ``join`` config of ``segments`` (a single segment is returned as it is; the last
    segment runs on past its length, holding its final value)."""
    segs = [(n, piece) for n, piece in segments if n > 0]
    if not segs:
        raise ValueError("a schedule needs at least one segment of at least one step")
    if len(segs) == 1:
        return dict(segs[0][1])
    bounds, at = [], 0
    for n, _ in segs[:-1]:
        at += n
        bounds.append(at)
    return {"name": "join", "schedules": [dict(p) for _, p in segs], "boundaries": bounds}


def to_schedule(segments: Sequence[Segment]):  # type: ignore[no-untyped-def]
    """The ``step -> lr`` function of ``segments``."""
    from lrpilot.schedules import from_config

    return from_config(to_config(segments))


def length(segments: Sequence[Segment]) -> int:
    """Steps covered by ``segments``."""
    return sum(n for n, _ in segments)


def choose_shape(total_steps: int, decided_at: int, user: str | None = None) -> Decision:
    """The schedule after the decision point: ``wsd`` holds the peak and decays linearly
    over the last 20% of the run, ``cosine`` decays from the decision point to 0,
    ``one_cycle`` ramps to the peak at 30% of the run (from one-cycle's level at the
    decision point, where the probes held) and decays as a cosine to 0.

    Rule (not a probe: the shapes only differ after the decision, which is the part the
    budget cannot afford to try twice): ``one_cycle`` when the decision point is at most
    30% of the run (the tuned grids of ``bench/results/finder_quality_runs.json`` put
    one-cycle at or above warmup+cosine in 7 of 10 task/optimizer pairs), ``cosine``
    otherwise; a schedule the user fixed is kept. ``wsd`` as the rule's choice was
    measured and not adopted (``bench/autopilot_shapes.py``; research notes, sixteenth
    session): higher on 6 of 10 panel tasks over ten seeds, but a GRU run aborted late in
    its stable phase and all three language-model measurements ended 2.7-6.5% worse in loss.

    >>> choose_shape(1000, 200).value, choose_shape(1000, 400).value
    ('one_cycle', 'cosine')
    """
    frac = decided_at / max(total_steps, 1)
    if user is not None:
        return Decision("schedule", user, "fixed by the user", {"decided_at": frac})
    if frac <= 0.3:
        return Decision(
            "schedule",
            "one_cycle",
            f"decision at {frac:.0%} of the run: ramp to the peak at 30%, then a "
            "cosine decay (one-cycle shape)",
            {"decided_at": frac},
        )
    return Decision(
        "schedule",
        "cosine",
        f"decision at {frac:.0%} of the run (past one-cycle's 30% peak): cosine decay from there",
        {"decided_at": frac},
    )
