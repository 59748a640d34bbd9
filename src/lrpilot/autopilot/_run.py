"""``lrpilot.auto``: pick the peak LR, warmup and schedule shape within a compute budget,
then train, in one ordinary run directory.

The run directory is what ``lrpilot fit`` writes (``config.yaml`` with the chosen schedule
spelled out, ``metrics.jsonl``, TensorBoard, checkpoints, ``summary.json`` with its
diagnosis) plus ``autopilot.json`` (every candidate, its cost, its evidence, each decision
and why), ``autopilot.png`` and ``autopilot/`` (the probe phase's state, for ``resume``).
The final run is the engine fit drives (:class:`lrpilot.train.Engine`); the probes branch
from the same engine before fit's loop starts (:mod:`lrpilot.autopilot._probe`), so there is
one training step in the library.

``compute_multiple`` = every forward+backward sample (finder sweep, shared warmup, every
probe's hold and cooldown, the final run after the decision) / (epochs x training-set
size); it is in ``summary.json`` and ``autopilot.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lrpilot.autopilot import _shapes as shapes
from lrpilot.autopilot._advice import qualify_lr_advice
from lrpilot.autopilot._batch import measure_and_choose
from lrpilot.autopilot._plan import compute_multiple
from lrpilot.autopilot._prior import finder_prior
from lrpilot.autopilot._probe import Outcome, Prober, ProbeStore
from lrpilot.autopilot._request import OPTIMIZER_FAMILY, Request, Settings, settings, user_task
from lrpilot.autopilot._split import sample_losses
from lrpilot.errors import ConfigError
from lrpilot.tasks import Task, get_task
from lrpilot.train._auto_config import AUTO, any_auto
from lrpilot.train._callbacks import Callback
from lrpilot.train._result import RunResult


#: optimizers the autopilot knows the family of (``sgd``: linear LR scaling, else Adam)
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
    batch_size: int | str | None = None,
    budget: float = 1.3,
    seed: int = 0,
    lr: float | None = None,
    schedule: str | Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: str = "auto",
    say: Callable[[str], None] | None = None,
    fit_config: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Choose what is free (the peak LR, warmup and schedule shape; the batch size when
    ``batch_size="auto"``) within ``budget`` x one run's compute, train, and return the
    :class:`~lrpilot.train.RunResult` of the run directory.

    ``task``: a :class:`~lrpilot.Task`, a built-in name or ``"module:function"``; or give
    ``model`` (a factory), ``loss_fn``, ``train_set``, ``val_set`` (and ``metrics``).
    ``optimizer``: ``"sgd"``, ``"adamw"``, ``"adam"`` or a mapping of its settings (no
    ``lr``). What the user fixes stays: ``lr`` (the peak; with ``batch_size="auto"`` the
    LR at the reference batch, scaled by the rule), ``schedule`` (a shape name, one of
    ``one_cycle``, ``cosine``, ``wsd``: the warmup is still chosen; or a ``lrpilot fit``
    schedule mapping without its LR: only the peak is chosen and the final run trains from
    step 0 under that schedule), ``fit_config`` (any other ``lrpilot fit`` keys, e.g.
    ``grad_clip``, ``amp``, ``guard``, kept as written). ``autopilot.json`` records what
    was free, what was fixed, and each decision with its evidence. Example (seconds)::

        import lrpilot
        result = lrpilot.auto("mnist1d-mlp", epochs=3, out_dir="runs/auto-demo")
        result.summary["autopilot"]["compute_multiple"]

    Method and references: :mod:`lrpilot.autopilot._probe`, :mod:`lrpilot.autopilot._decide`,
    :mod:`lrpilot.autopilot._batch`.
    """
    if task is None:
        task = user_task(model, loss_fn, train_set, val_set, metrics)
    req = Request(
        get_task(task), optimizer, epochs, batch_size, budget, seed, lr, schedule,
        dict(fit_config or {}),
    )  # fmt: skip
    return _drive(req, out_dir, resume, progress, say, callbacks)


def _drive(  # type: ignore[no-untyped-def]
    req: Request, out_dir, resume: bool, progress: str, say, callbacks, request=None
) -> RunResult:
    """:func:`auto` once its arguments are gathered; ``request``: the ``lrpilot fit`` config
    with its ``auto`` values, kept as ``autopilot/request.yaml`` (``lrpilot fit --resume``
    without a config reads it)."""
    st = settings(req)
    run_dir = _run_dir(st, out_dir, resume)
    if request is not None and not resume:
        import yaml

        from lrpilot._atomic_io import atomic_write_bytes

        (run_dir / "autopilot").mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(dict(request), sort_keys=False)
        atomic_write_bytes(text.encode(), run_dir / "autopilot" / REQUEST_FILE)
    loud = say if say is not None else (print if progress != "none" else (lambda _m: None))
    if "batch_size" in st.free:
        from lrpilot.train._builders import resolve_device

        device = str(resolve_device(st.cfg.device))
        loud("lrpilot auto: measuring the memory limit and the gradient noise scale")
        probed = st.fit_task  # the model the run trains: the config's model settings applied
        if st.cfg.model:
            probed = replace(probed, build_model=partial(probed.build_model, **st.cfg.model))
        choice = measure_and_choose(
            probed, st.opt["name"], st.reference_batch, st.seed, device, run_dir / "autopilot"
        )
        st = settings(req, choice)
    if st.mode == "batch":
        return _batch_only(st, run_dir, resume, progress, callbacks)
    return _search(st, run_dir, resume, progress, callbacks, lambda m: loud(f"lrpilot auto: {m}"))


def _search(st: Settings, run_dir: Path, resume: bool, progress: str, callbacks, say) -> RunResult:  # type: ignore[no-untyped-def]
    """The probe phase through fit's ``prepare`` seam, then fit's loop on the same engine."""
    from lrpilot.autopilot._report import finish_report, write_plan_report
    from lrpilot.train import fit
    from lrpilot.train._loop import Prepared

    held: dict[str, Any] = {}

    def prepare(engine: Any, rd: Path) -> Any:
        store = ProbeStore(rd / "autopilot")
        outcome = _probe(st, engine, store, say)
        if st.mode == "restart":  # only the peak was free: train from step 0 under the user's
            taken = store.state["segments"]["start"]  # the schedule "start" was taken under
            engine.set_schedule(shapes.to_schedule([(int(n), p) for n, p in taken]))
            engine.restore(store.get_snapshot("start"))
            outcome = replace(outcome, switch_epoch=0)  # a new run: all the data at once
        data = st.final_data(outcome)
        final = st.final_config(outcome, st.rescue_guard(outcome, engine.state.step, data[1]))
        held.update(outcome=outcome, at=engine.state.samples, info=st.report(outcome, store, final))
        write_plan_report(rd, held["info"], outcome)
        # the final run starts from a trained state: its guard's stall rule compares with
        # the loss of the model as initialised, the trunk's first; it trains on the
        # decision split too from outcome.switch_epoch on
        # the diagnosis's LR advice is weighed against the candidates measured (_advice)
        qualify = partial(qualify_lr_advice, probes=outcome.probes, pick=outcome.peak)
        return Prepared(final, outcome.first_loss, train_data=data, qualify_findings=qualify)

    result = fit(
        st.cfg, run_dir, resume=resume, progress=progress, task=st.fit_task,
        callbacks=callbacks, prepare=prepare,
    )  # fmt: skip
    outcome, info = held["outcome"], held["info"]
    tail = result.summary["samples_seen"] - held["at"]
    extra = outcome.finder_samples + st.batch_samples
    info["compute"] = {
        "batch_samples": st.batch_samples,
        "finder_samples": outcome.finder_samples,
        "trunk_samples": outcome.trunk_samples,
        "probe_samples": sum(p.samples for p in outcome.probes),
        "tail_samples": tail,
        "one_run_samples": st.one_run,
        "compute_multiple": compute_multiple(
            outcome.probes, outcome.trunk_samples, tail, st.one_run, extra
        ),
    }
    return replace(result, summary=finish_report(run_dir, info, result.summary))


def _batch_only(st: Settings, run_dir: Path, resume: bool, progress: str, callbacks) -> RunResult:  # type: ignore[no-untyped-def]
    """Only the batch size was free: fit at the chosen batch, the LR by the rule."""
    from lrpilot.autopilot._report import finish_report
    from lrpilot.train import fit

    result = fit(
        st.cfg, run_dir, resume=resume, progress=progress, task=st.fit_task,
        callbacks=callbacks, prepare=lambda _engine, _rd: None,
    )  # fmt: skip
    info = st.header()
    info["decisions"] = [st.batch_decision().to_dict()]
    samples = result.summary["samples_seen"]
    info["compute"] = {
        "batch_samples": st.batch_samples,
        "tail_samples": samples,
        "one_run_samples": st.one_run,
        "compute_multiple": (samples + st.batch_samples) / st.one_run,
    }
    return replace(result, summary=finish_report(run_dir, info, result.summary))


#: the ``lrpilot fit`` config of an auto fit, in the run's ``autopilot/`` directory
REQUEST_FILE = "request.yaml"


def _run_dir(st: Settings, out_dir: str | Path | None, resume: bool) -> Path:
    from lrpilot.train._loop import _default_run_dir

    run_dir = Path(out_dir) if out_dir is not None else _default_run_dir(st.task.name)
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"run directory {run_dir} already holds files; use --resume or another --out"
        )
    if resume and not (run_dir / "autopilot").is_dir():
        raise ConfigError(f"cannot resume: {run_dir / 'autopilot'} does not exist")
    return run_dir


def _probe(st: Settings, engine: Any, store: ProbeStore, say: Callable[[str], None]) -> Outcome:
    """The probe phase on the engine (:class:`~lrpilot.autopilot._probe.Prober`)."""
    task, held_out = st.task, st.decision_set
    assert st.plan is not None and held_out is not None
    metric_fns = {"accuracy": task.metrics["accuracy"]} if "accuracy" in task.metrics else {}

    def scorer(m: nn.Module) -> tuple[list[float], dict[str, float]]:
        return sample_losses(m, task.loss_fn, held_out, engine.device, metric_fns)

    sweeps = st.plan.sweeps  # the plan with a suggestion and the one without agree

    def prior(eng: Any) -> dict:
        return finder_prior(eng, st.fit_task, st.batch * st.accumulate, st.seed, sweeps)

    family = OPTIMIZER_FAMILY[st.opt["name"]]
    prober = Prober(
        engine, st.plan, scorer, family, store, prior, st.shape, st.lr, say=say,
        prior_plan=st.prior_plan, cycles_momentum=st.cycles_momentum,
    )  # fmt: skip
    return prober.run()


def load_report(run_dir: str | Path) -> dict:
    """``autopilot.json`` of a run directory."""
    return json.loads((Path(run_dir) / "autopilot.json").read_text())


def fit_auto(
    raw: Mapping[str, Any],
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: str = "auto",
    task: Task | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """``lrpilot fit`` of a config with ``auto`` values (:mod:`lrpilot.train._auto_config`):
    the fixed part is validated as fit validates it, then :func:`auto` chooses what is free
    (default budget) and trains. Resume with the same config and ``resume=True``."""
    from lrpilot.train._auto_config import auto_request
    from lrpilot.train._config import parse_config

    req = auto_request(raw)
    fixed = dict(req.raw)
    if task is not None and "task" not in fixed:
        fixed["task"] = task.name
    cfg = parse_config(fixed, task=task)  # unknown keys, ranges: before anything is written
    the_task = task if task is not None and cfg.task == task.name else get_task(cfg.task)
    opt = {k: v for k, v in dict(fixed.get("optimizer") or {}).items() if k != "lr"}
    opt["name"] = cfg.optimizer.name
    schedule = None
    if "schedule" not in req.free:
        schedule = fixed.get("schedule") or {"name": "constant"}  # fit's default: constant
    own = ("task", "epochs", "batch_size", "seed", "optimizer", "schedule")
    request = Request(
        the_task, opt, cfg.epochs, AUTO if "batch_size" in req.free else cfg.batch_size, 1.3,
        cfg.seed, None if "lr" in req.free else cfg.optimizer.lr, schedule,
        {k: v for k, v in fixed.items() if k not in own},
    )  # fmt: skip
    loud = print if progress != "none" else (lambda _m: None)
    keep = dict(raw) if isinstance(raw.get("task"), str) else None  # a Task object: no file
    return _drive(request, out_dir, resume, progress, loud, callbacks, keep)


def fit(
    config: Any,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: str = "auto",
    task: Task | None = None,
    callbacks: Sequence[Callback] = (),
    prepare: Any = None,
) -> RunResult:
    """``lrpilot.fit`` and ``lrpilot fit``: :func:`lrpilot.train.fit`, except that a config
    with ``auto`` values (:mod:`lrpilot.train._auto_config`) goes to :func:`fit_auto`, where
    the autopilot chooses them. Same arguments as :func:`lrpilot.train.fit`; the dispatch
    lives here, above the training package, so ``lrpilot.train`` never imports the
    autopilot."""
    from lrpilot.train import fit as train_fit
    from lrpilot.train._fitcheck import resolve_raw
    from lrpilot.train._sources import apply_overrides

    raw = apply_overrides(resolve_raw(config), list(overrides))
    if prepare is None and any_auto(raw):
        return fit_auto(
            raw, out_dir, resume=resume, progress=progress, task=task, callbacks=callbacks
        )
    return train_fit(
        raw, out_dir, resume=resume, progress=progress, task=task, callbacks=callbacks,
        prepare=prepare,
    )  # fmt: skip
