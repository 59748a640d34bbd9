"""The probe phase: branches from shared snapshots of one :class:`lrpilot.train.Engine`.

This module trains only through the engine (``restore``, ``set_schedule``, ``run_steps``,
``snapshot``); it never owns a training step. Its choices come from
:mod:`lrpilot.autopilot._decide`, its step counts from :mod:`lrpilot.autopilot._plan`, its
schedules from :mod:`lrpilot.autopilot._shapes`. Progress is kept in a :class:`ProbeStore`
(one JSON record plus the snapshots a later step needs), so a run killed at any point
resumes without redoing a finished probe, and, since every branch starts from a stored
snapshot (weights, optimizer, data position, RNG), bit-identically.

Procedure (``plan`` = :class:`~lrpilot.autopilot._plan.ProbePlan`):

1. optional prior: the finder's sweep on the engine's model (``lrpilot.find_lr`` restores
   everything; the engine's snapshot from before it is put back after it); when the budget
   leaves room, ``plan.sweeps`` sweeps in their own data orders and their median
   (:mod:`lrpilot.autopilot._prior`);
2. the shape is chosen first (:func:`~lrpilot.autopilot._shapes.choose_shape`, a function
   of the plan); for one-cycle every candidate peak ``c`` is *held* at
   ``c x level``, one-cycle's LR at the decision point as a fraction of its peak
   (:func:`~lrpilot.autopilot._shapes.cycle_level`), so the trajectory is one-cycle-like;
   under wsd and cosine (the user's, or the rule's after a late decision) at ``c`` itself;
3. trunk: linear warmup from 0 to the smallest candidate's hold LR over ``plan.warmup``
   steps (shared by every branch);
4. round 1: each candidate ramps from there to its hold LR and holds it ``plan.hold1``
   steps (snapshot), then cools down linearly to 0 over ``plan.cool1`` steps and is scored
   on the decision split; :func:`~lrpilot.autopilot._decide.anchored_peak` decides from
   the finder's suggestion (the probes only lower it, on decisive evidence) and
   :func:`~lrpilot.autopilot._decide.blend_peak` averages that with the probes' own
   estimate in log LR, corrected by :func:`~lrpilot.autopilot._decide.probe_bias` (at the
   peak: Adam's horizon part only, a quarter decade; below it, as one-cycle's probes hold,
   the family's whole bias);
5. optional round 2 (``plan.n2 > 0``): from the pick's snapshot, three LRs a quarter
   decade apart, same scoring, :func:`~lrpilot.autopilot._decide.choose_peak`;
6. the engine is left at the pick's snapshot with the final schedule set: for one-cycle a
   linear ramp from the hold LR to the peak at 30% of the run, then cosine to 0, under
   one-cycle's momentum cycle (:func:`~lrpilot.autopilot._shapes.cycle_momentum`, set
   before the trunk: the probes step under it too); for wsd the peak held to 80% of the
   run, then linear to 0. The final run trains on the decision split too from the plan's
   ``switch_epoch`` (:meth:`lrpilot.train.Engine.switch_data`).

The first round has ``plan.n1`` candidates: the plan once the finder has suggested
(``prior_plan``, 3 candidates around the suggestion) or without a suggestion (4, up from the
calibrated default); the plan's hold lengths follow from its candidates and the budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lrpilot.autopilot import _shapes as shapes
from lrpilot.autopilot._decide import (
    Decision,
    Probe,
    anchored_peak,
    blend_peak,
    choose_peak,
    prior_lr,
    probe_bias,
)
from lrpilot.autopilot._ladder import first_round, second_round
from lrpilot.autopilot._plan import ProbePlan
from lrpilot.autopilot._prior import describe_sweeps
from lrpilot.train import Callback, Control

STATE_VERSION = 3
Scorer = Callable[[Any], tuple[list[float], dict[str, float]]]


class _StopOnNonFinite(Callback):
    """Ends a probe's steps at the first non-finite loss (the branch diverged)."""

    def on_step_end(self, engine: Any, outcome: Any) -> Control | None:
        if not math.isfinite(outcome.loss):
            return Control(stop=True, reason="non-finite loss")
        return None


class ProbeStore:
    """The probe phase's record on disk (``DIR/state.json`` and ``DIR/<name>.pt``), or in
    memory only when ``root`` is ``None``. Snapshots are saved without the schedule
    function (the caller sets it again) and read back with ``weights_only=True``."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.state: dict[str, Any] = {"version": STATE_VERSION, "probes": {}, "decisions": {}}
        self._snaps: dict[str, dict] = {}
        if root is not None and (root / "state.json").is_file():
            state = json.loads((root / "state.json").read_text())
            if state.get("version") != STATE_VERSION:
                raise ValueError(
                    f"autopilot state version {state.get('version')!r} is not supported"
                )
            self.state = state

    def save(self) -> None:
        if self.root is None:
            return
        from lrpilot._atomic_io import atomic_write_bytes

        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(self.state, indent=1).encode(), self.root / "state.json")

    def put_snapshot(self, name: str, snap: dict, segments: Sequence[shapes.Segment]) -> None:
        """Keep ``snap`` (taken under the schedule of ``segments``) as ``name``."""
        clean = {k: v for k, v in snap.items() if k != "schedule_fn"}
        self._snaps[name] = clean
        self.state.setdefault("segments", {})[name] = [[n, p] for n, p in segments]
        self.save()
        if self.root is not None:
            from lrpilot.train._checkpoint import atomic_save, with_checksum

            self.root.mkdir(parents=True, exist_ok=True)
            atomic_save(with_checksum(clean), self.root / f"{name}.pt")

    def get_snapshot(self, name: str) -> dict | None:
        if (
            name not in self._snaps
            and self.root is not None
            and (self.root / f"{name}.pt").is_file()
        ):
            from lrpilot.train._checkpoint import _CHECKSUM_KEY, _FORMAT_KEY, load_checkpoint

            snap = load_checkpoint(self.root / f"{name}.pt")
            snap.pop(_FORMAT_KEY, None)
            snap.pop(_CHECKSUM_KEY, None)
            self._snaps[name] = snap
        return self._snaps.get(name)

    def probe(self, name: str) -> Probe | None:
        got = self.state["probes"].get(name)
        return None if got is None else Probe.from_dict(got)

    def put_probe(self, probe: Probe) -> None:
        self.state["probes"][probe.name] = probe.to_dict()
        self.save()


@dataclass
class Outcome:
    """What the probe phase decided and spent."""

    decisions: list[Decision]
    probes: list[Probe]
    history: list[shapes.Segment]  # the final trajectory's schedule, step 0 to the end
    peak: float
    shape: str
    decided_at: int
    trunk_samples: int
    finder_samples: int
    prior: dict = field(default_factory=dict)
    #: the first training step's loss (the model as initialised); None without a trunk
    first_loss: float | None = None
    #: the first epoch of the final run on all the training data (the split included)
    switch_epoch: int = 0
    #: the plan the probes followed (:attr:`Prober.prior_plan` once the finder suggested)
    plan: ProbePlan | None = None
    #: the momentum schedule config of the whole run (one-cycle's cycle), or None
    momentum: dict | None = None


def _prior_line(prior: dict) -> str:
    """The progress line for the finder's result (one sweep or several)."""
    sugg = prior.get("suggestion")
    said = f"suggests {sugg:.3g}" if prior_lr(prior) is not None else f"{prior.get('verdict')!r}"
    sweeps = describe_sweeps(prior)
    return f"finder ({sweeps}): {said}" if sweeps else f"finder: {said}"


@dataclass
class Prober:
    """Runs the procedure of the module doc on ``engine``. ``scorer(model)`` returns the
    per-sample losses and metrics on the decision split; ``family`` is ``"sgd"`` or
    ``"adam"``; ``prior_fn(engine) -> dict`` runs the finder (``verdict``, ``suggestion``,
    ``samples``); ``user_shape`` is a schedule shape the user fixed; ``say`` prints a line."""

    engine: Any
    plan: ProbePlan
    scorer: Scorer
    family: str
    store: ProbeStore
    prior_fn: Callable[[Any], dict] | None = None
    user_shape: str | None = None
    fixed_lr: float | None = None
    say: Callable[[str], None] = lambda _msg: None
    #: the schedule the engine was built with (the run config's placeholder)
    initial: list = field(default_factory=lambda: [(1, {"name": "constant", "lr": 1e-3})])
    #: the plan once the finder has a suggestion (its ladder has fewer candidates); ``plan``
    #: is the one without (it decides whether the finder runs at all)
    prior_plan: ProbePlan | None = None
    #: whether a one-cycle shape cycles the optimizer's momentum (SGD with momentum, Adam)
    cycles_momentum: bool = False

    def _momentum(self, shape: Decision, total: int) -> tuple[Decision, dict | None]:
        """One-cycle's momentum cycle over the whole run, set on the engine now, before the
        trunk: the probes gather their evidence under the momentum the run they continue
        steps under. The shape decision records it."""
        if shape.value != "one_cycle" or not self.cycles_momentum:
            return shape, None
        from lrpilot.schedules import from_config

        config = shapes.cycle_momentum(total)
        self.engine.adapter.set_momentum(from_config(config))
        cycle = f"{shapes.MOMENTUM_HIGH} -> {shapes.MOMENTUM_LOW} -> {shapes.MOMENTUM_HIGH}"
        why = (
            f"{cycle}: down to {shapes.MOMENTUM_LOW} where the LR peaks, back up by the end, "
            "from step 0 (probes included), as PyTorch's OneCycleLR and lrpilot fit's "
            "one_cycle; the optimizer's own momentum / beta1 is replaced"
        )
        reason = f"{shape.reason}; momentum cycle {cycle}"
        return replace(shape, reason=reason, evidence={**shape.evidence, "momentum": why}), config

    def _schedule(self, segments: Sequence[shapes.Segment]) -> None:
        self.engine.set_schedule(shapes.to_schedule(segments))

    def _restore(self, name: str, segments: Sequence[shapes.Segment]) -> None:
        """Put snapshot ``name`` back under the schedule it was taken with, then set the
        schedule of ``segments`` (the step counter is the snapshot's)."""
        snap = self.store.get_snapshot(name)
        assert snap is not None, name
        taken = self.store.state["segments"][name]
        if taken:
            self._schedule([(int(n), p) for n, p in taken])
        self.engine.restore(snap)
        self._schedule(segments)

    def _branch(
        self,
        name: str,
        start: str,
        history: list,
        lr: float,
        hold: int,
        cool: int,
        ramp: int,
        rnd: int,
        level: float = 1.0,
    ) -> Probe:
        """One candidate (peak ``lr``, held at ``lr * level``) from snapshot ``start``
        (cached in the store when finished)."""
        done = self.store.probe(name)
        if done is not None:
            return done
        prev = history[-1][1].get("end_lr", history[-1][1].get("lr")) if history else 0.0
        segs = [*history, *shapes.hold(prev, lr * level, hold, ramp)]
        self._restore(start, history)
        self._schedule(segs)
        stop = [_StopOnNonFinite()]
        outs = self.engine.run_steps(hold, callbacks=stop)
        samples = sum(o.samples for o in outs)
        diverged = len(outs) < hold or any(not math.isfinite(o.loss) for o in outs)
        if not diverged:
            self.store.put_snapshot(name, self.engine.snapshot(), segs)
            self._schedule([*segs, *shapes.cooldown(lr * level, cool)])
            more = self.engine.run_steps(cool, callbacks=stop)
            samples += sum(o.samples for o in more)
            diverged = len(more) < cool or any(not math.isfinite(o.loss) for o in more)
        losses: list[float] = []
        metrics: dict[str, float] = {}
        score = math.nan
        if not diverged:
            losses, metrics = self.scorer(self.engine.model)
            finite = [v for v in losses if math.isfinite(v)]
            score = sum(finite) / len(finite) if len(finite) == len(losses) and finite else math.nan
        probe = Probe(
            name,
            lr=lr,
            score=score,
            losses=tuple(losses),
            round=rnd,
            start_step=shapes.length(history),
            hold=hold,
            cooldown=cool,
            samples=samples,
            diverged=diverged,
            accuracy=metrics.get("accuracy"),
            train_loss=outs[-1].loss if outs else None,
        )
        self.store.put_probe(probe)
        self.say(
            f"probe {name}: lr {lr:.3g}, "
            + ("diverged" if diverged else f"decision-split loss {score:.4g}")
        )
        return probe

    def _prior(self) -> tuple[dict, int]:
        known = self.store.state.get("prior")
        if known is not None:
            return known, int(known.get("samples", 0))
        prior: dict = {}
        if self.plan.finder and self.prior_fn is not None and self.fixed_lr is None:
            before = self.engine.snapshot()
            prior = self.prior_fn(self.engine)
            self.engine.restore(before)
            self.say(_prior_line(prior))
        self.store.state["prior"] = prior
        self.store.save()
        return prior, int(prior.get("samples", 0))

    def _initial(self) -> float | None:
        """The start snapshot and its decision-split loss (kept in the store)."""
        if self.store.get_snapshot("start") is None:
            self.store.put_snapshot("start", self.engine.snapshot(), self.initial)
        if "initial_score" not in self.store.state:
            losses, _ = self.scorer(self.engine.model)
            finite = [v for v in losses if math.isfinite(v)]
            self.store.state["initial_score"] = sum(finite) / len(finite) if finite else None
            self.store.save()
        return self.store.state["initial_score"]

    def _trunk(self, base: float) -> tuple[list[shapes.Segment], int]:
        """The shared warmup to ``base`` (run once, kept in the store)."""
        trunk = shapes.trunk(base, self.plan.warmup)
        if self.store.get_snapshot("trunk") is None:
            self._restore("start", trunk)
            outs = self.engine.run_steps(self.plan.warmup)
            self.store.state["trunk_samples"] = sum(o.samples for o in outs)
            # the loss of the model as initialised (the guard's stall level, run.py)
            self.store.state["first_loss"] = outs[0].loss if outs else None
            self.store.put_snapshot("trunk", self.engine.snapshot(), trunk)
        return trunk, int(self.store.state["trunk_samples"])

    def _choose_plan(self, prior: dict) -> ProbePlan:
        """The plan the probes follow: :attr:`prior_plan` (fewer candidates) once the
        finder has a suggestion."""
        if self.prior_plan is not None and prior_lr(prior) is not None:
            self.plan = self.prior_plan
        return self.plan

    def run(self) -> Outcome:
        """The procedure of the module doc; the engine is left at the chosen state with the
        final schedule set."""
        prior, finder_samples = self._prior()
        plan = self._choose_plan(prior)
        initial = self._initial()
        decisions: list[Decision] = []
        if plan.n1 == 0 or self.fixed_lr is not None:
            return self._no_search(prior, finder_samples, decisions)
        shape = shapes.choose_shape(plan.total_steps, plan.decided_at, self.user_shape)
        shape, momentum = self._momentum(shape, plan.total_steps)
        # one-cycle: the probes hold at one-cycle's level at the decision point; wsd and
        # cosine: at the peak itself
        level = shapes.cycle_level(plan.decided_at, plan.total_steps)
        level = level if shape.value == "one_cycle" else 1.0
        c1 = first_round(prior, self.family, plan.n1)
        c1 = replace(c1, evidence={**c1.evidence, "hold_level": level})
        decisions.append(c1)
        base = min(c1.value) * level
        trunk, trunk_samples = self._trunk(base)
        ramp1 = max(1, min(plan.warmup, plan.hold1 // 2))
        r1 = [
            self._branch(f"r1-{i}", "trunk", trunk, lr, plan.hold1, plan.cool1, ramp1, 1, level)
            for i, lr in enumerate(c1.value)
        ]
        anchor = prior_lr(prior)
        kept = anchored_peak(r1, anchor, initial=initial, name="prior_pick")
        pick1 = blend_peak(
            kept,
            r1,
            bias=probe_bias(self.family, held_at_peak=level >= 1),
            name="round1_pick" if plan.n2 else "peak_lr",
        )
        decisions += [kept, pick1] if "anchored" in pick1.evidence else [pick1]
        # the run continues from the pick's own probe, or (a margin below the prior) the
        # prior's probe
        src = pick1.evidence.get("continue_from")
        best1 = next((p for p in r1 if p.ok and (p.lr == pick1.value or p.name == src)), None)
        probes = list(r1)
        if best1 is None:  # every first-round branch failed: continue from the trunk
            history, start, peak = trunk, "trunk", float(pick1.value)
            if plan.n2:
                decisions.append(Decision("peak_lr", peak, pick1.reason, pick1.evidence))
        else:
            history = [*trunk, *shapes.hold(base, best1.lr * level, plan.hold1, ramp1)]
            start, peak = best1.name, float(pick1.value)
            if plan.n2:
                history, start, peak, r2 = self._round2(
                    r1, pick1, best1, history, initial, decisions, level
                )
                probes += r2
        decided_at = shapes.length(history)
        decisions.append(shape)
        held = best1.lr if best1 is not None and not plan.n2 else peak
        tail = shapes.final(peak, shape.value, decided_at, plan.total_steps, held * level)
        full = [*history, *tail]
        self._restore(start, full)
        return Outcome(
            decisions, probes, full, peak, shape.value, decided_at, trunk_samples,
            finder_samples, prior, self.store.state.get("first_loss"), plan.switch_epoch,
            plan, momentum,
        )  # fmt: skip

    def _round2(self, r1, pick1, best1, history, initial, decisions, level=1.0):  # type: ignore[no-untyped-def]
        """Round 2 from the round-1 winner's snapshot; ``(history, start, peak, probes)``."""
        plan = self.plan
        c2 = second_round(r1, pick1)
        decisions.append(c2)
        ramp2 = max(1, plan.hold2 // 4)
        r2 = [
            self._branch(
                f"r2-{i}", best1.name, history, lr, plan.hold2, plan.cool2, ramp2, 2, level
            )
            for i, lr in enumerate(c2.value)
        ]
        pick2 = choose_peak(r2, initial=initial, progress=None, name="peak_lr")
        best2 = next((p for p in r2 if p.ok and p.lr == pick2.value), None)
        if best2 is None:  # every round-2 branch failed: the round-1 winner continues
            decisions.append(
                Decision(
                    "peak_lr",
                    best1.lr,
                    "every second-round branch failed; the first round's pick continues",
                    pick2.evidence,
                )
            )
            return history, best1.name, best1.lr, r2
        decisions.append(pick2)
        history = [*history, *shapes.hold(best1.lr * level, best2.lr * level, plan.hold2, ramp2)]
        return history, best2.name, best2.lr, r2

    def _no_search(self, prior: dict, finder_samples: int, decisions: list) -> Outcome:
        """No probes (the user fixed the LR, or the budget has no room): the fixed LR, the
        finder's suggestion or the calibrated default, warmup + the rule's shape."""
        from lrpilot.autopilot._decide import DEFAULT_LR

        plan = self.plan
        if self.fixed_lr is not None:
            peak, why = self.fixed_lr, "fixed by the user"
        elif prior.get("verdict") == "ok" and prior.get("suggestion"):
            peak, why = float(prior["suggestion"]), f"{plan.reason}; the finder's suggestion"
        else:
            peak, why = DEFAULT_LR[self.family], f"{plan.reason}; the calibrated default"
        decisions.append(Decision("peak_lr", peak, why, {"prior": prior}))
        total = plan.full_steps  # nothing to decide: all the data from step 0
        shape, momentum = self._momentum(
            shapes.choose_shape(total, plan.warmup, self.user_shape), total
        )
        decisions.append(shape)
        level = shapes.cycle_level(plan.warmup, total)
        level = level if shape.value == "one_cycle" else 1.0
        full = [
            *shapes.trunk(peak * level, plan.warmup),
            *shapes.final(peak, shape.value, plan.warmup, total, peak * level),
        ]
        self._restore("start", full)
        return Outcome(
            decisions, [], full, peak, shape.value, plan.warmup, 0, finder_samples, prior,
            plan=plan, momentum=momentum,
        )  # fmt: skip
