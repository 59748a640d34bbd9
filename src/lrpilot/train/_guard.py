"""Divergence guard: notice a blow-up, go back to the last good state, lower the LR.

The rule (a pure function of the recorded losses, :func:`classify`):

* a non-finite training loss, or a non-finite gradient norm when one was measured
  (and no GradScaler is in charge of overflow), is a **divergence at once**;
* otherwise let ``W`` be the last ``window`` accepted step losses (at least ``min_history``
  of them; before that only non-finite values count), ``m = median(W)`` and
  ``s = max(1.4826 * median(|W - m|), 0.01 * |m|, SPIKE_FLOOR * |initial|, 1e-8)`` (the
  MAD, a robust standard deviation, with a floor for nearly constant curves and one tied
  to the loss scale: ``initial`` is the first step's loss). A loss with
  ``loss > m + threshold * s`` is **suspect**; it is not added to ``W``. The loss-scale
  floor keeps a run that has fallen far below its start from counting ordinary batch
  noise as spikes (synth-mlp-ln/AdamW at a loss of ~0.05: batches at 0.05-0.06 were
  "far above" a window whose MAD had shrunk with the loss, and 8 rescues aborted a
  healthy run); with the defaults a spike must exceed the level by at least 6% of the
  initial loss;
* ``patience`` suspect steps among the last ``horizon`` steps are a **divergence**
  (isolated spikes are ignored);
* **rebound** (a gradual climb the rule above lets into ``W``, e.g. back to chance level):
  the step losses are cut into blocks of ``horizon``; ``first`` is the median of the first
  block, ``best`` the lowest block median, ``noise`` the smallest over the last 5 blocks of
  ``1.4826 * median(|block - block median|)`` (floored like ``s``). Once
  ``first - best > rebound_progress * noise`` (6: clear progress), a loss above
  ``best + rebound * (first - best)`` (``rebound = 0.8``: 80% of the progress lost) in a
  majority of the last ``horizon`` steps is a **divergence** (:func:`rebound_level`). A
  rescue starts the levels again from the restored state. ``rebound = None`` turns it off.
* **stall** (a rescue that did not rescue): ``initial`` is the first step's loss (the
  model as initialised). For ``STALL_BLOCKS`` (5) blocks of ``horizon`` steps after a
  rescue no snapshot is taken (the state is on probation); if the lowest block median
  since the rescue is then not below ``initial - max(rebound_progress * noise, 0.01 *
  |initial|)`` (``noise``: the smallest within-block noise since the rescue), the loss
  still sits at its starting level: a **divergence** (cause ``"stalled"``), so the run
  goes back to the same good snapshot at a lower LR again, until it learns or
  ``max_rescues`` ends it (:meth:`DivergenceGuard.stall_level`).

On a divergence the loop (:class:`lrpilot.train._builtin.GuardCallback`) goes back to a
good snapshot of the same epoch: model and optimizer state (CPU copies), the schedule position (plateau
included), the position in the epoch's data order and the epoch's loss sums. Snapshots are
taken at the start of every epoch and every ``snapshot_every`` steps while no step of the
horizon is suspect; the last two are kept and a rescue returns to the **older** one (the
newer may already hold the start of the trouble). A first snapshot after the epoch's (or
after a rescue) is skipped when fewer than ``snapshot_every + 1`` steps of the epoch remain:
no later snapshot could follow it, so it could never be the older one (with 63 steps per
epoch and ``snapshot_every = 50`` that halves the snapshots and changes no rescue). The
whole schedule is then multiplied by ``factor`` (``ScheduleAdapter.set_lr_scale``) and
training goes on from there, so the rewound steps are redone at the lower LR and the run
still ends where its schedule ends. With ``max_replay`` (steps the rescues may redo in all)
a rescue past it puts back only the snapshot's weights and optimizer state and goes on from
the current step (``"replayed": false``): a compute budget is kept (``lrpilot auto``).
The global step counter keeps counting (``metrics.jsonl`` never repeats a step; the
rewound steps show in ``steps_run``). Each rescue is a ``guard_rescue`` event; after
``max_rescues`` of them the next divergence raises ``TrainingAborted``.

Limits: a model that collapses before it made clear progress and was never rescued
(for example a CNN that falls to chance level right after initialisation without a spike)
is caught by no rule: the guard repairs divergence, it does not judge progress
(``lrpilot diagnose`` does). A rescue cannot go back past the start of its epoch. The
calibration of the defaults on recorded runs is in ``bench/results/guard_calibration.md``.
Reference for the spike rule: the median/MAD outlier test (Hampel, "The influence curve and
its role in robust estimation", JASA 1974; Leys et al., "Detecting outliers: do not use
standard deviation around the mean, use absolute deviation around the median", JESP 2013).

The guard's own state (window, suspect flags, rescue count, rebound levels) has a versioned
``state_dict()``; snapshots are saved in checkpoints too, so a resumed run rescues exactly
as the uninterrupted one would.

>>> g = DivergenceGuard(window=20, threshold=6.0, patience=3, horizon=10, min_history=5)
>>> [g.observe(2.0 - 0.01 * i) for i in range(10)][-1]
'ok'
>>> g.observe(50.0), g.observe(1.9)          # one spike, then normal again: ignored
('suspect', 'ok')
>>> [g.observe(1.9) for i in range(9)][-1]   # the spike leaves the horizon
'ok'
>>> g.observe(50.0), g.observe(1.9), g.observe(60.0), g.observe(70.0)
('suspect', 'ok', 'suspect', 'diverged')
>>> g.observe(float("nan"))
'diverged'
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

# state capture lives in lrpilot._state; these names stay importable from here
from lrpilot._state import copy_into as copy_into
from lrpilot._state import cpu_clone as cpu_clone
from lrpilot._state import restore_snapshot as restore_snapshot
from lrpilot._state import take_snapshot as take_snapshot

STATE_VERSION = 3
#: spike rule: the robust scale is at least this fraction of ``|initial loss|``
SPIKE_FLOOR = 0.01

OK, SUSPECT, DIVERGED = "ok", "suspect", "diverged"
#: rebound rule: the progress is measured in the smallest within-block noise of this many
#: recent blocks
REBOUND_NOISE_BLOCKS = 5
#: stall rule: blocks of ``horizon`` steps after a rescue within which the loss must have
#: moved clearly below the run's starting level
STALL_BLOCKS = 5


def rebound_level(
    first: float, best: float, noise: float, *, rise: float, progress: float
) -> float | None:
    """The loss above which a step has lost ``rise`` of the progress made, or ``None``
    while there is no clear progress to lose.

    ``first`` and ``best`` are the first and the lowest block median of the step losses,
    ``noise`` a robust within-block standard deviation. The level is
    ``best + rise * (first - best)``, armed only when ``first - best > progress * noise``.

    >>> rebound_level(2.3, 0.3, 0.1, rise=0.8, progress=6.0)
    1.9
    >>> rebound_level(2.3, 2.0, 0.1, rise=0.8, progress=6.0) is None  # 3 noise units only
    True
    """
    gained = first - best
    if not gained > progress * noise:
        return None
    return best + rise * gained


def robust_level(values: Sequence[float]) -> tuple[float, float]:
    """``(median, robust scale)`` of ``values`` as used by the guard rule.

    >>> robust_level([1.0, 2.0, 3.0, 4.0, 100.0])
    (3.0, 1.4826)
    """
    ordered = sorted(values)
    med = _median_sorted(ordered)
    return med, _scale_about_sorted(ordered, med)


def _median_sorted(ordered: Sequence[float]) -> float:
    """Median of an already sorted, non-empty sequence."""
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _scale_about_sorted(ordered: Sequence[float], med: float) -> float:
    """The robust scale ``max(1.4826 * MAD, 0.01 * |med|, 1e-8)`` of a sorted window, in
    ``O(log n)`` instead of a sort of the deviations.

    The deviations ``|v - med|`` form two sorted runs (below and above ``med``); their
    median is found by selection from the two runs, so the result is bit-identical to
    sorting the deviations.
    """
    n = len(ordered)
    split = bisect.bisect_left(ordered, med)
    mid = n // 2
    mad = _kth_deviation(ordered, med, split, mid)
    if n % 2 == 0:
        mad = 0.5 * (_kth_deviation(ordered, med, split, mid - 1) + mad)
    return max(1.4826 * mad, 0.01 * abs(med), 1e-8)


def _mad_lower_bound(ordered: Sequence[float], med: float) -> float:
    """A lower bound of ``median(|v - med|)`` from two order statistics, in ``O(1)``.

    With ``k = n // 2`` and indices ``p < q = p + k``, let ``r = min(med - o[p], o[q] -
    med)``. A value with ``|v - med| < r`` lies strictly between ``o[p]`` and ``o[q]``: at
    most ``k - 1`` of them, fewer than the ``k`` (even ``n``: ``k - 1`` and ``k``; odd:
    ``k``) smallest deviations the median needs, so the MAD is at least ``r``.

    >>> _mad_lower_bound([1.0, 2.0, 3.0, 4.0, 100.0], 3.0) <= 1.0  # the MAD is 1
    True
    """
    n = len(ordered)
    k = n // 2
    if k == 0:
        return 0.0
    p = (n - 1 - k) // 2
    return max(min(med - ordered[p], ordered[p + k] - med), 0.0)


def _kth_deviation(ordered: Sequence[float], med: float, split: int, k: int) -> float:
    """The ``k``-th smallest (0-based) of ``|v - med|`` over a sorted window whose values
    below ``med`` are ``ordered[:split]``."""
    n_left, n_right = split, len(ordered) - split
    lo, hi = max(0, k + 1 - n_right), min(k + 1, n_left)
    while lo < hi:  # i values from the left run and k + 1 - i from the right run
        i = (lo + hi) // 2
        j = k + 1 - i
        if med - ordered[split - 1 - i] < ordered[split + j - 1] - med:
            lo = i + 1
        else:
            hi = i
    j = k + 1 - lo
    left = med - ordered[split - lo] if lo > 0 else -math.inf
    right = ordered[split + j - 1] - med if j > 0 else -math.inf
    return max(left, right)


def classify(
    loss: float,
    window: Sequence[float],
    *,
    threshold: float,
    min_history: int,
    grad_norm: float | None = None,
    initial: float | None = None,
) -> str:
    """``"diverged"`` for a non-finite loss/gradient norm, ``"suspect"`` for a loss far
    above the recent level (rule in the module docstring), else ``"ok"``. ``initial``: the
    run's first loss (its ``SPIKE_FLOOR`` fraction floors the scale; ``None``: no floor).

    >>> classify(float("inf"), [], threshold=6, min_history=5)
    'diverged'
    >>> classify(9.0, [1.0, 1.1, 0.9, 1.0, 1.05], threshold=6, min_history=5)
    'suspect'
    >>> classify(0.07, [0.05, 0.051, 0.049, 0.05, 0.05], threshold=6, min_history=5)
    'suspect'
    >>> classify(0.07, [0.05, 0.051, 0.049, 0.05, 0.05], threshold=6, min_history=5, initial=2.3)
    'ok'
    """
    if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
        return DIVERGED
    if len(window) < min_history:
        return OK
    med, scale = robust_level(window)
    scale = max(scale, spike_floor(initial))
    return SUSPECT if loss > med + threshold * scale else OK


def spike_floor(initial: float | None) -> float:
    """``SPIKE_FLOOR * |initial|``, the spike rule's scale floor tied to the loss scale
    (0 when the initial loss is unknown).

    >>> spike_floor(2.3), spike_floor(None), spike_floor(float("nan"))
    (0.023, 0.0, 0.0)
    """
    if initial is None or not math.isfinite(initial):
        return 0.0
    return SPIKE_FLOOR * abs(initial)


class DivergenceGuard:
    """Stateful wrapper around :func:`classify`: the loss window, the suspect flags of the
    last ``horizon`` steps and the rescue count (a small record with a versioned
    ``state_dict()``)."""

    def __init__(
        self,
        *,
        window: int = 50,
        threshold: float = 6.0,
        patience: int = 3,
        horizon: int = 10,
        min_history: int = 3,
        max_rescues: int = 8,
        rebound: float | None = 0.8,
        rebound_progress: float = 6.0,
    ) -> None:
        if horizon < patience:
            raise ValueError(f"horizon={horizon} must be >= patience={patience}")
        self.window_size = window
        self.threshold = threshold
        self.patience = patience
        self.horizon = horizon
        self.min_history = min(min_history, window)
        self.max_rescues = max_rescues
        self.rebound = rebound
        self.rebound_progress = rebound_progress
        self.window: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []
        self.recent: deque[bool] = deque(maxlen=horizon)
        self.rescues = 0
        #: why the last "diverged" came: "non-finite", "spikes", "rebound" or "stalled"
        self.cause: str | None = None
        #: the loss of the first step observed (the model as initialised): the level a
        #: rescued run must move clearly away from (stall rule)
        self.initial_level: float | None = None
        self._reset_rebound()

    def _reset_rebound(self) -> None:
        self._block: list[float] = []  # losses of the block being filled
        self.first_level: float | None = None  # median of the first block
        self.best_level: float | None = None  # lowest block median
        self._noises: deque[float] = deque(maxlen=REBOUND_NOISE_BLOCKS)
        self.rebound_at: float | None = None  # the armed rebound level
        # the level the steps in ``_above`` were judged against (the level can disarm while
        # they are still counted: the noise of the recent blocks grew)
        self.rebound_judged_at: float | None = None
        self._above: deque[bool] = deque(maxlen=self.horizon)
        self._n_above = 0
        # stall rule: blocks left to judge after a rescue (None: not watching), the lowest
        # block median and the smallest block noise since the rescue
        self._watch: int | None = None
        self._watch_best = math.inf
        self._watch_noise = math.inf
        self._stalled = False

    def observe(self, loss: float, grad_norm: float | None = None) -> str:
        """Classify one optimizer step's loss; ``"diverged"`` means: rescue now
        (:attr:`cause` says which rule: ``"non-finite"``, ``"spikes"`` or ``"rebound"``).

        The spike rule gives the same verdicts as :func:`classify` on ``self.window`` (a
        test checks it; the rebound rule of the module doc comes on top), computed
        incrementally: the window is also kept sorted, the MAD is selected from it without
        a sort, and only when the loss is above ``median + threshold * low`` with ``low``
        a lower bound of the scale from two order statistics (below that it cannot be
        suspect).
        """
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self.cause = "non-finite"
            return DIVERGED
        if self.initial_level is None:
            self.initial_level = loss
        if self.rebound is not None or self._watch is not None:
            above = self.rebound_at is not None and loss > self.rebound_at
            if above:
                self.rebound_judged_at = self.rebound_at
            if len(self._above) == self.horizon:
                self._n_above -= self._above[0]
            self._above.append(above)
            self._n_above += above
            self._block.append(loss)
            if len(self._block) == self.horizon:
                self._close_block()
            if self._n_above > self.horizon // 2:
                self.cause = "rebound"
                return DIVERGED
            if self._stalled:
                self._stalled = False
                self.cause = "stalled"
                return DIVERGED
        suspect = False
        ordered = self._sorted
        if len(ordered) >= self.min_history:
            med = _median_sorted(ordered)
            # necessary for a suspect: above the level with a cheap lower bound of the scale
            floor = spike_floor(self.initial_level)
            low = max(1.4826 * _mad_lower_bound(ordered, med), 0.01 * abs(med), 1e-8, floor)
            if loss > med + self.threshold * low:
                scale = max(_scale_about_sorted(ordered, med), floor)
                suspect = loss > med + self.threshold * scale
        self.recent.append(suspect)
        if not suspect:
            if len(self.window) == self.window_size:
                del ordered[bisect.bisect_left(ordered, self.window[0])]
            self.window.append(loss)
            bisect.insort(ordered, loss)
            return OK
        if sum(self.recent) >= self.patience:
            self.cause = "spikes"
            return DIVERGED
        return SUSPECT

    def _close_block(self) -> None:
        """A block of ``horizon`` losses is complete: update the first and best levels, the
        noise and the rebound level."""
        ordered = sorted(self._block)
        self._block = []
        med = _median_sorted(ordered)
        deviations = sorted(abs(v - med) for v in ordered)
        self._noises.append(1.4826 * _median_sorted(deviations))
        if self.first_level is None:
            self.first_level = med
        self.best_level = med if self.best_level is None else min(self.best_level, med)
        if self._watch is not None:
            self._judge_recovery(med, self._noises[-1])
        self._arm()

    def _judge_recovery(self, med: float, noise: float) -> None:
        """Stall rule, one block after a rescue: after ``STALL_BLOCKS`` blocks the lowest
        block median since the rescue must be below :meth:`stall_level`; otherwise the
        rescue did not rescue (the next :meth:`observe` says ``"diverged"``, cause
        ``"stalled"``)."""
        self._watch_best = min(self._watch_best, med)
        self._watch_noise = min(self._watch_noise, noise)
        self._watch -= 1  # type: ignore[operator]
        if self._watch > 0:  # type: ignore[operator]
            return
        self._watch = None
        level = self.stall_level()
        self._stalled = level is not None and not self._watch_best < level

    def stall_level(self) -> float | None:
        """``initial - max(rebound_progress * noise, 0.01 * |initial|, 1e-8)``: the level
        a rescued run's block median must go below to count as learning (``noise``: the
        smallest within-block noise since the rescue); ``None`` before any loss.

        >>> g = DivergenceGuard(horizon=2, patience=1)
        >>> g.initial_level, g._watch_noise = 2.3, 0.05
        >>> round(g.stall_level(), 6)
        2.0
        """
        init = self.initial_level
        if init is None or not math.isfinite(init):
            return None
        margin = max(self.rebound_progress * self._watch_noise, 0.01 * abs(init), 1e-8)
        return init - margin

    def _arm(self) -> None:
        if self.rebound is None or self.first_level is None or self.best_level is None:
            self.rebound_at = None
            return
        noise = min(self._noises)
        self.rebound_at = rebound_level(
            self.first_level,
            self.best_level,
            max(noise, 0.01 * abs(self.best_level), 1e-8),  # the floor of the spike rule
            rise=self.rebound,
            progress=self.rebound_progress,
        )

    @property
    def healthy(self) -> bool:
        """No suspect or rebounded step among the last ``horizon``, and not on probation
        after a rescue (a snapshot taken now is good)."""
        return not any(self.recent) and not self._n_above and self._watch is None

    def record_rescue(self) -> None:
        """Count a rescue and forget the suspect flags (the window is kept: it describes
        the level of the restored state). The rebound levels start again: the restored
        state may itself have lost progress (a rescue cannot go back past its epoch's
        start), and only new progress from there can be lost again."""
        self.rescues += 1
        self.recent.clear()
        self._reset_rebound()
        self._watch = STALL_BLOCKS

    @property
    def exhausted(self) -> bool:
        return self.rescues >= self.max_rescues

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "window": list(self.window),
            "recent": list(self.recent),
            "rescues": self.rescues,
            "block": list(self._block),
            "first_level": self.first_level,
            "best_level": self.best_level,
            "noises": list(self._noises),
            "above": list(self._above),
            "initial_level": self.initial_level,
            "watch": self._watch,
            "watch_best": self._watch_best,
            "watch_noise": self._watch_noise,
            "stalled": self._stalled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state of this version, of version 2 (before the stall rule: it starts
        at the next rescue, the starting level unknown) or of version 1 (before the rebound
        rule: its levels start again from the next steps)."""
        version = state.get("version")
        if version not in (1, 2, STATE_VERSION):
            raise ValueError(f"guard state version {version!r}; expected 1, 2 or {STATE_VERSION}")
        self.window = deque((float(v) for v in state["window"]), maxlen=self.window_size)
        self._sorted = sorted(self.window)
        self.recent = deque((bool(v) for v in state["recent"]), maxlen=self.horizon)
        self.rescues = int(state["rescues"])
        self._reset_rebound()
        self.initial_level = math.nan  # unknown before version 3: no stall rule
        if version == 1:
            return
        self._block = [float(v) for v in state["block"]]
        self.first_level = None if state["first_level"] is None else float(state["first_level"])
        self.best_level = None if state["best_level"] is None else float(state["best_level"])
        self._noises.extend(float(v) for v in state["noises"])
        self._above.extend(bool(v) for v in state["above"])
        self._n_above = sum(self._above)
        if version == STATE_VERSION:
            init = state["initial_level"]
            self.initial_level = None if init is None else float(init)
            self._watch = None if state["watch"] is None else int(state["watch"])
            self._watch_best = float(state["watch_best"])
            self._watch_noise = float(state["watch_noise"])
            self._stalled = bool(state["stalled"])
        self._arm()
