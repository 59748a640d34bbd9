"""The autopilot's request, validated: what is free, what the user fixed, the run's base
config and the probe plan (:class:`Settings`). Everything here runs before any file is
written; errors are ``ConfigError`` naming the value and what is allowed."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from lrpilot.autopilot import _shapes as shapes
from lrpilot.autopilot._batch import BatchChoice, check_possible
from lrpilot.autopilot._decide import Decision
from lrpilot.autopilot._plan import ProbePlan, check_budget, make_plan, no_probe_plan, with_sweeps
from lrpilot.autopilot._probe import Outcome, ProbeStore
from lrpilot.autopilot._split import decision_size, split_task
from lrpilot.errors import ConfigError, check_int, check_seed
from lrpilot.tasks import Task
from lrpilot.train._auto_config import AUTO

OPTIMIZER_FAMILY = {"sgd": "sgd", "adamw": "adam", "adam": "adam"}
AUTOPILOT_VERSION = 1


def user_task(model, loss_fn, train_set, val_set, metrics) -> Task:  # type: ignore[no-untyped-def]
    missing = [
        n
        for n, v in (
            ("model", model),
            ("loss_fn", loss_fn),
            ("train_set", train_set),
            ("val_set", val_set),
        )
        if v is None
    ]
    if missing:
        raise ConfigError(
            f"auto needs a task or model, loss_fn, train_set and val_set; "
            f"missing: {', '.join(missing)}"
        )
    return Task("user-model", model, train_set, val_set, loss_fn, dict(metrics or {}))


def optimizer_settings(task: Task, optimizer: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The optimizer mapping: ``optimizer`` (a name or a mapping without a fixed ``lr``),
    with the task's own optimizer settings when it names the same optimizer."""
    own = dict(task.defaults.get("optimizer", {}))
    spec = dict(optimizer) if isinstance(optimizer, Mapping) else {}
    name = spec.get("name", optimizer if isinstance(optimizer, str) else own.get("name", "adamw"))
    name = str(name).lower()
    if name not in OPTIMIZER_FAMILY:
        raise ConfigError(f"optimizer={name!r} is not one of {', '.join(OPTIMIZER_FAMILY)}")
    out = {k: v for k, v in own.items() if str(own.get("name", "")).lower() == name}
    out.update(spec)
    out["name"] = name
    out.pop("lr", None)
    return out


@dataclass(frozen=True)
class Request:
    """The arguments of :func:`auto` as given (validated by :func:`_settings`)."""

    task: Task
    optimizer: str | Mapping[str, Any] | None
    epochs: int | None
    batch_size: int | str | None
    budget: float
    seed: int
    lr: float | None
    schedule: str | Mapping[str, Any] | None
    fit_config: Mapping[str, Any]

    @property
    def free(self) -> tuple[str, ...]:
        """What the autopilot chooses: ``lr``, ``schedule`` (shape and warmup; a fixed shape
        name leaves only the warmup), ``batch_size``."""
        out = []
        if self.lr is None:
            out.append("lr")
        if self.schedule is None:
            out.append("schedule")
        if self.batch_size == AUTO:
            out.append("batch_size")
        return tuple(out)


@dataclass(frozen=True)
class Settings:
    """Everything ``auto`` validated before any file is written."""

    task: Task
    fit_task: Task
    decision_set: Dataset | None
    opt: dict[str, Any]
    epochs: int
    batch: int
    accumulate: int
    reference_batch: int
    budget: float
    seed: int
    lr: float | None
    shape: str | None
    fixed_schedule: dict | None
    free: tuple[str, ...]
    fixed: dict[str, Any]
    mode: str  # "search", "restart" (only the peak is free) or "batch"
    n_full: int
    n_fit: int
    base: dict[str, Any]
    cfg: Any
    plan: ProbePlan | None  # without a finder suggestion (the most candidates)
    choice: BatchChoice | None
    #: the plan once the finder has a suggestion (its ladder has fewer candidates)
    prior_plan: ProbePlan | None = None

    @property
    def cycles_momentum(self) -> bool:
        """Whether a one-cycle shape cycles the momentum: Adam's beta1, or SGD's momentum
        when it is not 0 (PyTorch's SGD has no momentum buffer at 0)."""
        return self.cfg.optimizer.name != "sgd" or self.cfg.optimizer.momentum > 0

    @property
    def one_run(self) -> int:
        return self.epochs * self.n_full

    @property
    def batch_samples(self) -> int:
        return 0 if self.choice is None else self.choice.samples

    def final_data(self, outcome: Outcome) -> tuple[Dataset, Any]:
        """``(dataset, order)`` of the final run: the rest of the training set until epoch
        ``outcome.switch_epoch``, all of it from there on (the decision split is needed
        only until the last decision; :class:`~lrpilot.train._data.PhasedOrder`)."""
        from lrpilot.autopilot._split import split_indices
        from lrpilot.train._data import PhasedOrder

        _held, kept = split_indices(self.n_full, self.seed)
        order = PhasedOrder(
            kept, self.n_full, self.cfg.batch_size, self.cfg.accumulate, self.cfg.seed,
            outcome.switch_epoch,
        )  # fmt: skip
        return self.task.train_set, order

    @property
    def user_guard(self) -> dict[str, Any]:
        """The ``guard`` settings the user wrote (``guard: true/false``: none)."""
        guard = self.base.get("guard")
        return dict(guard) if isinstance(guard, Mapping) else {}

    def rescue_guard(self, outcome: Outcome, step: int, order: Any) -> dict[str, int]:
        """The final run's guard settings, from ``step`` on, that keep its rescues within
        the budget: ``max_replay``, the steps the budget has left to run again, and
        ``snapshot_every`` so that two rescues fit in them
        (:func:`~lrpilot.autopilot._plan.rescue_snapshot_every`); ``order``: the final
        run's data order (:meth:`final_data`). A key the user's ``guard`` fixes is left out,
        and so is everything when the guard is off."""
        from lrpilot.autopilot._plan import compute_multiple, rescue_snapshot_every

        if not self.cfg.guard.enabled:
            return {}
        step_samples = self.batch * self.accumulate
        rest = order.total_steps(self.epochs) - step
        spent = self.one_run * compute_multiple(
            outcome.probes, outcome.trunk_samples, 0, self.one_run,
            outcome.finder_samples + self.batch_samples,
        )  # fmt: skip
        left = self.budget * self.one_run - spent - rest * step_samples
        out = {
            "max_replay": max(0, int(left // step_samples)),
            "snapshot_every": rescue_snapshot_every(
                left, step_samples, self.cfg.guard.snapshot_every
            ),
        }
        return {k: v for k, v in out.items() if k not in self.user_guard}

    def final_config(self, outcome: Outcome, guard: Mapping[str, int] | None = None) -> Any:
        """The final run's ``lrpilot fit`` config: the chosen peak and schedule (restart:
        the user's); ``guard``: settings added to its guard's (:meth:`rescue_guard`)."""
        from lrpilot.train._config import parse_config

        raw = {**self.base, "optimizer": {**self.opt, "lr": outcome.peak}}
        if guard:
            raw["guard"] = {**self.user_guard, **guard}
        if self.mode == "restart":
            raw["schedule"] = self.fixed_schedule
        else:
            raw["schedule"] = shapes.to_config(outcome.history)
            if outcome.momentum is not None:
                raw["schedule"]["momentum"] = outcome.momentum
        return parse_config(raw, task=self.fit_task)

    def header(self) -> dict[str, Any]:
        """What ``autopilot.json`` says about the request: free, fixed, sizes."""
        return {
            "version": AUTOPILOT_VERSION,
            "task": self.task.name,
            "mode": self.mode,
            "free": list(self.free),
            "fixed": self.fixed,
            "optimizer": self.opt,
            "epochs": self.epochs,
            "batch_size": self.batch,
            "accumulate": self.accumulate,
            "effective_batch": self.batch * self.accumulate,
            "budget": self.budget,
            "seed": self.seed,
            "batch": None if self.choice is None else self.choice.to_dict(),
        }

    def batch_decision(self) -> Decision:
        """The batch decision with the LR rule as applied here."""
        c = self.choice
        assert c is not None
        user_lr = self.fixed.get("lr")
        if "lr" in self.free:
            applied = f"not applied: the peak LR was searched at batch {c.effective}"
        elif isinstance(user_lr, (int, float)):
            applied = (
                f"optimizer.lr {user_lr:g} at batch {c.reference} -> {user_lr * c.lr_factor:.4g}"
            )
        else:
            applied = f"the schedule's LRs x {c.lr_factor:.4g} (lr_scaling in config.yaml)"
        evidence = {**c.evidence, "micro_batch": c.batch, "accumulate": c.accumulate}
        evidence.update(rule=c.rule, lr_factor=c.lr_factor, lr=applied, samples=c.samples)
        return Decision("batch_size", c.effective, c.reason, evidence)

    def report(self, outcome: Outcome, store: ProbeStore, final: Any) -> dict[str, Any]:
        """``autopilot.json`` before the final run (the compute is added after it);
        ``final``: the final run's config (:meth:`final_config`)."""
        decisions = [d.to_dict() for d in outcome.decisions]
        from lrpilot.train._builders import schedule_mapping

        # the schedule trained with (restart: the user's, the peak filled in; else the
        # trajectory and its momentum cycle)
        schedule: dict[str, Any] = schedule_mapping(final)
        if self.mode == "restart":
            decisions = [d for d in decisions if d["name"] != "schedule"]
            why = "fixed by the user; the final run trains from step 0 under it at the chosen peak"
            decisions.append(Decision("schedule", self.fixed_schedule, why).to_dict())
        if self.choice is not None:
            decisions.insert(0, self.batch_decision().to_dict())
        plan = outcome.plan or self.plan
        assert plan is not None
        return {
            **self.header(),
            "decision_split": {
                "samples": self.n_full - self.n_fit,
                "of": self.n_full,
                "trained_on_from_epoch": outcome.switch_epoch,  # 0-based, as in metrics.jsonl
            },
            "plan": plan.to_dict(),
            "prior": outcome.prior,
            "candidates": [p.to_dict() for p in outcome.probes],
            "decisions": decisions,
            "schedule": schedule,
            "decided_at_step": 0 if self.mode == "restart" else outcome.decided_at,
            "initial_score": store.state.get("initial_score"),
            "rescue_budget": self._rescue_record(final),
        }

    def _rescue_record(self, final: Any) -> dict[str, Any]:
        """``autopilot.json``'s record of the final run's guard replay settings and why."""
        fixed = sorted(k for k in ("max_replay", "snapshot_every") if k in self.user_guard)
        if not final.guard.enabled:
            why = "the guard is off (the user's guard settings): no rescue, nothing replayed"
        else:
            why = (
                "the final run's guard may run again only the steps the budget leaves after "
                "the plan; its snapshots are spaced so that two rescues fit"
            )
            if fixed:
                why += f" ({' and '.join(fixed)} as the user fixed)"
        return {
            "max_replay": final.guard.max_replay,
            "snapshot_every": final.guard.snapshot_every,
            "reason": why,
        }


def _check_one_process() -> None:
    """The autopilot runs in one process: its probes branch one engine, and its final run
    switches the training data (not under a process group)."""
    from lrpilot._distributed import launched_world_size

    world = launched_world_size()
    if world != 1:
        raise ConfigError(
            f"WORLD_SIZE={world} is not supported by the autopilot; allowed: 1 (lrpilot auto "
            "and auto values in a fit config run in one process, not under torchrun)"
        )


def _check_lr(lr: object) -> None:
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf
    ):
        raise ConfigError(f"lr={lr!r} is out of range; allowed: (0, inf) or None (auto)")


def _check_schedule(schedule: object, lr: object) -> None:
    if schedule is None or isinstance(schedule, Mapping):
        if isinstance(schedule, Mapping) and lr is None:
            from lrpilot.train._auto_config import auto_request

            auto_request({"optimizer": {"lr": AUTO}, "schedule": schedule})  # contradictions
        return
    if schedule not in shapes.SHAPES:
        raise ConfigError(
            f"schedule={schedule!r} is not valid; allowed: {', '.join(shapes.SHAPES)}, "
            "a lrpilot fit schedule mapping, or None (auto)"
        )


def _mode(req: Request) -> str:
    if req.lr is None and isinstance(req.schedule, Mapping):
        return "restart"
    if req.lr is not None and isinstance(req.schedule, Mapping):
        if req.batch_size != AUTO:
            raise ConfigError(
                "nothing is left to choose (lr and schedule fixed, batch_size fixed); "
                "allowed: leave lr or schedule free, or batch_size='auto'"
            )
        return "batch"
    return "search"


def settings(req: Request, choice: BatchChoice | None = None) -> Settings:
    """Validate the request (``ConfigError`` naming the value and the allowed range); with
    ``choice`` (the batch decision) the settings at the chosen batch."""
    _check_one_process()
    task = req.task
    budget = check_budget(req.budget)
    opt = optimizer_settings(task, req.optimizer)
    epochs = check_int(
        "epochs", task.defaults.get("epochs", 15) if req.epochs is None else req.epochs, low=1
    )
    batch_auto = req.batch_size == AUTO
    given = (
        task.defaults.get("batch_size", 64) if req.batch_size in (None, AUTO) else req.batch_size
    )
    reference = check_int("batch_size", given, low=1)
    check_seed(req.seed)
    _check_lr(req.lr)
    _check_schedule(req.schedule, req.lr)
    mode = _mode(req)
    n_full = len(task.train_set)  # type: ignore[arg-type]
    split = mode != "batch"
    n_fit = n_full - decision_size(n_full) if split else n_full
    batch, acc = (choice.batch, choice.accumulate) if choice else (reference, 1)
    if batch_auto:
        check_possible(reference, n_fit)
    elif batch > n_fit:
        raise ConfigError(
            f"batch_size={batch} is larger than the training part ({n_fit} of "
            f"{n_full} samples; {n_full - n_fit} are the decision split)"
        )
    fit_task, decision_set = split_task(task, req.seed) if split else (task, None)
    lr = req.lr
    if lr is not None and choice is not None and mode != "batch":
        lr = lr * choice.lr_factor
    base, cfg = _base_config(req, opt, epochs, batch, acc, lr, mode, choice, fit_task)
    acc = cfg.accumulate
    sizes = (n_full, n_fit, batch * acc, epochs, budget, choice, mode)
    plan = prior_plan = None
    if mode != "batch":
        plan, prior_plan = _sweeps(
            [_plan(*sizes), _plan(*sizes, candidates=PRIOR_CANDIDATES)], *sizes
        )
    fixed: dict[str, Any] = {
        k: v for k, v in (("lr", req.lr), ("batch_size", req.batch_size)) if v not in (None, AUTO)
    }
    if req.schedule is not None:
        fixed["schedule"] = copy.deepcopy(req.schedule)
    return Settings(
        task, fit_task, decision_set, opt, epochs, batch, acc, reference, budget, req.seed, lr,
        req.schedule if isinstance(req.schedule, str) else None,
        dict(req.schedule) if isinstance(req.schedule, Mapping) else None,
        req.free, fixed, mode, n_full, n_fit, base, cfg, plan, choice, prior_plan,
    )  # fmt: skip


def _base_config(req, opt, epochs, batch, acc, lr, mode, choice, fit_task):  # type: ignore[no-untyped-def]
    """The run's config with a placeholder schedule (``(raw, parsed)``); the user's other
    ``lrpilot fit`` keys are kept as written."""
    from lrpilot.train._config import TOP_KEYS, parse_config

    own = ("task", "epochs", "batch_size", "seed", "optimizer", "schedule")
    extra = {k: v for k, v in req.fit_config.items() if k not in own}
    bad = [k for k in extra if k not in TOP_KEYS]
    if bad:
        raise ConfigError(f"unknown config key {bad[0]!r}; valid: {', '.join(sorted(TOP_KEYS))}")
    base = {**extra, "task": req.task.name, "epochs": epochs, "batch_size": batch}
    base.update(seed=req.seed, optimizer={**opt, "lr": 1e-3 if lr is None else lr})
    if acc > 1:
        base["accumulate"] = acc
    if mode == "batch":
        base["schedule"] = copy.deepcopy(dict(req.schedule))  # type: ignore[arg-type]
        if choice is not None:
            base["lr_scaling"] = {"rule": choice.rule, "base_batch": choice.reference}
    else:
        base["schedule"] = {"name": "constant", "lr": 1e-3}
    probe = dict(base)
    if mode == "restart":  # the user's schedule must build (validated now)
        probe["schedule"] = copy.deepcopy(dict(req.schedule))  # type: ignore[arg-type]
    parse_config(probe, task=fit_task)
    from lrpilot.train._engine import plan_run

    plan_run(probe, fit_task)
    return base, parse_config(base, task=fit_task)


#: first-round candidates around a finder suggestion (:func:`~lrpilot.autopilot._ladder.first_round`):
#: the suggestion and a half decade each side. (Method a7m tried a fourth, 10x the
#: suggestion: it had the lowest decision loss in 1 of its 24 panel runs with a suggestion;
#: its branch pays for training on the decision split after the decision.)
PRIOR_CANDIDATES = 3


def _sweeps(plans, n_full, n_fit, batch, epochs, budget, choice, mode):  # type: ignore[no-untyped-def]
    """``plans`` with the finder sweeps they all afford (:func:`~lrpilot.autopilot._plan.with_sweeps`)
    within what the batch decision left of the budget, as :func:`_plan` counts it. In
    ``restart`` mode the plans were cut to fit their kept holds too: one sweep."""
    from lrpilot.autopilot._plan import MIN_BUDGET
    from lrpilot.finder.protocol import probe_plan

    if mode == "restart":
        return plans
    one_run = epochs * n_full
    left = budget - (0 if choice is None else choice.samples / one_run)
    finder = probe_plan(n_fit, batch).samples_budget
    return with_sweeps(plans, finder, one_run, max(MIN_BUDGET, left))


def _plan(n_full, n_fit, batch, epochs, budget, choice, mode, candidates=4) -> ProbePlan:  # type: ignore[no-untyped-def]
    """The probe plan within what the batch decision left of the budget; in ``restart`` mode
    the probes' kept holds are spent too (the final run starts again from step 0)."""
    from lrpilot.autopilot._plan import MIN_BUDGET
    from lrpilot.finder.protocol import probe_plan

    finder = probe_plan(n_fit, batch).samples_budget
    one_run = epochs * n_full
    left = budget - (0 if choice is None else choice.samples / one_run)
    b = max(MIN_BUDGET, left)
    for _ in range(40):
        plan = make_plan(n_full, n_fit, batch, epochs, b, finder, candidates)
        if mode != "restart" or plan.n1 == 0:
            return plan
        # restart: the kept holds are spent too, and the final run is all the data from
        # step 0 (the plan's trajectory had its first switch_epoch epochs on the rest)
        kept = plan.decided_at * (n_fit / plan.steps_per_epoch)
        kept += plan.switch_epoch * (n_full - n_fit)
        over = plan.expected_multiple + kept / one_run - left
        if over <= 0:
            return plan
        if b - over - 1e-3 < MIN_BUDGET:
            break
        b -= over + 1e-3
    return no_probe_plan(
        n_full, n_fit, batch, epochs,
        f"budget {budget:g} leaves no room for probes before a full run: no search",
    )  # fmt: skip
