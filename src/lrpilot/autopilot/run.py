"""``lrpilot.auto``: pick the peak LR, warmup and schedule shape within a compute budget,
then train, in one ordinary run directory.

The run directory is what ``lrpilot fit`` writes (``config.yaml`` with the chosen schedule
spelled out, ``metrics.jsonl``, TensorBoard, checkpoints, ``summary.json`` with its
diagnosis) plus ``autopilot.json`` (every candidate, its cost, its evidence, each decision
and why), ``autopilot.png`` and ``autopilot/`` (the probe phase's state, for ``resume``).
The final run is the engine fit drives (:class:`lrpilot.train.Engine`); the probes branch
from the same engine before fit's loop starts (:mod:`lrpilot.autopilot.probe`), so there is
one training step in the library.

``compute_multiple`` = every forward+backward sample (finder sweep, shared warmup, every
probe's hold and cooldown, the final run after the decision) / (epochs x training-set
size); it is in ``summary.json`` and ``autopilot.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lrpilot.autopilot import shapes
from lrpilot.autopilot.decide import compute_multiple
from lrpilot.autopilot.plan import ProbePlan, check_budget, make_plan
from lrpilot.autopilot.probe import Outcome, Prober, ProbeStore
from lrpilot.autopilot.split import decision_size, sample_losses, split_task
from lrpilot.errors import ConfigError, check_int
from lrpilot.tasks import Task, get_task
from lrpilot.train.result import RunResult

#: optimizers the autopilot knows the family of (``sgd``: linear LR scaling, else Adam)
OPTIMIZER_FAMILY = {"sgd": "sgd", "adamw": "adam", "adam": "adam"}
AUTOPILOT_VERSION = 1


def _user_task(model, loss_fn, train_set, val_set, metrics) -> Task:  # type: ignore[no-untyped-def]
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


def _optimizer(task: Task, optimizer: str | Mapping[str, Any] | None) -> dict[str, Any]:
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


def auto(
    task: Task | str | None = None,
    *,
    model: Callable[[], nn.Module] | None = None,
    loss_fn: Callable[..., Any] | None = None,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    metrics: Mapping[str, Callable[..., float]] | None = None,
    optimizer: str | Mapping[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    budget: float = 1.3,
    seed: int = 0,
    lr: float | None = None,
    schedule: str | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: str = "auto",
    say: Callable[[str], None] | None = None,
) -> RunResult:
    """Choose the peak LR, warmup and schedule shape within ``budget`` x one run's compute,
    train, and return the :class:`~lrpilot.train.RunResult` of the run directory.

    ``task``: a :class:`~lrpilot.Task`, a built-in name or ``"module:function"``; or give
    ``model`` (a factory), ``loss_fn``, ``train_set``, ``val_set`` (and ``metrics``).
    ``optimizer``: ``"sgd"``, ``"adamw"``, ``"adam"`` or a mapping of its settings (no
    ``lr``); ``lr``/``schedule`` fix what the user wants fixed (``schedule`` one of
    ``one_cycle``, ``cosine``, ``wsd``). Example (a few seconds)::

        import lrpilot
        result = lrpilot.auto("mnist1d-mlp", epochs=3, out_dir="runs/auto-demo")
        result.summary["autopilot"]["compute_multiple"]

    Method and references: :mod:`lrpilot.autopilot.probe`, :mod:`lrpilot.autopilot.decide`.
    """
    from lrpilot.train.loop import _Run

    if task is None:
        task = _user_task(model, loss_fn, train_set, val_set, metrics)
    st = _settings(get_task(task), optimizer, epochs, batch_size, budget, seed, lr, schedule)
    run_dir = _run_dir(st, out_dir, resume)
    run = _Run(st.cfg, st.fit_task, run_dir, progress)
    loud = say if say is not None else (print if progress != "none" else (lambda _m: None))
    store = ProbeStore(run_dir / "autopilot")
    outcome = _probe(st, run.engine, store, lambda msg: loud(f"lrpilot auto: {msg}"))
    at_decision = run.engine.state.samples
    # the run directory's config.yaml holds the schedule trained with
    run.cfg = st.final_config(outcome)
    info = st.report(outcome, store)
    from lrpilot.autopilot.report import finish_report, write_plan_report

    write_plan_report(run_dir, info, outcome)
    ckpts = run_dir / "checkpoints"
    result = run.run(resume and ckpts.is_dir() and any(ckpts.iterdir()))
    tail = result.summary["samples_seen"] - at_decision
    one_run = st.epochs * st.n_full
    info["compute"] = {
        "finder_samples": outcome.finder_samples,
        "trunk_samples": outcome.trunk_samples,
        "probe_samples": sum(p.samples for p in outcome.probes),
        "tail_samples": tail,
        "one_run_samples": one_run,
        "compute_multiple": compute_multiple(
            outcome.probes, outcome.trunk_samples, tail, one_run, outcome.finder_samples
        ),
    }
    return replace(result, summary=finish_report(run_dir, info, result.summary))


@dataclass(frozen=True)
class _Settings:
    """Everything ``auto`` validated before any file is written."""

    task: Task
    fit_task: Task
    decision_set: Dataset
    opt: dict[str, Any]
    epochs: int
    batch: int
    budget: float
    seed: int
    lr: float | None
    schedule: str | None
    n_full: int
    n_fit: int
    base: dict[str, Any]
    cfg: Any
    plan: ProbePlan

    def final_config(self, outcome: Outcome) -> Any:
        from lrpilot.train.config import parse_config

        raw = {**self.base, "optimizer": {**self.opt, "lr": outcome.peak}}
        raw["schedule"] = shapes.to_config(outcome.history)
        return parse_config(raw, task=self.fit_task)

    def report(self, outcome: Outcome, store: ProbeStore) -> dict[str, Any]:
        """``autopilot.json`` before the final run (the compute is added after it)."""
        return {
            "version": AUTOPILOT_VERSION,
            "task": self.task.name,
            "optimizer": self.opt,
            "epochs": self.epochs,
            "batch_size": self.batch,
            "budget": self.budget,
            "seed": self.seed,
            "decision_split": {"samples": self.n_full - self.n_fit, "of": self.n_full},
            "plan": self.plan.to_dict(),
            "prior": outcome.prior,
            "candidates": [p.to_dict() for p in outcome.probes],
            "decisions": [d.to_dict() for d in outcome.decisions],
            "schedule": shapes.to_config(outcome.history),
            "decided_at_step": outcome.decided_at,
            "initial_score": store.state.get("initial_score"),
        }


def _settings(task, optimizer, epochs, batch_size, budget, seed, lr, schedule) -> _Settings:  # type: ignore[no-untyped-def]
    """Validate the arguments (``ConfigError`` naming the value and the allowed range)."""
    from lrpilot.finder.protocol import probe_plan
    from lrpilot.train.config import parse_config

    budget = check_budget(budget)
    opt = _optimizer(task, optimizer)
    epochs = check_int(
        "epochs", task.defaults.get("epochs", 15) if epochs is None else epochs, low=1
    )
    batch = check_int(
        "batch_size",
        task.defaults.get("batch_size", 64) if batch_size is None else batch_size,
        low=1,
    )
    check_int("seed", seed, low=0)
    if lr is not None and (not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
        raise ConfigError(f"lr={lr!r} is out of range; allowed: (0, inf) or None (auto)")
    if schedule is not None and schedule not in shapes.SHAPES:
        raise ConfigError(
            f"schedule={schedule!r} is not valid; allowed: "
            f"{', '.join(shapes.SHAPES)} or None (auto)"
        )
    n_full = len(task.train_set)
    n_fit = n_full - decision_size(n_full)
    if batch > n_fit:
        raise ConfigError(
            f"batch_size={batch} is larger than the training part ({n_fit} of "
            f"{n_full} samples; {n_full - n_fit} are the decision split)"
        )
    fit_task, decision_set = split_task(task, seed)
    base = {
        "task": task.name,
        "epochs": epochs,
        "batch_size": batch,
        "seed": seed,
        "optimizer": {**opt, "lr": 1e-3},
        "schedule": {"name": "constant", "lr": 1e-3},
    }
    cfg = parse_config(base, task=fit_task)  # validates the rest before any file
    plan = make_plan(n_full, n_fit, batch, epochs, budget, probe_plan(n_fit, batch).samples_budget)
    return _Settings(
        task,
        fit_task,
        decision_set,
        opt,
        epochs,
        batch,
        budget,
        seed,
        lr,
        schedule,
        n_full,
        n_fit,
        base,
        cfg,
        plan,
    )


def _run_dir(st: _Settings, out_dir: str | Path | None, resume: bool) -> Path:
    from lrpilot.train.loop import _default_run_dir

    run_dir = Path(out_dir) if out_dir is not None else _default_run_dir(st.task.name)
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"run directory {run_dir} already holds files; use --resume or another --out"
        )
    if resume and not (run_dir / "autopilot" / "state.json").is_file():
        raise ConfigError(f"cannot resume: {run_dir / 'autopilot' / 'state.json'} does not exist")
    return run_dir


def _probe(st: _Settings, engine: Any, store: ProbeStore, say: Callable[[str], None]) -> Outcome:
    """The probe phase on the engine (:class:`~lrpilot.autopilot.probe.Prober`)."""
    task = st.task
    metric_fns = {"accuracy": task.metrics["accuracy"]} if "accuracy" in task.metrics else {}

    def scorer(m: nn.Module) -> tuple[list[float], dict[str, float]]:
        return sample_losses(m, task.loss_fn, st.decision_set, engine.device, metric_fns)

    def prior(eng: Any) -> dict:
        return finder_prior(eng, st.fit_task, st.batch, st.seed)

    family = OPTIMIZER_FAMILY[st.opt["name"]]
    prober = Prober(engine, st.plan, scorer, family, store, prior, st.schedule, st.lr, say=say)
    return prober.run()


def finder_prior(engine: Any, fit_task: Task, batch: int, seed: int) -> dict:
    """The finder's sweep on the engine's model and optimizer (``lrpilot.find_lr``, the
    protocol of ``lrpilot find``: half an epoch at batch ``batch // 8``); everything it
    touches is restored by ``find_lr``. Returns what the decisions read."""
    import torch
    from torch.utils.data import DataLoader

    from lrpilot.finder import find_lr
    from lrpilot.finder.protocol import probe_plan

    pp = probe_plan(len(fit_task.train_set), batch)  # type: ignore[arg-type]
    loader = DataLoader(
        fit_task.train_set,
        batch_size=pp.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    res = find_lr(
        engine.model,
        engine.optimizer,
        fit_task.loss_fn,
        loader,
        start_lr=pp.start_lr,
        end_lr=pp.end_lr,
        steps=pp.steps,
        schedule="one_cycle",
        batch_ratio=batch / pp.batch_size,
    )
    return {
        "verdict": res.verdict,
        "suggestion": res.suggestion,
        "interval": list(res.suggestion_interval) if res.suggestion_interval else None,
        "samples": int(res.samples),
        "probe_batch": pp.batch_size,
        "message": getattr(res, "message", ""),
    }


def load_report(run_dir: str | Path) -> dict:
    """``autopilot.json`` of a run directory."""
    return json.loads((Path(run_dir) / "autopilot.json").read_text())
