"""PyTorch Lightning integration (``pip install lrpilot[lightning]``).

``LRPilot`` is a callback; ``configure_optimizers`` is for ``LightningModule.
configure_optimizers``. With the callback::

    trainer = L.Trainer(callbacks=[LRPilot(schedule={"name": "cosine", "lr": 0.1,
                                                     "warmup": {"epochs": 1}}, find_lr=True)])

* the schedule (a lrpilot schedule, or a :func:`lrpilot.schedules.from_config` mapping
  whose omitted lengths span ``trainer.estimated_stepping_batches`` optimizer steps, whose
  epochs are optimizer steps per epoch and whose omitted peak LR is the optimizer's LR) is
  attached to the optimizer and stepped once per OPTIMIZER step: the callback counts
  ``trainer.global_step``, so ``accumulate_grad_batches`` and the last, shorter
  accumulation window of an epoch are counted exactly as Lightning steps. Group LRs keep
  their ratios to the first group. Without ``schedule`` the callback drives a lrpilot
  scheduler returned by :func:`configure_optimizers`, or, with no scheduler at all, a
  constant schedule at the optimizer's LR;
* ``find_lr=True`` runs the LR range test (:func:`lrpilot.find_lr`, through the module's
  own ``training_step``; ``finder=`` passes its options) in ``on_train_start``, after
  every checkpoint restore, restores model, optimizer and RNG state, and THEN writes the
  chosen peak into the schedule (``lr_scale = chosen / peak``) and so into the live
  optimizer (Lightning's own finder once applied the suggestion before its restore and
  lost it). The decision and its evidence are a ``lr_decision`` event; a resumed run
  keeps it and does not probe again. :meth:`LRPilot.choose_lr` is where the autopilot's
  decision plugs in;
* the guard (:class:`lrpilot.train._guard.DivergenceGuard`, ``guard_options=``) reads each
  optimizer step's mean loss; on a divergence it restores the older of the last two
  in-memory snapshots (taken every ``snapshot_every`` healthy steps, CPU copies of model
  and optimizer), moves the schedule back to that snapshot's step and multiplies the
  whole schedule by ``guard_factor``. Unlike ``lrpilot fit`` it cannot rewind the data
  order: training goes on with the next batches. After ``max_rescues`` it raises
  :class:`lrpilot.TrainingAborted`;
* ``metrics.jsonl`` (``step``/``epoch``/``event`` records of :mod:`lrpilot.history`) is
  written to ``log_dir`` (default ``trainer.log_dir``), so ``lrpilot diagnose LOG_DIR``
  works; the LR is also logged to the Trainer's loggers as ``lrpilot/lr``;
* the callback's ``state_dict`` (schedule position and scale, guard state, decision) goes
  into Lightning checkpoints, so ``trainer.fit(model, ckpt_path=...)`` continues the LR
  sequence exactly (snapshots are not saved: a resumed run takes a new one at once).

Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks" (2017) for
the range test; the guard's rule is documented in :mod:`lrpilot.train._guard`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from lrpilot.errors import ConfigError, TrainingAborted
from lrpilot.integrations._common import (
    CallModule,
    LRDecision,
    MetricsFile,
    PairLoader,
    decide_lr,
    finder_kind,
    group_multipliers,
    make_guard,
    missing_extra,
    resolve_schedule,
    schedule_peak,
)
from lrpilot.integrations._rollback import Rollback
from lrpilot.schedules import ScheduleAdapter, attach, constant

try:
    from lightning.pytorch import Callback
except ImportError as exc:
    raise missing_extra("lightning.pytorch", "lightning", "lrpilot.integrations.lightning") from exc

__all__ = ["LRPilot", "configure_optimizers"]

STATE_VERSION = 1


def configure_optimizers(
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    *,
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
    **attach_kwargs: Any,
) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns for a lrpilot schedule:
    ``{"optimizer": optimizer, "lr_scheduler": {"scheduler": attach(optimizer, schedule),
    "interval": "step", "frequency": 1}}``. Lightning then steps it after every optimizer
    step (not every batch) and saves its ``state_dict`` in checkpoints. ``schedule`` may be
    a ``from_config`` mapping (``steps_per_epoch``/``total_steps`` resolve its lengths,
    e.g. ``total_steps=self.trainer.estimated_stepping_batches``).

    >>> import torch
    >>> from lrpilot.schedules import cosine
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> out = configure_optimizers(opt, cosine(0.1, steps=10))
    >>> out["lr_scheduler"]["interval"], opt.param_groups[0]["lr"]
    ('step', 0.1)
    """
    sched, momentum = resolve_schedule(
        schedule, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    if momentum is not None:
        attach_kwargs.setdefault("momentum", momentum)
    adapter = attach(optimizer, sched, **attach_kwargs)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": adapter, "interval": "step", "frequency": 1},
    }


class LRPilot(Callback):
    """lrpilot in a Lightning Trainer; see the module docstring.

    >>> import tempfile, lightning.pytorch as L, torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from lrpilot import schedules
    >>> class Regression(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 1)
    ...     def training_step(self, batch, batch_idx):
    ...         return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=1.0)
    >>> data = DataLoader(TensorDataset(torch.randn(40, 4), torch.randn(40, 1)), batch_size=8)
    >>> pilot = LRPilot(schedules.cosine(0.1, steps=6), log_dir=tempfile.mkdtemp())
    >>> trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[pilot],
    ...     accelerator="cpu", logger=False, enable_checkpointing=False,
    ...     enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(Regression(), data)  # 5 batches per epoch: 3 optimizer steps
    >>> trainer.global_step, pilot.adapter.last_epoch, pilot.adapter.get_last_lr()
    (6, 6, [0.0])

    Args:
        schedule: a lrpilot schedule, a ``from_config`` mapping, or None (use the
            module's lrpilot scheduler, else a constant LR).
        find_lr: run the LR decision (:meth:`choose_lr`) before training.
        guard: run the divergence guard with rollback.
        log_dir: where ``metrics.jsonl`` goes (default ``trainer.log_dir``).
        finder: options for :func:`lrpilot.find_lr` (``steps``, ``start_lr``, ...).
        guard_options: options for :class:`~lrpilot.train._guard.DivergenceGuard`.
        guard_factor: the LR cut of a rescue (``0 < factor < 1``).
        snapshot_every: optimizer steps between guard snapshots.
    """

    def __init__(
        self,
        schedule: Any = None,
        *,
        find_lr: bool = False,
        guard: bool = True,
        log_dir: str | Path | None = None,
        finder: Mapping[str, Any] | None = None,
        guard_options: Mapping[str, Any] | None = None,
        guard_factor: float = 0.5,
        snapshot_every: int = 50,
    ) -> None:
        if not isinstance(find_lr, bool):
            raise ConfigError(f"find_lr must be True or False, got {find_lr!r}")
        if not isinstance(guard, bool):
            raise ConfigError(f"guard must be True or False, got {guard!r}")
        if not (isinstance(guard_factor, (int, float)) and 0 < guard_factor < 1):
            raise ConfigError(f"guard_factor={guard_factor!r} is out of range; allowed: (0, 1)")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int):
            raise ConfigError(f"snapshot_every must be an integer >= 1, got {snapshot_every!r}")
        if snapshot_every < 1:
            raise ConfigError(f"snapshot_every={snapshot_every} is out of range; allowed: >= 1")
        if schedule is not None and not (callable(schedule) or isinstance(schedule, Mapping)):
            raise ConfigError(f"schedule must be a lrpilot schedule or a mapping, got {schedule!r}")
        self.schedule_spec = schedule
        self.find_lr = find_lr
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.finder_options = dict(finder or {})
        self.guard = make_guard(guard_options) if guard else None
        self.guard_factor = float(guard_factor)
        self.snapshot_every = snapshot_every
        self.adapter: ScheduleAdapter | None = None
        self.owns_schedule = False
        self.decision: dict | None = None
        self.events: list[dict] = []
        self._pending: dict | None = None
        self._seen_step = 0  # trainer.global_step already accounted for
        self._micro: list[float] = []  # losses of the optimizer step in progress
        self._lr_used: float | None = None
        self._epoch_sum = 0.0
        self._epoch_n = 0
        self.rollback: Rollback | None = None
        self._metrics: MetricsFile | None = None

    # -- set-up ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigError(
                f"LRPilot drives exactly one optimizer; the module has {len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        configs = list(trainer.lr_scheduler_configs)
        found = [c for c in configs if isinstance(c.scheduler, ScheduleAdapter)]
        if self.schedule_spec is not None:
            if configs:
                raise ConfigError(
                    "LRPilot(schedule=...) and a scheduler from configure_optimizers would both "
                    "set the LR; pass the schedule to one of them only"
                )
            total = _total_steps(trainer)  # first: it sets up the training dataloader
            spe = self._steps_per_epoch(trainer)
            sched, momentum = resolve_schedule(
                self.schedule_spec,
                steps_per_epoch=spe,
                total_steps=total,
                default_lr=float(optimizer.param_groups[0]["lr"]),
            )
            self._attach(optimizer, sched, momentum)
        elif found:
            config = found[0]
            if config.interval != "step" or config.frequency != 1:
                raise ConfigError(
                    f"the lrpilot scheduler is stepped every {config.frequency} "
                    f"{config.interval}(s); LRPilot needs interval='step', frequency=1 "
                    "(use lrpilot.integrations.lightning.configure_optimizers)"
                )
            self.adapter, self.owns_schedule = config.scheduler, False
        elif configs:
            if self.guard is not None or self.find_lr:
                raise ConfigError(
                    f"LRPilot(guard=True / find_lr=True) changes the LR through a lrpilot "
                    f"schedule, but the module's scheduler is a "
                    f"{type(configs[0].scheduler).__name__}; use "
                    "lrpilot.integrations.lightning.configure_optimizers, pass schedule= to "
                    "LRPilot, or set guard=False and find_lr=False"
                )
        else:
            lr = float(optimizer.param_groups[0]["lr"])
            self._attach(optimizer, constant(lr), None)
        saved = None if self._pending is None else self._pending.get("schedule")
        if saved is not None and self.owns_schedule and self.adapter is not None:
            self.adapter.load_state_dict(saved)

    def _attach(self, optimizer: Any, sched: Callable, momentum: Callable | None) -> None:
        self.adapter = attach(
            optimizer, sched, momentum=momentum, multipliers=group_multipliers(optimizer)
        )
        self.owns_schedule = True

    @staticmethod
    def _steps_per_epoch(trainer: Any) -> int | None:
        batches = trainer.num_training_batches
        if not isinstance(batches, int) or batches <= 0:
            return None  # an infinite/iterable loader: epoch lengths are unknown
        return math.ceil(batches / trainer.accumulate_grad_batches)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.adapter is not None:
            self.adapter.refresh()  # the checkpoint's optimizer state was loaded after on_fit_start
        resumed = self._pending is not None
        self._pending = None
        self._seen_step = trainer.global_step  # the checkpoint's step when resumed
        self._micro = []
        if trainer.is_global_zero:
            run_dir = self.log_dir or Path(trainer.log_dir or trainer.default_root_dir)
            self._metrics = MetricsFile(run_dir, self._seen_step if resumed else None)
        if self.find_lr and self.decision is None:
            decision = self.choose_lr(trainer, pl_module)
            # every process applies rank 0's decision (each probed its own data shard)
            self._apply_decision(trainer, trainer.strategy.broadcast(decision, src=0))
        if self.guard is not None and self.adapter is not None:
            self.rollback = Rollback(
                self.guard, self.adapter, factor=self.guard_factor, every=self.snapshot_every
            )
            self.rollback.snapshot(trainer.global_step, pl_module)

    # -- the LR decision -----------------------------------------------------------------
    def choose_lr(self, trainer: Any, pl_module: Any) -> LRDecision:
        """The LR decision before training (``find_lr=True``): today the LR range test
        through ``pl_module.training_step`` on the training loader; the autopilot's
        decision plugs in here. Everything the test touches is restored by
        :func:`lrpilot.find_lr`."""
        if not pl_module.automatic_optimization:
            raise ConfigError("LRPilot(find_lr=True) needs automatic optimization")
        loader = trainer.train_dataloader
        if loader is None:
            raise ConfigError("LRPilot(find_lr=True): the Trainer has no training dataloader")
        if isinstance(loader, (list, tuple, Mapping)):
            raise ConfigError("LRPilot(find_lr=True) needs a single training dataloader")
        assert self.adapter is not None
        wrapper = CallModule(pl_module, lambda batch: _step_loss(pl_module, batch))
        # A module detached from its Trainer may call self.log() in training_step: Lightning
        # then only warns (that is how *_step methods are tested without a Trainer).
        attached = pl_module._trainer
        pl_module.trainer = None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*self.log\\(\\)")
                return decide_lr(
                    wrapper,
                    self.adapter.optimizer,
                    lambda out, _target: out,
                    PairLoader(loader),
                    schedule_kind=finder_kind(self.adapter.schedule),
                    options=self.finder_options,
                )
        except RuntimeError as exc:
            if "not attached to a `Trainer`" not in str(exc):
                raise
            raise ConfigError(
                "LRPilot(find_lr=True) runs training_step outside the loop, without the "
                "Trainer (self.log is then skipped), but this training_step reads self.trainer; "
                "read it only when self._trainer is not None, or run lrpilot.find_lr yourself"
            ) from exc
        finally:
            pl_module.trainer = attached

    def _apply_decision(self, trainer: Any, decision: LRDecision) -> None:
        assert self.adapter is not None
        if decision.lr is not None:
            total = _total_steps(trainer)
            length = getattr(self.adapter.schedule, "length", None)
            peak = schedule_peak(self.adapter.schedule, total or length or 1)
            if peak > 0:
                self.adapter.set_lr_scale(decision.lr / peak)
        lr = float(self.adapter.optimizer.param_groups[0]["lr"])
        event = decision.event(
            trainer.global_step, trainer.current_epoch, lr, self.adapter.lr_scale
        )
        self.decision = {k: v for k, v in event.items() if k != "type"}
        self._event(event)
        print(
            f"lrpilot: LR decision ({decision.source}): {decision.verdict}; "
            + (
                f"peak LR {decision.lr:.4g} written into the schedule"
                if decision.lr is not None
                else f"schedule unchanged ({decision.message})"
            )
        )

    # -- per batch -------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._lr_used = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning divides the micro-batch loss by accumulate_grad_batches
            self._micro.append(float(loss.detach().float()) * trainer.accumulate_grad_batches)
        done = trainer.global_step - self._seen_step
        if done <= 0:
            return
        self._seen_step = trainer.global_step
        if self.owns_schedule and self.adapter is not None:
            for _ in range(done):
                self.adapter.step()
        step_loss = sum(self._micro) / len(self._micro) if self._micro else math.nan
        self._micro = []
        if trainer.world_size > 1:  # one verdict for all processes: the mean over them
            value = torch.tensor(step_loss, device=pl_module.device)
            step_loss = float(trainer.strategy.reduce(value, reduce_op="mean"))
        self._end_step(trainer, pl_module, step_loss)

    def _end_step(self, trainer: Any, pl_module: Any, loss: float) -> None:
        lr = self._lr_used if self._lr_used is not None else math.nan
        step, epoch = trainer.global_step, trainer.current_epoch
        if self._metrics is not None:
            self._metrics.write(
                {"type": "step", "step": step, "epoch": epoch, "lr": lr, "train_loss": loss}
            )
        for logger in trainer.loggers:
            logger.log_metrics({"lrpilot/lr": lr}, step=step)
        if math.isfinite(loss):
            self._epoch_sum += loss
            self._epoch_n += 1
        if self.rollback is None:
            return
        try:
            event = self.rollback.observe(step, epoch, loss, pl_module)
        except TrainingAborted:
            self._event(self.rollback.abort_event(step, epoch, loss))
            raise
        if event is not None:
            self._event(event)
            print(
                f"lrpilot guard: rescue {event['rescue']} at step {step} ({event['reason']}); "
                f"back to the state of step {event['restored_step']}, schedule scaled by "
                f"{event['lr_scale']:g}"
            )

    # -- epochs, end, logging -----------------------------------------------------------------
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        record: dict[str, Any] = {
            "type": "epoch",
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "lr": self._lr_used if self._lr_used is not None else math.nan,  # last one used
            "train_loss": self._epoch_sum / self._epoch_n if self._epoch_n else math.nan,
        }
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val_") and isinstance(value, (int, float, torch.Tensor)):
                record[key] = float(value)
        self._epoch_sum, self._epoch_n = 0.0, 0
        if self._metrics is not None:
            self._metrics.write(record)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        if self._metrics is not None:
            self._metrics.flush()

    def _event(self, event: dict) -> None:
        self.events.append(event)
        if self._metrics is not None:
            self._metrics.write(event)

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Primitive-only state (loadable with ``weights_only=True``)."""
        return {
            "version": STATE_VERSION,
            "schedule": self.adapter.state_dict()
            if self.adapter is not None and self.owns_schedule
            else None,
            "seen_step": self._seen_step,
            "guard": None if self.guard is None else self.guard.state_dict(),
            "decision": self.decision,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != STATE_VERSION:
            raise ConfigError(
                f"LRPilot state version={state_dict.get('version')!r} is not supported; "
                f"allowed: {STATE_VERSION}"
            )
        self._pending = dict(state_dict)
        self._seen_step = int(state_dict["seen_step"])
        self.decision = state_dict.get("decision")
        if self.guard is not None and state_dict.get("guard") is not None:
            self.guard.load_state_dict(state_dict["guard"])


def _total_steps(trainer: Any) -> int | None:
    """The run's optimizer steps, or None when unknown (an infinite loader)."""
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) and total >= 1 else None


def _step_loss(pl_module: Any, batch: Any) -> torch.Tensor:
    out = pl_module.training_step(batch, 0)
    loss = out.get("loss") if isinstance(out, Mapping) else out
    if not isinstance(loss, torch.Tensor):
        raise ConfigError(
            "LRPilot(find_lr=True): training_step must return the loss (a tensor or a dict "
            f"with 'loss'), got {type(out).__name__}"
        )
    return loss
