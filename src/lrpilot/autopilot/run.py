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
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lrpilot.autopilot import shapes
from lrpilot.autopilot.decide import compute_multiple
from lrpilot.autopilot.plan import check_budget, make_plan
from lrpilot.autopilot.probe import Prober, ProbeStore
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
    from lrpilot.autopilot.report import finish_report, write_plan_report
    from lrpilot.train.config import parse_config
    from lrpilot.train.loop import _default_run_dir, _Run

    budget = check_budget(budget)
    task = (
        get_task(task)
        if task is not None
        else _user_task(model, loss_fn, train_set, val_set, metrics)
    )
    opt = _optimizer(task, optimizer)
    epochs = check_int(
        "epochs", epochs if epochs is not None else task.defaults.get("epochs", 15), low=1
    )
    n_full = len(task.train_set)  # type: ignore[arg-type]
    batch = check_int(
        "batch_size",
        batch_size if batch_size is not None else task.defaults.get("batch_size", 64),
        low=1,
    )
    check_int("seed", seed, low=0)
    if lr is not None and (not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
        raise ConfigError(f"lr={lr!r} is out of range; allowed: (0, inf) or None (auto)")
    if schedule is not None and schedule not in shapes.SHAPES:
        raise ConfigError(
            f"schedule={schedule!r} is not valid; allowed: {', '.join(shapes.SHAPES)}"
            " or None (auto)"
        )
    fit_task, decision_set = split_task(task, seed)
    n_fit = n_full - decision_size(n_full)
    if batch > n_fit:
        raise ConfigError(
            f"batch_size={batch} is larger than the training part ({n_fit} of "
            f"{n_full} samples; {n_full - n_fit} are the decision split)"
        )
    base = {
        "task": task.name,
        "epochs": epochs,
        "batch_size": batch,
        "seed": seed,
        "optimizer": {**opt, "lr": 1e-3},
        "schedule": {"name": "constant", "lr": 1e-3},
    }
    cfg = parse_config(base, task=fit_task)  # validates everything before any file
    run_dir = Path(out_dir) if out_dir is not None else _default_run_dir(task.name)
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"run directory {run_dir} already holds files; use --resume or another --out"
        )
    if resume and not (run_dir / "autopilot" / "state.json").is_file():
        raise ConfigError(f"cannot resume: {run_dir / 'autopilot' / 'state.json'} does not exist")
    from lrpilot.finder.protocol import probe_plan

    finder_cost = probe_plan(n_fit, batch).samples_budget
    plan = make_plan(n_full, n_fit, batch, epochs, budget, finder_cost)
    family = OPTIMIZER_FAMILY[opt["name"]]
    run = _Run(cfg, fit_task, run_dir, progress)
    engine = run.engine
    loud = say if say is not None else (print if progress != "none" else (lambda _m: None))
    store = ProbeStore(run_dir / "autopilot")
    metric_fns = {"accuracy": task.metrics["accuracy"]} if "accuracy" in task.metrics else {}

    def scorer(m: nn.Module) -> tuple[list[float], dict[str, float]]:
        return sample_losses(m, task.loss_fn, decision_set, engine.device, metric_fns)

    def prior(eng: Any) -> dict:
        return finder_prior(eng, fit_task, batch, seed)

    prober = Prober(
        engine,
        plan,
        scorer,
        family,
        store,
        prior,
        schedule,
        lr,
        say=lambda msg: loud(f"lrpilot auto: {msg}"),
    )
    outcome = prober.run()
    at_decision = engine.state.samples
    final_cfg = parse_config(
        {
            **base,
            "optimizer": {**opt, "lr": outcome.peak},
            "schedule": shapes.to_config(outcome.history),
        },
        task=fit_task,
    )
    run.cfg = final_cfg  # the run directory's config.yaml holds the schedule trained with
    info = {
        "version": AUTOPILOT_VERSION,
        "task": task.name,
        "optimizer": opt,
        "epochs": epochs,
        "batch_size": batch,
        "budget": budget,
        "seed": seed,
        "decision_split": {"samples": n_full - n_fit, "of": n_full},
        "plan": plan.to_dict(),
        "prior": outcome.prior,
        "candidates": [p.to_dict() for p in outcome.probes],
        "decisions": [d.to_dict() for d in outcome.decisions],
        "schedule": shapes.to_config(outcome.history),
        "decided_at_step": outcome.decided_at,
        "initial_score": store.state.get("initial_score"),
    }
    write_plan_report(run_dir, info, outcome)
    has_ckpt = (
        resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    )
    result = run.run(has_ckpt)
    tail = result.summary["samples_seen"] - at_decision
    multiple = compute_multiple(
        outcome.probes,
        outcome.trunk_samples,
        tail,
        epochs * n_full,
        extra_samples=outcome.finder_samples,
    )
    info["compute"] = {
        "finder_samples": outcome.finder_samples,
        "trunk_samples": outcome.trunk_samples,
        "probe_samples": sum(p.samples for p in outcome.probes),
        "tail_samples": tail,
        "one_run_samples": epochs * n_full,
        "compute_multiple": multiple,
    }
    summary = finish_report(run_dir, info, result.summary)
    return replace(result, summary=summary)


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
