"""The Optuna backend of ``lrpilot tune``: storage ladder, study, workers.

Storage (:func:`storage_spec`): one worker, a SQLite file ``study.db`` in the study
directory; ``--workers K`` on one machine, Optuna's JournalStorage on the file
``journal.log`` (SQLite locks under concurrent writers); many machines, any SQLAlchemy URL
(PostgreSQL), each machine running the same ``lrpilot tune ... --storage URL --study NAME``.
``--storage`` also takes a path ending in ``.log`` or ``.journal`` (a journal file).

A worker (:func:`work`) asks for a trial, runs it (:func:`lrpilot.search._runner.run_trial`)
and tells the result, until the study holds ``trials`` finished trials (complete, pruned or
failed, not counting a failed trial that was retried) and nothing is waiting or running.
Re-running the same command therefore resumes the study up to ``trials``; several workers
may start one trial too many between them (as with Optuna's ``MaxTrialsCallback``).

Failures: on an RDB storage (SQLite, PostgreSQL) each running trial records a heartbeat
every ``heartbeat`` seconds; a trial without one for ``3 * heartbeat`` seconds (its worker
was killed) is failed by the next worker that looks, and Optuna's retry callback queues a
copy with the same parameters, which resumes the original trial's run directory from its
last checkpoint (``lrpilot fit --resume``). The journal file has no heartbeats: trials left
RUNNING by a killed ``lrpilot tune`` are failed and queued again when the command starts
(:func:`reclaim_orphans`; one command per journal file). A trial whose child fails on its
own (a crash, a diverged run) is failed and not retried: it would fail again.

Pruning (:func:`make_pruner`): a trial reports its metric after every epoch at step
``epochs trained`` (1, 2, ..., as the Ray backend does). ``--prune-warmup E``: no trial is
pruned before it has trained ``E`` epochs (median: ``n_warmup_steps = E``; Hyperband: the
first rung at ``min_resource = E`` epochs, then ``E * 3``, ``E * 9``, ... up to the full
run); ``--prune-startup N`` (median): the median pruner waits for ``N`` completed trials.
Defaults: median, warm-up 0 and :func:`median_startup` trials; Hyperband, ``min_resource``
1; reduction factor 3.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.search import require
from lrpilot.search._runner import fit_argv, run_trial
from lrpilot.search._space import Param, decode_values, space_from_dicts, to_optuna

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
JOURNAL_SUFFIXES = (".log", ".journal")
MAX_RETRY = 3


@dataclass
class TuneSpec:
    """Everything a worker needs (the CLI builds it; workers get it on their command line)."""

    config: Path
    base: dict
    params: list[Param]
    trials: int
    out: Path
    study_name: str
    metric: str
    direction: str
    full_epochs: int
    storage: str | None = None
    workers: int = 1
    sampler: str = "tpe"
    pruner: str = "median"
    prune_warmup: int | None = None
    prune_startup: int | None = None
    sampler_startup: int | None = None
    seed: int = 0
    heartbeat: int = 10
    launcher: str | None = None
    env: dict | None = field(default=None, repr=False)
    #: ``--seed-trial``: ``"finder"`` queues the finder's point as the study's first trial
    seed_trial: str | None = None
    #: the ``auto_range`` finder's record (:func:`lrpilot.search._space.auto_lr_finder`),
    #: filled when the study is created and reloaded from it afterwards; ``{}`` without one
    finder: dict = field(default_factory=dict)


def storage_spec(spec: TuneSpec) -> str:
    """The storage actually used: ``--storage`` as given, else the journal file when
    several workers run here (or one already exists), else ``sqlite:///OUT/study.db``."""
    if spec.storage:
        return spec.storage
    journal = spec.out / "journal.log"
    if spec.workers > 1 or journal.exists():
        return str(journal)
    return f"sqlite:///{spec.out / 'study.db'}"


def is_journal(storage: str) -> bool:
    return "://" not in storage and storage.endswith(JOURNAL_SUFFIXES)


def make_storage(storage: str, heartbeat: int) -> Any:
    """An Optuna storage for a SQLAlchemy URL (heartbeats and retries on) or a journal file
    (``JournalFileBackend``, named ``JournalFileStorage`` before Optuna 4)."""
    optuna = require("optuna")
    with_warnings_off(optuna)
    if is_journal(storage):
        journal = optuna.storages.journal if hasattr(optuna.storages, "journal") else None
        backend = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(backend(str(storage)))
    if "://" not in storage:
        raise ConfigError(
            f"--storage {storage!r}: expected a SQLAlchemy URL (sqlite:///..., "
            f"postgresql://...) or a journal file ending in {' or '.join(JOURNAL_SUFFIXES)}"
        )
    if storage.startswith("postgresql"):
        require("psycopg2")
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    retry = retry or optuna.storages.RetryFailedTrialCallback
    kwargs: dict[str, Any] = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat}
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage).parameters
    name = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in params
        else "failed_trial_callback"
    )
    kwargs[name] = retry(max_retry=MAX_RETRY, inherit_intermediate_values=True)
    try:
        return optuna.storages.RDBStorage(storage, **kwargs)
    except Exception as exc:  # bad URL, unreachable server: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--storage: cannot open {storage!r}: {first}") from None


def sampler_seed(seed: int, worker: int, existing: int) -> int:
    """Worker ``worker``'s sampler seed in a study that holds ``existing`` trials: distinct
    per worker and per resumption, wrapped into numpy's seed range.

    ``(seed + 1000 worker + existing) mod 2**32``

    >>> sampler_seed(0, 1, 5), sampler_seed(2**32 - 1, 1, 5)
    (1005, 1004)
    """
    return (seed + 1000 * worker + existing) % 2**32


def make_sampler(name: str, seed: int, startup: int | None = None) -> Any:
    """The Optuna sampler for ``--sampler``; ``startup`` (``--sampler-startup``, TPE and
    CMA-ES): the random trials before the model is used (Optuna's default: 10 for TPE, 1 for
    CMA-ES). With the same seed, TPE's start-up trials are the random sampler's."""
    optuna = require("optuna")
    kwargs = {} if startup is None else {"n_startup_trials": startup}
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        require("cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, **kwargs)
    raise ConfigError(f"--sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def median_startup(trials: int) -> int:
    """Trials the median pruner lets finish before it prunes: Optuna's 5, fewer for a small
    study (a quarter of it, at least 1), so a 4-trial study can prune.

    >>> median_startup(100), median_startup(8), median_startup(2)
    (5, 2, 1)
    """
    return min(5, max(1, trials // 4))


def make_pruner(
    name: str,
    trials: int,
    full_epochs: int,
    warmup: int | None = None,
    startup: int | None = None,
) -> Any:
    """The Optuna pruner for ``--pruner`` (see the module docstring for ``warmup`` and
    ``startup``; the CLI validates them: ``1 <= warmup < full_epochs``, ``startup >= 0``)."""
    optuna = require("optuna")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=median_startup(trials) if startup is None else startup,
            n_warmup_steps=warmup or 0,
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=warmup or 1, max_resource=full_epochs, reduction_factor=3
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r} is not one of {', '.join(PRUNERS)}")


def open_study(
    spec: TuneSpec,
    *,
    worker: int = 0,
    resolve: Callable[[list[Param]], list[Param]] | None = None,
) -> Any:
    """Create or load the study; the space, metric and config are stored in its user
    attributes, and a later command must agree with them (or use another ``--study``).
    ``resolve`` turns ``auto_range`` entries into ranges, for a new study only."""
    optuna = require("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_spec(spec), spec.heartbeat)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    mine = [s for s in summaries if s.study_name == spec.study_name]
    existing = mine[0].n_trials if mine else 0
    if not mine and resolve is not None:
        spec.params = resolve(spec.params)
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name,
        direction="minimize" if spec.direction == "min" else "maximize",
        sampler=make_sampler(
            spec.sampler, sampler_seed(spec.seed, worker, existing), spec.sampler_startup
        ),
        pruner=make_pruner(
            spec.pruner, spec.trials, spec.full_epochs, spec.prune_warmup, spec.prune_startup
        ),
        load_if_exists=True,
    )
    want_dir = "MINIMIZE" if spec.direction == "min" else "MAXIMIZE"
    if study.direction.name != want_dir:
        raise ConfigError(
            f"study {spec.study_name!r} was created to {study.direction.name.lower()} its "
            f"metric; --metric {spec.metric} needs {want_dir.lower()} (use another --study)"
        )
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", [p.to_dict() for p in spec.params])
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("config", str(spec.config))
        study.set_user_attr("full_epochs", spec.full_epochs)
        if spec.finder:
            study.set_user_attr("finder", spec.finder)
        if spec.seed_trial == "finder":
            enqueue_finder_trial(study, spec)
    else:
        check_same_space(spec, space_from_dicts(stored), study.user_attrs.get("metric"))
        spec.params = space_from_dicts(stored)  # an auto_range resolved by the first run
        spec.finder = dict(study.user_attrs.get("finder") or {})
    return study


def enqueue_finder_trial(study: Any, spec: TuneSpec) -> None:
    """``--seed-trial finder``: queue the base config at the finder's suggested LR
    (:func:`lrpilot.search._space.seed_values`) as the new study's first trial; its
    compute is the finder's record (``spec.finder``, filled by resolving ``auto_range``)."""
    from lrpilot.search._space import seed_values

    if not spec.finder:
        raise ConfigError("--seed-trial finder needs optimizer.lr: auto_range in the space")
    values = seed_values(spec.params, spec.base, spec.finder["suggestion"])
    study.enqueue_trial(values, user_attrs={"seeded_by": "finder"})


def check_same_space(spec: TuneSpec, stored: list[Param], metric: str | None) -> None:
    """A resumed study must search the same space for the same metric."""
    mine = {p.key: p for p in spec.params}
    theirs = {p.key: p for p in stored}
    same = mine.keys() == theirs.keys() and all(
        mine[k].kind == "auto_range" or mine[k] == theirs[k] for k in mine
    )
    if not same or metric != spec.metric:
        raise ConfigError(
            f"study {spec.study_name!r} already exists with another space or metric "
            f"({', '.join(sorted(theirs))}; {metric}); use another --study or --out"
        )


def _superseded(trials: Sequence[Any]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def count_finished(trials: Sequence[Any]) -> int:
    """Finished trials, a failed trial that was retried not counted (its retry stands for it)."""
    gone = _superseded(trials)
    return sum(1 for t in trials if t.state.is_finished() and t.number not in gone)


def reclaim_orphans(study: Any) -> list[int]:
    """Journal storage only: fail every RUNNING trial (left by a killed command) and queue a
    retry with the same parameters, as the heartbeat callback does on an RDB storage."""
    optuna = require("optuna")
    storage = study._storage
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    retry = retry or optuna.storages.RetryFailedTrialCallback
    callback = retry(max_retry=MAX_RETRY, inherit_intermediate_values=True)
    failed = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.RUNNING:
            try:
                storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            callback(study, storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed


def work(study: Any, spec: TuneSpec, on_trial: Callable[[Any], None] | None = None) -> None:
    """One worker's loop (see the module docstring for when it stops)."""
    optuna = require("optuna")
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    heartbeat = hasattr(study._storage, "record_heartbeat") and not is_journal(storage_spec(spec))
    while True:
        if heartbeat:
            fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if not waiting and count_finished(trials) + running >= spec.trials:
            if running == 0 or not heartbeat:
                return
            time.sleep(min(1.0, spec.heartbeat))  # a killed worker's trial goes stale
            continue
        with_warnings_off(optuna)
        trial = study.ask(to_optuna(spec.params))
        frozen = run_one(study, trial, spec, heartbeat)
        if on_trial is not None:
            on_trial(frozen)


def with_warnings_off(optuna: Any) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*RetryFailedTrialCallback.*")
    # ask/tell with heartbeats recorded by this worker (run_one), not by Study.optimize
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def run_one(study: Any, trial: Any, spec: TuneSpec, heartbeat: bool) -> Any:
    """Run one asked trial in its run directory and tell Optuna how it ended."""
    from optuna.trial import TrialState

    storage = study._storage
    frozen = storage.get_trial(trial._trial_id)
    root = frozen.system_attrs.get("failed_trial", trial.number)
    run_dir = spec.out / "trials" / f"trial-{root:04d}"
    values = decode_values(spec.params, trial.params)
    argv, resumed = fit_argv(spec.config, run_dir, values, spec.launcher)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker_pid", os.getpid())
    reported = set(frozen.intermediate_values)
    planned = int(values.get("epochs", spec.full_epochs))
    last_beat = [0.0]

    def tick() -> None:
        if heartbeat and time.monotonic() - last_beat[0] >= spec.heartbeat / 2:
            storage.record_heartbeat(trial._trial_id)
            last_beat[0] = time.monotonic()

    def on_epoch(epoch: int, value: float) -> bool:
        tick()
        step = epoch + 1  # epochs trained (the record's epoch counts from 0)
        if step in reported:
            return False
        reported.add(step)
        trial.report(value if math.isfinite(value) else math.nan, step)
        # the last epoch's record ends the run anyway: it completes, it is not pruned
        return epoch + 1 < planned and bool(trial.should_prune())

    tick()
    outcome = run_trial(argv, run_dir, spec.metric, on_epoch, tick=tick, env=spec.env)
    trial.set_user_attr("compute", outcome.epochs / spec.full_epochs)
    trial.set_user_attr("resumed", resumed)
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr("error", outcome.message)
        study.tell(trial, state=TrialState.FAIL)
    return storage.get_trial(trial._trial_id)


def worker_argv(spec: TuneSpec, space_file: Path) -> list[str]:
    """The command line of one extra local worker (``lrpilot tune ... --worker``)."""
    argv = [sys.executable, "-m", "lrpilot.cli", "tune", str(spec.config)]
    argv += ["--space", str(space_file), "--trials", str(spec.trials)]
    argv += ["--storage", storage_spec(spec), "--study", spec.study_name]
    argv += ["--out", str(spec.out), "--metric", spec.metric, "--sampler", spec.sampler]
    argv += ["--pruner", spec.pruner, "--seed", str(spec.seed)]
    if spec.prune_warmup is not None:
        argv += ["--prune-warmup", str(spec.prune_warmup)]
    if spec.prune_startup is not None:
        argv += ["--prune-startup", str(spec.prune_startup)]
    if spec.sampler_startup is not None:
        argv += ["--sampler-startup", str(spec.sampler_startup)]
    if spec.seed_trial is not None:
        argv += ["--seed-trial", spec.seed_trial]
    argv += ["--heartbeat", str(spec.heartbeat), "--worker"]
    if spec.launcher:
        argv += ["--launcher", spec.launcher]
    return argv


def run_workers(
    spec: TuneSpec, space_file: Path, study: Any, progress: Callable[[int], None]
) -> list[int]:
    """Start ``spec.workers`` worker processes and wait for them; ``progress(finished)`` is
    called about once a second. Returns their exit codes."""
    from lrpilot.search._runner import _die_with_parent

    procs = []
    for i in range(spec.workers):
        env = dict(spec.env or os.environ)
        env["LRPILOT_TUNE_WORKER"] = str(i + 1)
        with open(spec.out / f"worker-{i + 1}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    worker_argv(spec, space_file),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_die_with_parent if os.name == "posix" else None,
                )
            )
    try:
        while any(p.poll() is None for p in procs):
            progress(count_finished(study.get_trials(deepcopy=False)))
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait()
    progress(count_finished(study.get_trials(deepcopy=False)))
    return [int(p.returncode) for p in procs]
