"""How the autopilot spends its budget: a pure function of the run's sizes.

The run (on the training data minus the decision split until its decisions are made) is::

    trunk warmup (w)  | round 1: n1 branches x (hold r1 + cooldown m1) | [round 2: n2 x (r2 + m2)] | rest
    shared, once      | the winner's hold is kept                       | [winner's hold kept]      | final schedule

so the samples beyond one trajectory are the discarded holds and every cooldown:
``extra = (n1 - 1) r1 + n1 m1 + (n2 - 1) r2 + n2 m2`` steps (``n2 = 0`` today: one round).
The decision split is needed only until the last decision: from the first epoch boundary
at or after it (``switch_epoch``) the run trains on the whole training set, so the
trajectory is ``switch_epoch`` epochs of the rest and ``epochs - switch_epoch`` epochs of
all the data (``total_steps`` counts both). The plan is the first of :data:`OPTIONS` (most
candidates and longest probes first) whose total, with the finder's sweep, fits
``(budget - RESCUE_RESERVE) x epochs x training-set size`` samples; without any, a run
with no probe at all on all the data (the prior's value, said so in the decisions). What
the plan leaves of the budget, its rescue reserve included, buys more finder sweeps
(:func:`with_sweeps`), never shorter holds.

>>> p = make_plan(n_full=4000, n_fit=3800, batch=64, epochs=15, budget=1.3, finder_samples=2000)
>>> (p.n1, p.hold1, p.cool1, p.n2, p.warmup, p.switch_epoch, p.total_steps)
(4, 45, 15, 0, 45, 2, 939)
>>> round(p.expected_multiple, 3)
1.232
>>> p = make_plan(4000, 3800, 64, 15, 1.3, 2000, candidates=3)  # around a finder suggestion
>>> (p.n1, p.hold1, p.cool1, p.switch_epoch, p.total_steps), round(p.expected_multiple, 3)
((3, 63, 21, 2, 939), 1.226)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from lrpilot.errors import ConfigError

#: (first-round candidates, hold as a fraction of the run), in order of preference: one
#: round of longer holds (the short-horizon bias falls with the horizon; the a1 method's
#: second round of 3 x 6% moved the pick by a quarter decade, below the probes' noise)
#: (a plan for at most ``candidates`` uses the options with no more)
OPTIONS: tuple[tuple[int, float], ...] = (
    (4, 0.08),
    (4, 0.07),
    (4, 0.06),
    (4, 0.05),
    (3, 0.08),
    (3, 0.07),
    (3, 0.06),
    (3, 0.05),
    (3, 0.04),
    (3, 0.03),
    (2, 0.03),
    (2, 0.02),
)
#: second-round candidates (0: no second round; 3: the pick and a quarter decade each side)
N2 = 0
#: trunk warmup, as a fraction of the run
WARMUP_FRACTION = 0.05
#: the budget's lower limit: the final run alone is one run's compute
MIN_BUDGET = 1.0
#: the part of the budget a plan with probes leaves unplanned, for the divergence guard's
#: replays (a rescue goes back to its last good snapshot and ``compute_multiple`` counts
#: the steps again): on the panel, runs with 1-2 rescues spent 0.02-0.1 over their plan.
#: The final run's ``guard.max_replay`` is what is left (past it a rescue does not replay),
#: so ``compute_multiple`` never exceeds the budget
RESCUE_RESERVE = 0.05
#: rescues the final run's leftover budget is sized for (:func:`rescue_snapshot_every`)
RESERVED_RESCUES = 2


@dataclass(frozen=True)
class ProbePlan:
    """Step counts of one autopilot run (module doc); ``n1 == 0``: no probes."""

    total_steps: int
    steps_per_epoch: int
    warmup: int
    n1: int
    hold1: int
    cool1: int
    n2: int
    hold2: int
    cool2: int
    finder: bool
    expected_multiple: float
    reason: str
    #: the first epoch trained on all the data (the decision split included)
    switch_epoch: int = 0
    #: steps of a run on all the data from step 0 (a run without probes)
    full_steps: int = 0
    #: the finder's sweeps, each in its own data order (:func:`with_sweeps`; 0 without
    #: the finder)
    sweeps: int = 0

    @property
    def decided_at(self) -> int:
        """The step after which the schedule is final (end of the last hold)."""
        return self.warmup + self.hold1 + self.hold2

    def to_dict(self) -> dict:
        return asdict(self)


def check_budget(budget: object) -> float:
    """``budget`` as a float in ``[1.0, 10]``; anything else raises ``ConfigError``.

    >>> check_budget(1.3)
    1.3
    >>> check_budget(0.9)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: budget=0.9 is out of range; allowed: [1.0, 10] (multiples of one training run)
    """
    if (
        not isinstance(budget, (int, float))
        or isinstance(budget, bool)
        or not math.isfinite(float(budget))
        or not MIN_BUDGET <= float(budget) <= 10
    ):
        raise ConfigError(
            f"budget={budget!r} is out of range; allowed: [1.0, 10] (multiples of one training run)"
        )
    return float(budget)


def make_plan(
    n_full: int,
    n_fit: int,
    batch: int,
    epochs: int,
    budget: float,
    finder_samples: int,
    candidates: int = 4,
) -> ProbePlan:
    """The plan (module doc). ``n_full``: training-set size a run is measured against;
    ``n_fit``: the part trained on until the decisions are made (the rest is the decision
    split); ``finder_samples``: what the finder's sweep would cost (0: no sweep);
    ``candidates``: the most first-round candidates (4 without a prior, 3 around the
    finder's suggestion: :func:`lrpilot.autopilot._ladder.first_round`)."""
    check_budget(budget)
    spe, spe_full = math.ceil(n_fit / batch), math.ceil(n_full / batch)
    length = epochs * spe  # the probes' lengths are fractions of this
    per_step = n_fit / spe
    allowed = (budget - RESCUE_RESERVE) * epochs * n_full
    warm = max(1, round(WARMUP_FRACTION * length))
    for use_finder in (True, False) if finder_samples > 0 else (False,):
        for n1, frac in (o for o in OPTIONS if o[0] <= candidates):
            hold = max(2, round(frac * length))
            cool = max(1, round(hold / 3))
            if warm + 2 * hold > length // 2:
                continue
            switch = min(epochs, math.ceil((warm + hold + (hold if N2 else 0)) / spe))
            path = switch * n_fit + (epochs - switch) * n_full  # the final trajectory
            extra = (n1 - 1) * hold + n1 * cool + max(N2 - 1, 0) * hold + N2 * cool
            need = path + (finder_samples if use_finder else 0) + extra * per_step
            if need <= allowed:
                return ProbePlan(
                    switch * spe + (epochs - switch) * spe_full,
                    spe,
                    warm,
                    n1,
                    hold,
                    cool,
                    N2,
                    hold if N2 else 0,
                    cool if N2 else 0,
                    use_finder,
                    need / (epochs * n_full),
                    f"{n1} candidates" + (f" then {N2}" if N2 else "") + f", holds of {hold} steps "
                    f"({frac:.0%} of the run), cooldowns of {cool}; all the data from epoch "
                    f"{switch + 1}" + ("" if use_finder else "; no finder sweep (budget)"),
                    switch,
                    epochs * spe_full,
                    int(use_finder),
                )
    return no_probe_plan(n_full, n_fit, batch, epochs,
                         f"budget {budget:g} leaves no room for probes: the prior's LR, no search")  # fmt: skip


#: the most finder sweeps a plan takes (:func:`with_sweeps`); odd, as every count it takes
MAX_SWEEPS = 3
#: what extra sweeps leave of the budget at least, as a multiple of one run. They may
#: take the guard's reserve: its replays are capped by what is left (``guard.max_replay``;
#: a rescue past the cap puts the weights back without running steps again), and on the
#: panel, three sweeps from the reserve gained on the rows whose prior is noisiest while
#: 1 of 100 final runs needed a rescue (autopilot_research.md, fourteenth session)
SWEEP_RESERVE_FLOOR = 0.0


def with_sweeps(
    plans: Sequence[ProbePlan], finder_samples: int, one_run: int, budget: float
) -> list[ProbePlan]:
    """``plans`` with the most finder sweeps that every one of them affords: an odd count
    up to :data:`MAX_SWEEPS` (the median of an odd count ignores one outlying sweep; two
    sweeps' geometric mean moves half-way to it), each extra sweep paid from what the plan
    left of the budget, its rescue reserve included, down to :data:`SWEEP_RESERVE_FLOOR`:
    ``expected_multiple + (k - 1) x finder_samples / one_run <= budget - floor``.
    The holds stay as planned: shorter holds move the probes' ranking (method a8), and a
    plan shrunk to pay for sweeps (three at 5% holds instead of one at 7%) picked higher
    LRs on SGD, up to a cliff.

    The sweeps run before the finder's verdict is known, so the plan with a suggestion and
    the one without take the same count. A plan without the finder or probes is returned
    as it is.

    >>> p = make_plan(4000, 3800, 64, 15, 1.3, 2000, candidates=3)
    >>> [(q.sweeps, round(q.expected_multiple, 3)) for q in with_sweeps([p], 2000, 60_000, 1.3)]
    [(3, 1.293)]
    >>> q = make_plan(4000, 3800, 64, 5, 1.3, 2000, candidates=3)  # a sweep is 0.1 of a run
    >>> [(r.sweeps, round(r.expected_multiple, 3)) for r in with_sweeps([q], 2000, 20_000, 1.3)]
    [(1, 1.232)]
    """
    finders = [p for p in plans if p.n1 > 0 and p.finder]
    k = next(
        (
            k
            for k in range(MAX_SWEEPS, 1, -2)
            if all(
                p.expected_multiple + (k - 1) * finder_samples / one_run
                <= budget - SWEEP_RESERVE_FLOOR + 1e-12
                for p in finders
            )
        ),
        1,
    )
    return [
        replace(
            p,
            sweeps=k,
            expected_multiple=p.expected_multiple + (k - 1) * finder_samples / one_run,
            reason=p.reason + (f"; {k} finder sweeps" if k > 1 else ""),
        )
        if p in finders
        else p
        for p in plans
    ]


def no_probe_plan(n_full: int, n_fit: int, batch: int, epochs: int, reason: str) -> ProbePlan:
    """A plan without probes: one run on all the data from step 0 (compute 1.0)."""
    spe, spe_full = math.ceil(n_fit / batch), math.ceil(n_full / batch)
    warm = max(1, round(WARMUP_FRACTION * epochs * spe_full))
    return ProbePlan(
        epochs * spe_full, spe, warm, 0, 0, 0, 0, 0, 0, False, 1.0, reason, 0, epochs * spe_full
    )


def rescue_snapshot_every(left_samples: float, step_samples: int, default: int) -> int:
    """The final run's ``guard.snapshot_every`` so that :data:`RESERVED_RESCUES` rescues fit
    in what its budget left: a rescue goes back to the older of the guard's two snapshots,
    so it redoes at most about ``2 x snapshot_every`` steps, which ``compute_multiple``
    counts. ``left_samples``: ``budget x one run`` minus what was spent and what the rest
    of the run will spend without a rescue.

    ``snapshot_every = clamp(floor(left / step_samples / (2 x RESERVED_RESCUES)), 1, default)``

    >>> rescue_snapshot_every(0.06 * 60_000, step_samples=64, default=50)  # a 15-epoch run
    14
    >>> rescue_snapshot_every(0.05 * 16_000, step_samples=256, default=50)  # 63 steps in all
    1
    """
    if step_samples < 1:
        raise ValueError(f"step_samples={step_samples!r} is out of range; allowed: [1, inf]")
    steps = max(0.0, left_samples) / step_samples
    return max(1, min(default, int(steps // (2 * RESERVED_RESCUES))))


def compute_multiple(
    probes: Sequence[Any],
    trunk_samples: int,
    tail_samples: int,
    one_run: int,
    extra_samples: int = 0,
) -> float:
    """Every forward+backward sample over one run's samples (``epochs x training-set size``):
    the shared trunk (run once), every probe's hold and cooldown (the winners' holds are the
    final run's steps, so nothing is counted twice), the final run after the last decision
    (``tail_samples``) and ``extra_samples`` (a finder sweep).

    >>> from lrpilot.autopilot._decide import Probe
    >>> p = [Probe("a", 0.1, 1.0, samples=100), Probe("b", 0.3, 0.9, samples=100)]
    >>> compute_multiple(p, trunk_samples=50, tail_samples=950, one_run=1000)
    1.2
    """
    if one_run <= 0:
        raise ValueError(f"one_run={one_run!r} is out of range; allowed: [1, inf]")
    total = trunk_samples + tail_samples + extra_samples + sum(p.samples for p in probes)
    return total / one_run
