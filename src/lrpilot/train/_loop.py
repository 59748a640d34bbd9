"""``lrpilot.fit``: the run directory, resume, and the loop that drives the
:class:`~lrpilot.train._engine.Engine` and its callbacks.

The loop body (:meth:`_Run.train`)::

    while epochs remain and nobody asked to stop:
        outcome = engine.train_step()                 # one optimizer step, no I/O
        apply(callbacks.step_end(engine, outcome))    # None: carry on
        if the epoch is done (or a stop was asked):
            record = engine.end_epoch()               # validation, the epoch record
            apply(callbacks.epoch_end(engine, record))
            checkpoints.epoch_end(last=...)

Order of work at the end of an epoch: evaluate, write the ``epoch`` record, report to the
plateau, take the guard's epoch snapshot, update best/early-stopping state, then write the
checkpoint. ``checkpoint_every``: ``auto`` (default) checkpoints whenever
``CHECKPOINT_SECONDS`` (60) of wall time have passed since the last one, mid-epoch or at an
epoch end, and at the end of the run; ``epoch`` at every epoch end; ``N`` every N optimizer
steps (and at every epoch end). The state is captured (CPU copies) on the training thread
and written (fsync, atomic rename) on one background thread, together with the TensorBoard
scalars; everything is on disk before ``summary.json`` is written. A checkpoint holds the
engine (model, optimizer, schedule, scaler, counters, RNGs), the guard, the best-epoch
tracker and every user callback's ``state_dict()`` (key ``callbacks``), so a resumed run
is bit-identical to one never stopped.

Costs on the hot path per optimizer step: on the CPU one read of the loss (the guard
reads it), the gradient norm only on logged steps or when clipping, one small
``StepOutcome``, and only the callbacks that override a hook are called. On CUDA (with a
fused optimizer) the engine's lagged mode (:meth:`Engine.advance`) makes the step free of
host syncs: the values are read one step late, non-finite steps are vetoed on the device,
and the outcomes reach the callbacks one step behind (:meth:`_Run.train_lagged`).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from lrpilot import _distributed as distributed
from lrpilot._distributed import is_main_process
from lrpilot.errors import ConfigError, TrainingAborted
from lrpilot.history import History
from lrpilot.tasks import Task, get_task
from lrpilot.train import _runstate as runstate
from lrpilot.train._auto_config import any_auto
from lrpilot.train._builders import resolve_device
from lrpilot.train._builtin import (
    CHECKPOINT_SECONDS,
    BestCallback,
    CheckpointCallback,
    GuardCallback,
    LogCallback,
    PlateauCallback,
)
from lrpilot.train._callbacks import Callback, CallbackList, Control
from lrpilot.train._checkpoint import CheckpointManager
from lrpilot.train._config import FitConfig, default_mode, parse_config
from lrpilot.train._early_stop import BestTracker
from lrpilot.train._engine import LOOP_STATE_VERSION, Engine, LoopState
from lrpilot.train._fitcheck import Prepared, check_prepared, check_run_dir, resolve_raw
from lrpilot.train._fitcheck import default_run_dir as _default_run_dir
from lrpilot.train._guard import DivergenceGuard
from lrpilot.train._result import RunResult
from lrpilot.train._rundir import (
    RunLock,
    adopt_threads,
    device_label,
    lock_on_main,
    new_identity,
    read_identity,
    remove_if_untouched,
    repair_metrics,
    resume_message,
    write_identity,
)
from lrpilot.train._runlog import Progress, RunLogger
from lrpilot.train._sources import apply_overrides
from lrpilot.train._summary import atomic_json, diagnose_run, finish_run

__all__ = ["CHECKPOINT_SECONDS", "LOOP_STATE_VERSION", "LoopState", "Prepare", "Prepared", "fit"]


# ------------------------------------------------------------------------------- fit
#: ``prepare(engine, run_dir) -> Prepared | FitConfig | None``: see :func:`fit`
Prepare = Callable[[Engine, Path], "Prepared | FitConfig | None"]


def fit(
    config: FitConfig | Mapping[str, Any] | str | Path,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: str = "auto",
    task: Task | None = None,
    callbacks: Sequence[Callback] = (),
    prepare: Prepare | None = None,
) -> RunResult:
    """Train a task as configured; write the run directory; return a :class:`RunResult`.

    ``config``: a mapping, a :class:`FitConfig` or a YAML path; ``overrides``: ``key=value``
    strings (``--set``); ``task``: a ``Task`` object (``config["task"]`` may be omitted);
    ``resume=True``: continue in ``out_dir`` from its newest valid checkpoint, bit-identical
    to never stopping; ``progress``: ``auto``, ``rich``, ``plain`` or ``none``;
    ``callbacks``: :class:`~lrpilot.train.Callback` objects after lrpilot's own (their
    ``state_dict()`` is checkpointed). A config with ``auto`` values is the autopilot's:
    ``lrpilot.fit`` (:func:`lrpilot.autopilot._run.fit`) hands it over, this one refuses it. ``prepare(engine, run_dir)``, the autopilot's
    seam: called once the engine is built and the directory locked, before the loop writes
    anything; it may train the engine (``run_steps``, ``snapshot``/``restore``,
    ``set_schedule``) and returns the config the loop runs under (only ``optimizer.lr`` and
    ``schedule`` may differ; ``None``: unchanged); an engine it leaves at step 0 is built
    afresh for that config. It keeps its own progress, so ``resume`` continues the loop
    once the loop had started (``config.yaml``), else starts it at step 0.
    """
    raw = apply_overrides(resolve_raw(config), list(overrides))
    if prepare is None and any_auto(raw):
        raise ConfigError(
            "a config with 'auto' values is the autopilot's: run it with lrpilot.fit or "
            "lrpilot fit, which hand it to lrpilot.autopilot"
        )
    if task is not None and "task" not in raw:
        raw["task"] = task.name
    cfg = parse_config(raw, task=task)
    task = task if task is not None and cfg.task == task.name else get_task(cfg.task)
    if resume and out_dir is None:
        raise ConfigError("resume needs the run directory (out_dir / --out DIR)")
    env = distributed.init_from_env(cfg.device)  # torchrun: one process group, rank 0 writes
    run_dir = Path(out_dir) if out_dir is not None else _default_run_dir(cfg.task)
    run_dir = distributed.broadcast_object(run_dir)  # one run directory for all processes
    created = not run_dir.exists()
    lock = RunLock(run_dir)
    threads = torch.get_num_threads()
    ended = False
    trainer: _Run | None = None
    try:
        lock_on_main(lock)
        trainer = _start(cfg, task, run_dir, progress, callbacks, resume, prepare)
        result = trainer.run(trainer.resuming)
        ended = True
        return result
    except BaseException:
        if created and is_main_process():
            remove_if_untouched(run_dir, lock)
        raise
    finally:
        lock.release()
        torch.set_num_threads(threads)  # a resume may have adopted the recorded count
        if env.started:
            # The DDP wrapper's reducer holds the process group: free it now, while the
            # interpreter is whole. Left to interpreter exit, gloo's worker threads can be
            # torn down then and abort the process ("terminate called without an active
            # exception", seen once in about ten 2-process runs after a finished run).
            trainer = None
            gc.collect()
            distributed.shutdown(synchronize=ended)


def _start(
    cfg: FitConfig,
    task: Task,
    run_dir: Path,
    progress: str,
    callbacks: Sequence[Callback],
    resume: bool,
    prepare: Prepare | None,
) -> _Run:
    """The run, built under the lock: the run directory checked, ``prepare`` applied, the
    identity read (resume) or made (fresh run)."""
    if prepare is None:
        check_run_dir(run_dir, cfg, resume)  # under the lock: no other process writes
    trainer = _Run(cfg, task, run_dir, progress, callbacks)
    if prepare is not None:
        prepared = prepare(trainer.engine, run_dir)
        if isinstance(prepared, FitConfig):
            prepared = Prepared(prepared)
        if prepared is not None:
            check_prepared(cfg, prepared.config)
            cfg = prepared.config
            if trainer.engine.state.step == 0:  # nothing kept: built afresh for the config
                if prepared.train_data is not None:  # (and its data: the schedule's steps)
                    task = replace(task, train_set=prepared.train_data[0])
                trainer = _Run(cfg, task, run_dir, progress, callbacks)
            trainer.cfg = cfg
            if trainer.guard is not None:
                trainer.guard.snapshot_every = cfg.guard.snapshot_every
                trainer.guard.max_replay = cfg.guard.max_replay
                if prepared.initial_loss is not None:
                    trainer.guard.guard.initial_level = float(prepared.initial_loss)
            if prepared.train_data is not None:
                trainer.engine.switch_data(*prepared.train_data)
            trainer.qualify_findings = prepared.qualify_findings
        # the prepare step keeps its own record; the loop resumes once it had started
        resume = resume and (run_dir / "config.yaml").is_file()
        check_run_dir(run_dir, cfg, resume)
    device = device_label(resolve_device(cfg.device))
    if resume:
        trainer.identity = read_identity(run_dir)
        trainer.notes = adopt_threads(trainer.identity, device)
    else:
        trainer.identity = distributed.broadcast_object(new_identity(cfg.to_dict(), device))
    trainer.resuming = resume
    return trainer


class _Run:
    """One ``fit``: the engine, lrpilot's callbacks and the user's, the run directory."""

    def __init__(
        self,
        cfg: FitConfig,
        task: Task,
        run_dir: Path,
        progress: str,
        callbacks: Sequence[Callback] = (),
        identity: dict | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        # Build (and validate) everything before the run directory is touched.
        self.cfg, self.run_dir = cfg, run_dir
        #: run.json's content (run id, config fingerprint, threads, device, torch)
        self.identity = identity or {"run_id": None, "config": None}
        #: what the start of the run said (resume notes), kept in summary.json
        self.notes: list[str] = list(notes)
        self.main = is_main_process()
        #: a prepare step's qualifier of the diagnosis (``Prepared.qualify_findings``)
        self.qualify_findings: Callable[[list[Any]], list[Any]] | None = None
        self.engine = Engine(cfg, task)
        self.user = list(callbacks)
        CallbackList(self.user)  # type check now, before any file is written
        g = cfg.guard
        self.guard: GuardCallback | None = None
        if g.enabled:
            rule = DivergenceGuard(
                window=g.window,
                threshold=g.threshold,
                patience=g.patience,
                horizon=g.horizon,
                min_history=g.min_history,
                max_rescues=g.max_rescues,
                rebound=g.rebound,
                rebound_progress=g.rebound_progress,
            )
            self.guard = GuardCallback(rule, g.factor, g.snapshot_every, g.max_replay)
        es = cfg.early_stopping
        if es is not None:
            tracker = BestTracker(es.monitor, es.mode, patience=es.patience, min_delta=es.min_delta)
        else:
            tracker = BestTracker("val_loss", default_mode("val_loss"))
        self.best = BestCallback(tracker, es is not None, self.guard)
        self.ckpt = CheckpointCallback(
            cfg.checkpoint_every,
            CheckpointManager(run_dir / "checkpoints"),
            self.capture,
            self.best,
        )
        self.progress_mode = progress if self.main else "none"
        self.resuming = False  # whether run() continues from a checkpoint (set by _start)
        self.history: History | None = None  # metrics.jsonl as read for the diagnosis
        self.log: RunLogger | None = None
        self.stop_reason = ""

    # ------------------------------------------------------------------ checkpoints
    def capture(self, metrics_bytes: int) -> dict:
        """Everything a resume needs (:func:`lrpilot.train._runstate.capture`)."""
        return runstate.capture(self, metrics_bytes)

    def load(self, ckpt: dict) -> None:
        runstate.load(self, ckpt)

    # ---------------------------------------------------------------------------- run
    def _find(self, resume: bool) -> tuple[dict | None, list[str]]:
        """The newest valid checkpoint (resume only) and what to say about it."""
        if not resume:
            return None, []
        ckpt, messages = self.ckpt.ckpts.newest_valid(identity=self.identity)
        if ckpt is None:
            messages.append(
                "no valid checkpoint found; starting again from step 0"
                if not self.ckpt.ckpts.candidates()
                else "no checkpoint could be read; starting again from step 0"
            )
        return ckpt, messages

    def _completed(self, ckpt: dict | None) -> RunResult | None:
        """The result of a run that is already complete (its newest checkpoint is the
        end of the run and ``summary.json`` says so), else ``None``. Nothing is written."""
        if ckpt is None:
            return None
        loop = ckpt["loop"]
        if loop["epoch"] < self.cfg.epochs and not loop["stopped_early"]:
            return None
        path = self.run_dir / "summary.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # the run ended but its summary was never written: finish it
        if summary.get("status") not in ("completed", "early_stopped"):
            return None
        if summary.get("steps_run") != ckpt["step"]:
            return None
        distributed.check_resume_world_size(ckpt.get("world_size", 1))
        best = ckpt["best_model"] if summary.get("restored_best_weights") else None
        model = distributed.unwrap(self.engine.model)
        model.load_state_dict(best if best is not None else ckpt["model"])
        if self.progress_mode != "none":
            print(
                f"lrpilot fit: the run in {self.run_dir} is already complete "
                f"({summary['status']}, {summary.get('epochs_run')} of "
                f"{summary.get('epochs_planned')} epochs, step {ckpt['step']}); nothing to "
                "train (to train longer, start a new run with another --out)",
                flush=True,
            )
        self.ckpt.writer.close()
        history = History.read_jsonl(self.run_dir / "metrics.jsonl") if self.main else History()
        return RunResult(summary=summary, history=history, run_dir=self.run_dir, model=model)

    def _open(self, ckpt: dict | None, messages: list[str]) -> list[str]:
        """Write config.yaml, load the checkpoint, open the log; the messages."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # run.json first: a config.yaml (what --resume looks for) implies a run.json
            write_identity(self.run_dir, self.identity)
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present
            (self.run_dir / "config.yaml").write_text(
                yaml.dump(self.cfg.to_dict(), Dumper=dumper, sort_keys=False), encoding="utf-8"
            )
        state = self.engine.state
        keep: int | None = None
        if ckpt is not None:
            self.load(ckpt)
            messages.append(resume_message(state, self.cfg.epochs))
            self.stop_reason = "early_stopping" if state.stopped_early else ""
            if self.main:
                path = self.run_dir / "metrics.jsonl"
                keep, log_notes = repair_metrics(path, ckpt["metrics_bytes"], state.step)
                messages += log_notes
        self.notes += messages
        if self.main:
            self.log = RunLogger(
                self.run_dir,
                resume_bytes=keep,
                purge_step=state.step + 1 if ckpt is not None else None,
                submit=self.ckpt.writer.submit,
            )
        self.ckpt.logger = self.log
        return messages

    def run(self, resume: bool) -> RunResult:
        ckpt, messages = self._find(resume)
        done = self._completed(ckpt)
        if done is not None:
            return done
        messages = self._open(ckpt, messages)
        engine, cfg = self.engine, self.cfg
        self.progress = Progress(self.progress_mode, engine.total_steps, cfg.epochs)
        for line in self.notes:
            self.progress.message(f"lrpilot fit: {line}")
        logging = LogCallback(self.log, self.progress, cfg.log_every)
        engine.on_event = logging.event
        builtin: list[Callback] = [logging]
        if cfg.plateau is not None:
            builtin.append(PlateauCallback(cfg.plateau["monitor"]))
        if self.guard is not None:
            builtin.append(self.guard)
        builtin.append(self.best)
        self.calls = CallbackList([*builtin, *self.user, self.ckpt])
        self.calls.fit_start(engine)
        engine._t0 = time.perf_counter()
        self.progress.start(engine.state.step, engine.state.epoch)
        status = "completed"
        try:
            self.train()
            if engine.state.stopped_early:
                status = "early_stopped"
        except TrainingAborted:
            status = "aborted"
            self._finish(status)
            raise
        except BaseException:
            self.progress.close()
            try:
                self.ckpt.writer.close()
            finally:
                if self.log is not None:
                    self.log.close()
            raise
        summary = self._finish(status)
        history = self.history
        if history is None:
            history = History.read_jsonl(self.run_dir / "metrics.jsonl") if self.main else History()
        return RunResult(
            summary=summary,
            history=history,
            run_dir=self.run_dir,
            model=distributed.unwrap(engine.model),
        )

    def train(self) -> None:
        """The loop body: steps, the callbacks' answers, epoch ends."""
        engine, calls, state, epochs = self.engine, self.calls, self.engine.state, self.cfg.epochs
        engine.model.train()
        if engine.lagged:
            self.train_lagged()
            return
        while state.epoch < epochs and not state.stopped_early:
            outcome = engine.train_step()
            control = calls.step_end(engine, outcome)
            if control is not None:
                self.apply(control)
            if engine.epoch_done or state.stopped_early:
                record = engine.end_epoch()
                control = calls.epoch_end(engine, record)
                if control is not None:
                    self.apply(control)
                self.ckpt.epoch_end(last=state.epoch >= epochs or state.stopped_early)

    def train_lagged(self) -> None:
        """The loop body in the engine's lagged mode (CUDA): each step is queued, and the
        outcomes of the steps read so far (one step behind) go to the callbacks. A stop
        asked at step ``k`` takes effect after step ``k + 1``, already queued."""
        engine, state, epochs = self.engine, self.engine.state, self.cfg.epochs
        while state.epoch < epochs and not state.stopped_early:
            engine.advance()
            self.hand_out()
            if state.stopped_early and engine.pending:
                engine.resolve()
                self.hand_out()
            if engine.epoch_done or state.stopped_early:
                record = engine.end_epoch()
                control = self.calls.epoch_end(engine, record)
                if control is not None:
                    self.apply(control)
                self.ckpt.epoch_end(last=state.epoch >= epochs or state.stopped_early)

    def hand_out(self) -> None:
        """Every outcome the engine has read, to the callbacks, in step order."""
        engine, calls = self.engine, self.calls
        while (outcome := engine.next_outcome()) is not None:
            control = calls.step_end(engine, outcome)
            if control is not None:
                self.apply(control)

    def apply(self, control: Control) -> None:
        """Carry out a callback's answer (the guard's rescue is already done)."""
        engine = self.engine
        if control.stop and not engine.state.stopped_early:
            engine.state.stopped_early = True
            self.stop_reason = control.reason or "stopped by a callback"
        if control.lr_scale is not None:
            engine.adapter.set_lr_scale(control.lr_scale)
            state = engine.state
            event = {"type": "event", "step": state.step, "epoch": state.epoch}
            event.update(action="lr_scale", lr_scale=control.lr_scale, reason=control.reason)
            engine.record_event(event)

    # ------------------------------------------------------------------------- finish
    def _finish(self, status: str) -> dict:
        self.progress.close()
        self.ckpt.write_best()  # e.g. an aborted run: the best weights so far
        summary = finish_run(self, status)  # (overlaps with the last writes)
        if self.main:
            self.history, summary["diagnosis"] = diagnose_run(self)
        self.calls.fit_end(self.engine, summary)
        self.ckpt.writer.close()  # every checkpoint is on disk before summary.json appears
        if self.main:
            atomic_json(summary, self.run_dir / "summary.json")
            if self.log is not None:
                self.log.close()
            if self.progress_mode != "none":
                self.progress.message(
                    f"lrpilot fit: {status}; run directory {self.run_dir} "
                    f"(TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'})"
                )
        return summary
