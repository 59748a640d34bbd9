"""The training loop behind ``lrpilot fit``.

One optimizer step = ``accumulate`` micro-batches of ``batch_size`` samples (the last group
of an epoch may be shorter). Each micro-batch loss is weighted by its share of the step's
samples, so the accumulated gradient is the gradient of the mean loss over every sample of
the step, exactly as one big batch would give. The loop owns the step counter; the
schedule (:func:`lrpilot.schedules.attach`) is stepped once after every optimizer step
that happened (a step skipped by the fp16 ``GradScaler`` does not advance it and is
counted in ``summary.json``). A plateau controller, if configured, gets one report per
epoch.

Order of work at the end of an epoch: evaluate, write the ``epoch`` record, report to the
plateau, update best/early-stopping state (writing ``checkpoints/best.pt`` on a new best),
then write the checkpoint. ``checkpoint_every``: ``auto`` (default) checkpoints whenever
``CHECKPOINT_SECONDS`` (60) of wall time have passed since the last one, mid-epoch or at an
epoch end, and at the end of the run, so a crash loses at most about a minute of work
whatever the epoch length; ``epoch`` at every epoch end; ``N`` every N optimizer steps
(and at every epoch end). The
state is captured (CPU copies) on the training thread and written (fsync, atomic rename)
on one background thread, together with the TensorBoard scalars, so training does not
wait for the disk; everything is on disk before ``summary.json`` is written.

Divergence guard: see :mod:`lrpilot.train.guard` (a rescue rewinds to a snapshot of the
same epoch and lowers the whole schedule; the global step counter keeps counting).

Costs on the hot path per optimizer step: one host sync for the loss (the guard reads it
every step; on CUDA this is one ``.item()``), the gradient norm only on logged steps or
when clipping, no per-sample collate for in-memory ``TensorDataset`` s. The optimizer runs
PyTorch's fused kernel unless configured otherwise (``optimizer.implementation``,
:func:`lrpilot.train.builders.resolve_implementation`).

Extension points (kept as single functions in :mod:`lrpilot.train.builders`):
``build_train_data`` (data order and batches), ``wrap_model`` (device placement, DDP),
``is_main_process`` (every file write goes through it); here, :func:`finish_run` builds
``summary.json``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lrpilot.batch import distributed as bdist
from lrpilot.errors import ConfigError, TrainingAborted
from lrpilot.history import History
from lrpilot.tasks import Task, get_task
from lrpilot.train.builders import (
    autocast_context,
    build_optimizer,
    build_param_groups,
    build_schedule,
    build_train_data,
    evaluate,
    grad_clearer,
    grad_norm,
    implementation_of,
    is_main_process,
    load_optimizer_state,
    makes_sparse_grads,
    params_finite,
    resolve_device,
    resolve_implementation,
    wrap_model,
)
from lrpilot.train.checkpoint import (
    BackgroundWriter,
    CheckpointManager,
    atomic_write_bytes,
    encode,
)
from lrpilot.train.config import (
    FitConfig,
    apply_overrides,
    default_mode,
    load_yaml,
    parse_config,
)
from lrpilot.train.early_stop import BestTracker
from lrpilot.train.guard import (
    DIVERGED,
    OK,
    DivergenceGuard,
    copy_into,
    cpu_clone,
    restore_snapshot,
    take_snapshot,
)
from lrpilot.train.result import RunResult
from lrpilot.train.rng import capture_rng, restore_rng, seed_everything
from lrpilot.train.runlog import Progress, RunLogger

LOOP_STATE_VERSION = 1
#: ``checkpoint_every: auto`` writes a checkpoint when this much wall time has passed since
#: the last one (checked after every optimizer step), and always at the end of the run
CHECKPOINT_SECONDS = 60.0


# -------------------------------------------------------------------------- run state
@dataclass
class LoopState:
    """The loop's own counters (plain data, saved in every checkpoint)."""

    step: int = 0  # optimizer steps completed (including skipped/discarded ones)
    epoch: int = 0  # epoch in progress
    micro: int = 0  # next micro-batch index within the epoch
    samples: int = 0  # training samples processed
    epoch_loss_sum: float = 0.0
    epoch_loss_samples: int = 0
    skipped_steps: int = 0  # fp16 GradScaler overflow skips
    elapsed: float = 0.0  # wall seconds in earlier segments (before a resume)
    train_time: float = 0.0  # seconds spent in training steps
    eval_time: float = 0.0  # seconds spent in the per-epoch validation
    events: list[dict] = field(default_factory=list)
    last_epoch_record: dict | None = None
    best_record: dict | None = None
    stopped_early: bool = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": LOOP_STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "micro": self.micro,
            "samples": self.samples,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_loss_samples": self.epoch_loss_samples,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed,
            "train_time": self.train_time,
            "eval_time": self.eval_time,
            "events": [dict(e) for e in self.events],
            "last_epoch_record": self.last_epoch_record,
            "best_record": self.best_record,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != LOOP_STATE_VERSION:
            raise ConfigError(f"loop state version {state.get('version')!r} is not supported")
        for key in (
            "step",
            "epoch",
            "micro",
            "samples",
            "epoch_loss_sum",
            "epoch_loss_samples",
            "skipped_steps",
            "elapsed",
            "train_time",
            "last_epoch_record",
            "best_record",
            "stopped_early",
        ):
            setattr(self, key, state[key])
        self.eval_time = float(state.get("eval_time", 0.0))  # absent before it was counted
        self.events = [dict(e) for e in state["events"]]


def _resolve_raw(config: FitConfig | Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, FitConfig):
        return config.to_dict()
    if isinstance(config, (str, Path)):
        return load_yaml(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError(f"config must be a mapping, a FitConfig or a YAML path, got {config!r}")


def _default_run_dir(task_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = task_name.replace(":", "_").replace("/", "_")
    base = Path("runs") / f"{safe}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Settings of the resolved config ``a`` that differ from the saved config ``b``. A
    setting ``b`` does not have (its run started under an lrpilot without that setting,
    e.g. ``guard.rebound``) takes its value from ``a``.

    >>> _config_diff({"seed": 1, "guard": {"rebound": 0.8}}, {"seed": 2, "guard": {}})
    ['seed: 2 -> 1']
    """
    out = []
    for key in sorted(b):
        va, vb = a.get(key), b[key]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {vb!r} -> {va!r}")
    return out


# ------------------------------------------------------------------------------- fit
def fit(
    config: FitConfig | Mapping[str, Any] | str | Path,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: str = "auto",
    task: Task | None = None,
) -> RunResult:
    """Train a task as configured; write the run directory; return a :class:`RunResult`.

    ``config`` is a mapping, a :class:`FitConfig` or a YAML path; ``overrides`` are
    ``key=value`` strings (``--set``). ``task`` may pass a ``Task`` object directly
    (``config["task"]`` may then be omitted). With ``resume=True`` the run continues in
    ``out_dir`` from its newest valid checkpoint (bit-identical to never stopping).
    ``progress``: ``auto`` (rich bar on a terminal, plain lines otherwise), ``rich``,
    ``plain`` or ``none``.
    """
    raw = apply_overrides(_resolve_raw(config), list(overrides))
    if task is not None and "task" not in raw:
        raw["task"] = task.name
    cfg = parse_config(raw, task=task)
    task = task if task is not None and cfg.task == task.name else get_task(cfg.task)
    if resume and out_dir is None:
        raise ConfigError("resume needs the run directory (out_dir / --out DIR)")
    env = bdist.init_from_env(cfg.device)  # torchrun: one process group, rank 0 writes
    run_dir = Path(out_dir) if out_dir is not None else _default_run_dir(cfg.task)
    run_dir = bdist.broadcast_object(run_dir)  # one run directory for all processes
    if resume:
        saved_path = run_dir / "config.yaml"
        if not saved_path.is_file():
            raise ConfigError(f"cannot resume: {saved_path} does not exist")
        saved = load_yaml(saved_path)
        diff = _config_diff(cfg.to_dict(), saved)
        if diff:
            raise ConfigError("cannot resume with a different config; changed: " + "; ".join(diff))
    elif (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; use --resume or another --out"
        )
    ended = False
    trainer: _Trainer | None = None
    try:
        trainer = _Trainer(cfg, task, run_dir, progress)
        result = trainer.run(resume)
        ended = True
        return result
    finally:
        if env.started:
            # The DDP wrapper's reducer holds the process group: free it now, while the
            # interpreter is whole. Left to interpreter exit, gloo's worker threads can be
            # torn down then and abort the process ("terminate called without an active
            # exception", seen once in about ten 2-process runs after a finished run).
            trainer = None
            gc.collect()
            bdist.shutdown(synchronize=ended)


class _Trainer:
    """Holds the objects of one run; ``run()`` is the loop. Not public API."""

    def __init__(self, cfg: FitConfig, task: Task, run_dir: Path, progress: str) -> None:
        # Build (and validate) everything before the run directory is touched.
        self.cfg, self.task, self.run_dir = cfg, task, run_dir
        self.main = is_main_process()
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        self.model = wrap_model(task.build_model(), cfg, self.device)
        groups, mults, self.group_labels = build_param_groups(self.model, cfg.layer_lr)
        implementation = resolve_implementation(
            cfg.optimizer.implementation,
            [p for group in groups for p in group["params"]],
            sparse_grads=makes_sparse_grads(self.model),
        )
        self.optimizer = build_optimizer(cfg, groups, implementation)
        self.data = build_train_data(cfg, task, self.device)
        self.steps_per_epoch = self.data.order.steps_per_epoch()
        self.total_steps = self.steps_per_epoch * cfg.epochs
        schedule, momentum, plateau = build_schedule(cfg, self.steps_per_epoch, self.total_steps)
        from lrpilot.schedules import attach

        self.schedule = schedule
        self.adapter = attach(
            self.optimizer, schedule, momentum=momentum, multipliers=mults, plateau=plateau
        )
        self.plateau = plateau
        g = cfg.guard
        self.guard = DivergenceGuard(
            window=g.window,
            threshold=g.threshold,
            patience=g.patience,
            horizon=g.horizon,
            min_history=g.min_history,
            max_rescues=g.max_rescues,
            rebound=g.rebound,
            rebound_progress=g.rebound_progress,
        )
        self.scaler = None
        if cfg.amp and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
        es = cfg.early_stopping
        if es is not None:
            self.tracker = BestTracker(
                es.monitor, es.mode, patience=es.patience, min_delta=es.min_delta
            )
        else:
            self.tracker = BestTracker("val_loss", default_mode("val_loss"))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.noise = bdist.NoiseMonitor(self.model, **cfg.noise_scale) if cfg.noise_scale else None
        self.state = LoopState()
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        # guard snapshots: the last two good states (a rescue restores the older one)
        self.snapshots: list[dict] = []
        self.best_model: dict | None = None
        self.history: History | None = None  # metrics.jsonl as read for the diagnosis
        self.progress_mode = progress if self.main else "none"
        self.ckpts = CheckpointManager(run_dir / "checkpoints")
        self.writer = BackgroundWriter()
        self._last_ckpt = time.monotonic()
        self._best_written = True

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self, metrics_bytes: int) -> dict:
        """Everything a resume needs, as CPU copies (safe to write from another thread)."""
        loop = self.state.state_dict()
        loop["elapsed"] = self._elapsed()
        return {
            "step": self.state.step,
            # unwrapped: the weights load into a bare model, whatever the world size
            "model": cpu_clone(bdist.unwrap(self.model).state_dict()),
            "optimizer": cpu_clone(self.optimizer.state_dict()),
            "schedule": self.adapter.state_dict(),
            "guard": self.guard.state_dict(),
            # CPU copies; reused by later snapshots, so the state is encoded right away
            "guard_snapshots": list(self.snapshots),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": capture_rng(),
            "loop": loop,
            "tracker": self.tracker.state_dict(),
            "best_model": self.best_model,
            "metrics_bytes": metrics_bytes,
            "noise": None if self.noise is None else self.noise.state_dict(),
            "world_size": bdist.current_env().world_size,
        }

    def _save_checkpoint(self) -> None:
        """Capture the state now; write it (fsync, atomic rename) on the writer thread."""
        if not self.main or self.log is None:
            return
        self._last_ckpt = time.monotonic()
        self._write_best()
        data = self.ckpts.encode(self._checkpoint_state(self.log.flush()))
        self.writer.submit(self._write_checkpoint, data)

    def _write_best(self) -> None:
        """Queue ``checkpoints/best.pt`` if the best weights changed since the last write."""
        if not self.main or self._best_written or self.best_model is None:
            return
        record = self.state.best_record or {}
        best = {
            "model": self.best_model,
            "epoch": record.get("epoch"),
            "step": record.get("step"),
            "monitor": self.tracker.monitor,
            "value": self.tracker.best,
        }
        self.writer.submit(atomic_write_bytes, encode(best), self.ckpts.best_path)
        self._best_written = True

    def _write_checkpoint(self, data: bytes) -> None:
        assert self.log is not None
        self.log.fsync()  # the metrics the checkpoint refers to are on disk first
        self.ckpts.save(data)

    def _load_checkpoint(self, ckpt: dict) -> None:
        bdist.check_resume_world_size(ckpt.get("world_size", 1))
        bdist.unwrap(self.model).load_state_dict(ckpt["model"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.adapter.load_state_dict(ckpt["schedule"])
        self.guard.load_state_dict(ckpt["guard"])
        self.snapshots = list(ckpt["guard_snapshots"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state.load_state_dict(ckpt["loop"])
        self.tracker.load_state_dict(ckpt["tracker"])
        self.best_model = ckpt["best_model"]
        self._best_written = True  # best.pt was written together with that checkpoint
        if self.noise is not None and ckpt.get("noise") is not None:
            self.noise.load_state_dict(ckpt["noise"])
        restore_rng(ckpt["rng"])

    def _elapsed(self) -> float:
        return self.state.elapsed + (time.perf_counter() - self._t0)

    # ---------------------------------------------------------------------------- run
    def run(self, resume: bool) -> RunResult:
        cfg = self.cfg
        messages: list[str] = []
        ckpt = None
        if resume:
            ckpt, messages = self.ckpts.newest_valid()
            if ckpt is None:
                messages.append(
                    "no valid checkpoint found; starting again from step 0"
                    if not self.ckpts.candidates()
                    else "no checkpoint could be read; starting again from step 0"
                )
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present
            (self.run_dir / "config.yaml").write_text(
                yaml.dump(cfg.to_dict(), Dumper=dumper, sort_keys=False), encoding="utf-8"
            )
        if ckpt is not None:
            self._load_checkpoint(ckpt)
            messages.append(f"resuming from step {self.state.step} (epoch {self.state.epoch + 1})")
        self.log = (
            RunLogger(
                self.run_dir,
                resume_bytes=ckpt["metrics_bytes"] if ckpt is not None else None,
                purge_step=self.state.step + 1 if ckpt is not None else None,
                submit=self.writer.submit,
            )
            if self.main
            else None
        )
        self.progress = Progress(self.progress_mode, self.total_steps, cfg.epochs)
        for line in messages:
            self.progress.message(f"lrpilot fit: {line}")
        if not self.snapshots and cfg.guard.enabled:
            self.snapshots = [self._snapshot()]
        self._t0 = time.perf_counter()
        self.progress.start(self.state.step, self.state.epoch)
        status = "completed"
        try:
            self._train()
            if self.state.stopped_early:
                status = "early_stopped"
        except TrainingAborted:
            status = "aborted"
            self._finish(status)
            raise
        except BaseException:
            self.progress.close()
            try:
                self.writer.close()
            finally:
                if self.log is not None:
                    self.log.close()
            raise
        summary = self._finish(status)
        history = self.history
        if history is None:
            history = History.read_jsonl(self.run_dir / "metrics.jsonl") if self.main else History()
        return RunResult(
            summary=summary, history=history, run_dir=self.run_dir, model=bdist.unwrap(self.model)
        )

    def _log(self, record: dict) -> None:
        if self.log is not None:
            self.log.write(record)

    def _snapshot(self, reuse: dict | None = None) -> dict:
        """The state a guard rescue returns to (CPU copies; checkpointable). ``reuse``: a
        snapshot being dropped, whose buffers are filled instead of new ones."""
        snap = take_snapshot(self.state.step, self.model, self.optimizer, reuse)
        snap.update(
            epoch=self.state.epoch,
            micro=self.state.micro,
            epoch_loss_sum=self.state.epoch_loss_sum,
            epoch_loss_samples=self.state.epoch_loss_samples,
            schedule=self.adapter.state_dict(),
            scaler=None if self.scaler is None else self.scaler.state_dict(),
        )
        return snap

    def _restore(self, snap: dict) -> None:
        restore_snapshot(snap, self.model, self.optimizer)
        self.adapter.load_state_dict(snap["schedule"])
        if self.scaler is not None and snap["scaler"] is not None:
            self.scaler.load_state_dict(snap["scaler"])
        self.state.micro = snap["micro"]
        self.state.epoch_loss_sum = snap["epoch_loss_sum"]
        self.state.epoch_loss_samples = snap["epoch_loss_samples"]

    def _train(self) -> None:
        cfg, state, model, optimizer = self.cfg, self.state, self.model, self.optimizer
        task, adapter, guard, scaler = self.task, self.adapter, self.guard, self.scaler
        guard_on = cfg.guard.enabled
        snapshot_every = cfg.guard.snapshot_every
        acc = cfg.accumulate
        log_every = cfg.log_every
        ckpt_every = cfg.checkpoint_every
        by_steps = isinstance(ckpt_every, int)
        by_time = ckpt_every == "auto"
        loss_fn = task.loss_fn
        device = self.device
        amp = cfg.amp
        grad_clip = cfg.grad_clip
        noise = self.noise
        clear_grads = grad_clearer(optimizer)
        weights = [p.detach() for p in model.parameters()]  # views: always current
        # hot-path constants: no per-step context objects or process-group queries on a
        # single process without AMP
        null = contextlib.nullcontext()
        ddp = bdist.current_env().distributed
        model.train()
        while state.epoch < cfg.epochs and not state.stopped_early:
            epoch = state.epoch
            micro = self.data.order.micro_batches(epoch)
            rescued = True
            while rescued:  # a guard rescue rewinds to a snapshot inside this epoch
                rescued = False
                batches = self.data.fetch.iterate(micro[state.micro :])
                for begin in range(state.micro, len(micro), acc):
                    t_step = time.perf_counter()
                    group = micro[begin : begin + acc]
                    sizes = [idx.shape[0] for idx in group]
                    n_step = sum(sizes)
                    clear_grads()
                    loss_total: Any = None
                    if noise is not None:
                        noise.begin_step(state.step + 1, n_step)
                    for k, size in enumerate(sizes):
                        inputs, targets = next(batches)
                        # DDP: all-reduce once per optimizer step (no_sync before the last)
                        with bdist.sync_context(model, k == len(sizes) - 1) if ddp else null:
                            if amp:
                                with autocast_context(amp, device):
                                    loss = loss_fn(model(inputs), targets)
                            else:
                                loss = loss_fn(model(inputs), targets)
                            weight = size / n_step if acc > 1 else 1.0
                            scaled = loss * weight if acc > 1 else loss
                            if noise is not None:
                                noise.before_backward()
                            if scaler is not None:
                                scaler.scale(scaled).backward()
                            else:
                                scaled.backward()
                            if noise is not None:
                                noise.after_backward(weight, size)
                        loss_total = (
                            scaled.detach() if loss_total is None else loss_total + scaled.detach()
                        )
                    step_no = state.step + 1
                    log_now = step_no % log_every == 0 or step_no == 1
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if noise is not None:
                        noise.end_step(scaler.get_scale() if scaler is not None else 1.0)
                    norm_t = None
                    if grad_clip is not None:
                        norm_t = nn.utils.clip_grad_norm_(self.params, grad_clip)
                    elif log_now:
                        norm_t = grad_norm(self.params)
                    loss_value = float(bdist.mean_over_processes(loss_total) if ddp else loss_total)
                    norm_value = float(norm_t) if norm_t is not None else None
                    lr_used = optimizer.param_groups[0]["lr"]
                    self.last_lr = lr_used
                    verdict = OK
                    if guard_on:
                        verdict = guard.observe(loss_value, norm_value if scaler is None else None)
                    if verdict != DIVERGED:
                        if scaler is not None:
                            scale_before = scaler.get_scale()
                            scaler.step(optimizer)
                            scaler.update()
                            if scaler.get_scale() < scale_before:
                                state.skipped_steps += 1  # overflow: no update, no schedule step
                            else:
                                adapter.step()
                        else:
                            optimizer.step()
                            adapter.step()
                    state.step = step_no
                    state.micro = begin + len(group)
                    state.samples += n_step
                    if verdict != DIVERGED:
                        state.epoch_loss_sum += loss_value * n_step
                        state.epoch_loss_samples += n_step
                    state.train_time += time.perf_counter() - t_step
                    if log_now or verdict != OK:
                        record = {
                            "type": "step",
                            "step": step_no,
                            "epoch": epoch,
                            "lr": lr_used,
                            "train_loss": loss_value,
                        }
                        if norm_value is not None:
                            record["grad_norm"] = norm_value
                        if noise is not None and math.isfinite(noise.value):
                            record["noise_scale"] = noise.value
                        self._log(record)
                        self.progress.step(step_no, epoch, loss_value, lr_used)
                    if verdict == DIVERGED:
                        if scaler is not None:
                            scaler.update()  # close this step's unscale_ (state is restored)
                        self._rescue(loss_value, norm_value)
                        rescued = True
                        break
                    if (
                        guard_on
                        and step_no - self.snapshots[-1]["step"] >= snapshot_every
                        and guard.healthy
                        and state.micro < len(micro)
                        # a first snapshot after the epoch's (or a rescue's) that no later
                        # one can follow in this epoch is never the one a rescue returns to
                        # (it returns to the older of two): skip it
                        and (
                            len(self.snapshots) == 2
                            or -(-(len(micro) - state.micro) // acc) > snapshot_every
                        )
                        and params_finite(weights)
                    ):
                        dropped = self.snapshots[0] if len(self.snapshots) == 2 else None
                        self.snapshots = [self.snapshots[-1], self._snapshot(dropped)]
                    if state.micro < len(micro) and (
                        step_no % ckpt_every == 0
                        if by_steps
                        else by_time and time.monotonic() - self._last_ckpt >= CHECKPOINT_SECONDS
                    ):
                        self._save_checkpoint()
            self._end_epoch(epoch)

    def _rescue(self, loss: float, norm: float | None) -> None:
        """Go back to the older guard snapshot, lower the whole schedule, record it."""
        cfg, state, guard = self.cfg, self.state, self.guard
        if not math.isfinite(loss):
            reason = "non-finite loss"
        elif norm is not None and not math.isfinite(norm):
            reason = "non-finite gradient norm"
        elif guard.cause == "rebound":
            reason = (
                f"loss back above {guard.rebound_at:.4g} in most of the last {guard.horizon} "
                f"steps: {cfg.guard.rebound:.0%} of its progress from {guard.first_level:.4g} "
                f"to {guard.best_level:.4g} lost"
            )
        else:
            reason = (
                f"loss far above its recent level in {guard.patience} of the last "
                f"{guard.horizon} steps"
            )
        if guard.exhausted:
            event = {
                "type": "event",
                "step": state.step,
                "epoch": state.epoch,
                "action": "guard_abort",
                "reason": reason,
                "loss": loss,
                "rescues": guard.rescues,
                "lr_scale": self.adapter.lr_scale,
            }
            state.events.append(event)
            self._log(event)
            raise TrainingAborted(
                f"divergence guard: {reason} at step {state.step} after {guard.rescues} "
                f"rescue(s) (guard.max_rescues={cfg.guard.max_rescues}); the schedule was "
                f"already scaled by {self.adapter.lr_scale:g}; lower the learning rate "
                f"(optimizer.lr / schedule lr) and rerun"
            )
        # The newest snapshot may already hold the start of the trouble: go back to the
        # older one and forget the newer.
        snapshot = self.snapshots[0]
        self.snapshots = [snapshot]
        new_scale = self.adapter.lr_scale * cfg.guard.factor
        self._restore(snapshot)
        self.adapter.set_lr_scale(new_scale)  # re-writes the LRs (and momentum) now
        guard.record_rescue()
        event = {
            "type": "event",
            "step": state.step,
            "epoch": state.epoch,
            "action": "guard_rescue",
            "reason": reason,
            "loss": loss,
            "restored_step": snapshot["step"],
            "schedule_step": self.adapter.last_epoch,
            "lr_scale": new_scale,
            "lr": self.optimizer.param_groups[0]["lr"],
            "rescue": guard.rescues,
        }
        state.events.append(event)
        self._log(event)
        self.progress.message(
            f"lrpilot fit: guard rescue {guard.rescues}/{cfg.guard.max_rescues} at step "
            f"{state.step} ({reason}); back to the state of step {snapshot['step']}, "
            f"schedule scaled by {new_scale:g}"
        )

    def _end_epoch(self, epoch: int) -> None:
        cfg, state = self.cfg, self.state
        t_eval = time.perf_counter()
        metrics = evaluate(self.model, self.task, self.data, cfg.amp, self.device)
        state.eval_time += time.perf_counter() - t_eval
        metrics = bdist.broadcast_object(metrics)  # rank 0's: every process decides alike
        train_loss = (
            state.epoch_loss_sum / state.epoch_loss_samples
            if state.epoch_loss_samples
            else math.nan
        )
        record = {
            "type": "epoch",
            "epoch": epoch,
            "step": state.step,
            "lr": self.last_lr,
            "train_loss": train_loss,
            **metrics,
            "time": self._elapsed(),
        }
        self._log(record)
        self.progress.epoch(record)
        if self.plateau is not None:
            assert cfg.plateau is not None
            value = record[cfg.plateau["monitor"]]
            self.adapter.report(value)
        improved = self.tracker.update(record[self.tracker.monitor], epoch=epoch, step=state.step)
        state.last_epoch_record = record
        if cfg.early_stopping is not None and self.tracker.should_stop:
            state.stopped_early = True
        state.epoch = epoch + 1
        state.micro = 0
        state.epoch_loss_sum = 0.0
        state.epoch_loss_samples = 0
        if cfg.guard.enabled:
            # rescues never cross an epoch boundary; the older snapshot's buffers are reused
            self.snapshots = [self._snapshot(self.snapshots[0] if self.snapshots else None)]
        if improved:
            # kept in memory (restore_best, checkpoints); best.pt is written with the next
            # checkpoint and at the end of the run
            state.best_record = dict(record)
            # encoded synchronously wherever it is written: its buffers can be reused; the
            # epoch-end snapshot already holds these weights (copied from it: no state_dict;
            # not under DDP, whose snapshot keys carry the wrapper's "module." prefix)
            model = bdist.unwrap(self.model)
            source = (
                self.snapshots[0]["model"]
                if cfg.guard.enabled and model is self.model
                else model.state_dict()
            )
            self.best_model = copy_into(self.best_model, source)
            self._best_written = False
        last = state.epoch >= cfg.epochs or state.stopped_early
        if last:
            self.writer.run_inline()  # the run ends: nothing left to overlap the writes with
        if (
            last
            or cfg.checkpoint_every != "auto"
            or time.monotonic() - self._last_ckpt >= CHECKPOINT_SECONDS
        ):
            self._save_checkpoint()

    # ------------------------------------------------------------------------- finish
    def _diagnose(self) -> list[dict]:
        """``lrpilot.diagnose`` of the run's metrics, printed and returned as dicts (a
        failure of the diagnosis is reported, never fatal to the run)."""
        from lrpilot.diagnosis import diagnose

        try:
            if self.log is not None:
                self.log.flush()
            # every record is written by now: the same history is returned by run()
            self.history = History.read_jsonl(self.run_dir / "metrics.jsonl")
            findings = diagnose(self.history)
        except Exception as exc:  # the run itself is done; say why there is no diagnosis
            findings, error = [], f"diagnosis failed: {type(exc).__name__}: {exc}"
            if self.progress_mode != "none":
                self.progress.message(f"lrpilot fit: {error}")
            return [{"error": error}]
        if self.progress_mode != "none":
            for finding in findings:
                self.progress.message(f"lrpilot fit: diagnosis: {finding.describe()}")
        return [f.to_dict() for f in findings]

    def _finish(self, status: str) -> dict:
        self.progress.close()
        self._write_best()  # e.g. an aborted run: the best weights so far
        summary = finish_run(self, status)  # (overlaps with the last writes)
        if self.main:
            summary["diagnosis"] = self._diagnose()
        self.writer.close()  # every checkpoint is on disk before summary.json appears
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


def atomic_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    import json

    atomic_write_bytes((json.dumps(obj, indent=2) + "\n").encode("utf-8"), path)


def finish_run(trainer: _Trainer, status: str) -> dict[str, Any]:
    """The end of a run: restore best weights if asked, build ``summary.json``."""
    cfg, state = trainer.cfg, trainer.state
    es = cfg.early_stopping
    restored = False
    if (
        es is not None
        and es.restore_best
        and trainer.best_model is not None
        and status != "aborted"
    ):
        bdist.unwrap(trainer.model).load_state_dict(trainer.best_model)
        restored = True
    wall = trainer._elapsed()
    final = {k: v for k, v in (state.last_epoch_record or {}).items() if k not in ("type",)}
    best = None
    if state.best_record is not None:
        best = {
            "monitor": trainer.tracker.monitor,
            "mode": trainer.tracker.mode,
            "value": trainer.tracker.best,
            **{k: v for k, v in state.best_record.items() if k != "type"},
        }
    rescues = [e for e in state.events if e.get("action") == "guard_rescue"]
    return {
        "task": cfg.task,
        "status": status,
        "epochs_run": state.epoch,
        "epochs_planned": cfg.epochs,
        "steps_run": state.step,
        "steps_planned": trainer.total_steps,
        "steps_per_epoch": trainer.steps_per_epoch,
        "optimizer_steps_skipped": state.skipped_steps,
        "samples_seen": state.samples,
        "effective_batch_size": bdist.effective_batch(cfg.batch_size, cfg.accumulate),
        "optimizer_implementation": implementation_of(trainer.optimizer),
        "world_size": bdist.current_env().world_size,
        "lr_scale_factor": bdist.lr_scale_factor(
            cfg.lr_scaling, bdist.effective_batch(cfg.batch_size, cfg.accumulate)
        ),
        "noise_scale": trainer.noise.value
        if trainer.noise is not None and math.isfinite(trainer.noise.value)
        else None,
        "wall_time_s": wall,
        "train_time_s": state.train_time,
        "samples_per_s": state.samples / state.train_time if state.train_time > 0 else None,
        "eval_time_s": state.eval_time,
        "final": final,
        "best": best,
        "restored_best_weights": restored,
        "device": str(trainer.device),
        "guard": {
            "enabled": cfg.guard.enabled,
            "rescues": len(rescues),
            "lr_scale": trainer.adapter.lr_scale,
            "actions": [dict(e) for e in state.events],
        },
        "run_dir": str(trainer.run_dir),
        "tensorboard_dir": str(trainer.run_dir / "tensorboard"),
    }
