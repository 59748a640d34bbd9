"""Hugging Face ``Trainer`` integration (``pip install lrpilot[hf]``).

* :func:`make_scheduler` for ``Trainer(optimizers=(optimizer, make_scheduler(optimizer,
  schedule)))``: a lrpilot schedule as the Trainer's LR scheduler. The Trainer steps it
  after each optimizer step (so ``gradient_accumulation_steps`` counts optimizer steps)
  and saves/loads its ``state_dict`` in ``scheduler.pt``, so ``trainer.train(
  resume_from_checkpoint=...)`` continues the exact LR sequence of an unstopped run;
* :class:`LRPilotTrainer` takes ``schedule=`` (a schedule or a ``from_config`` mapping:
  omitted lengths span the run's optimizer steps, a missing peak LR is
  ``TrainingArguments.learning_rate``; e.g. ``{"name": "wsd", "warmup": 100,
  "decay_fraction": 0.2}`` without computing the stable/decay steps by hand) and builds
  the optimizer from ``TrainingArguments`` as usual; it works with ``model_init``, where
  ``optimizers=`` is refused by the Trainer;
* :class:`LRPilotCallback`: the guard's signals (a non-finite gradient at any optimizer
  step; a non-finite or exploding logged loss, judged by
  :class:`lrpilot.train._guard.DivergenceGuard`) stop training before a damaged checkpoint
  is saved and say what to do; ``metrics.jsonl`` for ``lrpilot diagnose``; the diagnosis
  printed at the end. The guard sees the losses the Trainer logs: ``logging_steps=1``
  shows it every step (a larger value gives it interval means);
* :func:`find_lr`: lrpilot's LR range test for a model whose output has ``loss`` (batches
  are dicts of model inputs with ``labels``); everything is restored after the sweep.
  :func:`choose_lr` wraps it as the LR decision where the autopilot plugs in.

Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks" (2017).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrpilot.errors import ConfigError
from lrpilot.finder import FinderResult
from lrpilot.integrations._common import (
    CallModule,
    LRDecision,
    MetricsFile,
    PairLoader,
    decide_lr,
    guard_reason,
    make_guard,
    missing_extra,
    print_diagnosis,
    resolve_schedule,
)
from lrpilot.schedules import ScheduleAdapter, attach
from lrpilot.train._guard import DIVERGED, SUSPECT

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as exc:
    raise missing_extra("transformers", "hf", "lrpilot.integrations.transformers") from exc

__all__ = ["LRPilotCallback", "LRPilotTrainer", "choose_lr", "find_lr", "make_scheduler"]


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    *,
    num_training_steps: int | None = None,
    steps_per_epoch: int | None = None,
    default_lr: float | None = None,
    **attach_kwargs: Any,
) -> ScheduleAdapter:
    """A torch ``LRScheduler`` driving ``optimizer`` from a lrpilot schedule (or a
    ``from_config`` mapping, whose omitted lengths span ``num_training_steps`` optimizer
    steps; a mapping without its peak LR takes ``default_lr``), for
    ``Trainer(optimizers=(optimizer, scheduler))``.

    >>> import torch
    >>> from lrpilot import schedules
    >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = make_scheduler(opt, {"name": "wsd", "lr": 1e-3, "warmup": 2,
    ...                              "decay_fraction": 0.5}, num_training_steps=8)
    >>> [round(sched.schedule(s), 6) for s in range(9)]
    [0.0, 0.0005, 0.001, 0.001, 0.001, 0.00075, 0.0005, 0.00025, 0.0]
    """
    sched, momentum = resolve_schedule(
        schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=num_training_steps,
        default_lr=default_lr,
    )
    if momentum is not None:
        attach_kwargs.setdefault("momentum", momentum)
    return attach(optimizer, sched, **attach_kwargs)


class LRPilotTrainer(Trainer):
    """A ``Trainer`` whose LR scheduler is a lrpilot schedule (``schedule=``); everything
    else is the Trainer's. ``create_scheduler`` is the Trainer's documented override point,
    called after the optimizer exists on every ``train()`` (also with ``model_init``)."""

    def __init__(self, *args: Any, schedule: Any = None, **kwargs: Any) -> None:
        if schedule is not None and not (callable(schedule) or isinstance(schedule, Mapping)):
            raise ConfigError(f"schedule must be a lrpilot schedule or a mapping, got {schedule!r}")
        self.lrpilot_schedule = schedule
        self._lrpilot_steps_per_epoch: int | None = None
        super().__init__(*args, **kwargs)

    def set_initial_training_values(self, args: Any, dataloader: Any) -> Any:
        values = super().set_initial_training_values(args, dataloader)
        self._lrpilot_steps_per_epoch = int(values[1])  # optimizer steps per epoch
        return values

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        if self.lrpilot_schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            _refuse_hf_schedule_args(self.args)
            target = optimizer if optimizer is not None else self.optimizer
            if target is None:
                raise ConfigError("create_scheduler needs the optimizer; create it first")
            scheduler: Any = make_scheduler(
                target,
                self.lrpilot_schedule,
                num_training_steps=num_training_steps,
                steps_per_epoch=self._lrpilot_steps_per_epoch,
                default_lr=self.args.learning_rate,
            )
            self.lr_scheduler = scheduler
            self._created_lr_scheduler = True  # rebuilt on the next train(), as the Trainer does
        return self.lr_scheduler


def _refuse_hf_schedule_args(args: Any) -> None:
    """The Trainer's own schedule settings would be ignored next to ``schedule=``: refuse
    them instead (the warmup belongs in the lrpilot schedule)."""
    given = []
    if str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) != "linear":
        given.append(f"lr_scheduler_type={args.lr_scheduler_type!r}")
    if getattr(args, "warmup_steps", 0):
        given.append(f"warmup_steps={args.warmup_steps!r}")
    if getattr(args, "warmup_ratio", None):
        given.append(f"warmup_ratio={args.warmup_ratio!r}")
    if getattr(args, "lr_scheduler_kwargs", None):
        given.append(f"lr_scheduler_kwargs={args.lr_scheduler_kwargs!r}")
    if given:
        raise ConfigError(
            f"LRPilotTrainer(schedule=...) sets the LR schedule, so TrainingArguments' "
            f"{', '.join(given)} would be ignored; put the warmup in the lrpilot schedule "
            "(e.g. 'warmup': {'steps': N}) and leave these at their defaults"
        )


def _outputs_loss(outputs: Any, _target: Any) -> torch.Tensor:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ConfigError(
            "the model's output has no loss: the batches must hold the labels (e.g. 'labels')"
        )
    return loss


def find_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable,
    **kwargs: Any,
) -> FinderResult:
    """:func:`lrpilot.find_lr` for a Hugging Face model: each batch is a dict of model
    inputs (with ``labels``), the loss is ``model(**batch).loss``. Parameters, buffers,
    train/eval modes, optimizer state and RNG state are restored after the sweep; other
    keyword arguments are ``lrpilot.find_lr``'s (``batch_ratio`` = training batch /
    ``train_loader``'s batch).
    """
    from lrpilot.finder import find_lr as _find_lr

    wrapper = CallModule(model, lambda batch: model(**batch))
    return _find_lr(wrapper, optimizer, _outputs_loss, PairLoader(train_loader), **kwargs)


def choose_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable,
    *,
    schedule: str = "cosine",
    **options: Any,
) -> LRDecision:
    """The LR decision for a Hugging Face model (today the range test of :func:`find_lr`,
    probing with ``train_loader``'s batches: ``batch_ratio=1`` unless given); the autopilot's
    decision plugs in here. ``decision.lr`` is the peak LR to train with (``None`` when the
    test gave no usable answer; ``decision.message`` says why)."""
    wrapper = CallModule(model, lambda batch: model(**batch))
    return decide_lr(
        wrapper,
        optimizer,
        _outputs_loss,
        PairLoader(train_loader),
        schedule_kind=schedule,
        options=options,
    )


def _grad_norm(model: nn.Module) -> float:
    norms = [
        torch.linalg.vector_norm(p.grad.detach().float())
        for p in model.parameters()
        if p.grad is not None
    ]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))


class LRPilotCallback(TrainerCallback, ExportableState):
    """Guard signals, ``metrics.jsonl`` and the diagnosis for a Hugging Face ``Trainer``.

    Args:
        guard: stop on a non-finite gradient or a diverging logged loss.
        log_dir: where ``metrics.jsonl`` goes (default ``args.output_dir``).
        diagnose: print ``lrpilot diagnose``'s findings when training ends.
        guard_options: options for :class:`~lrpilot.train._guard.DivergenceGuard`.
        check_grads: check the gradients for non-finite values before each optimizer step
            (one norm per step; catches a NaN the Trainer's ``logging_nan_inf_filter``
            hides from the logged loss).
    """

    def __init__(
        self,
        *,
        guard: bool = True,
        log_dir: str | Path | None = None,
        diagnose: bool = True,
        guard_options: Mapping[str, Any] | None = None,
        check_grads: bool = True,
    ) -> None:
        for name, value in (("guard", guard), ("diagnose", diagnose), ("check_grads", check_grads)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        self._guard_options = dict(guard_options or {})
        self.guard = make_guard(self._guard_options) if guard else None
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.diagnose = diagnose
        self.check_grads = check_grads and guard
        self.stop_message: str | None = None
        self.findings: list = []
        self._metrics: MetricsFile | None = None
        self._run_dir: Path | None = None
        self._bad_grad: float | None = None
        self._trouble_since: int | None = None  # first suspect step of the current trouble
        self._last_logged = 0
        self._epoch_sum = 0.0
        self._epoch_steps = 0
        self._pending_epoch: dict | None = None
        self._last_lr = math.nan
        self._eval: dict[str, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._run_dir = self.log_dir or Path(args.output_dir)
        resumed = state.global_step > 0
        if state.is_world_process_zero:
            self._metrics = MetricsFile(self._run_dir, state.global_step if resumed else None)
        self._last_logged = state.global_step
        self.stop_message = None
        self._trouble_since = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if self.check_grads and model is not None:
            norm = _grad_norm(model)
            if not math.isfinite(norm):
                self._bad_grad = norm

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bad_grad is not None:
            norm, self._bad_grad = self._bad_grad, None
            self._stop(args, state, control, f"non-finite gradient norm ({norm})", math.nan)
        elif self.stop_message is not None:
            control.should_training_stop = True
            control.should_save = False

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs or state.global_step <= self._last_logged:
            return
        steps = state.global_step - self._last_logged
        self._last_logged = state.global_step
        loss = float(logs["loss"])
        record: dict[str, Any] = {
            "type": "step",
            "step": state.global_step,
            "epoch": _epoch_index(state.epoch),
            "lr": float(logs.get("learning_rate", math.nan)),
            "train_loss": loss,
        }
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if steps > 1:
            record["steps_averaged"] = steps
        self._last_lr = record["lr"]
        self._write(record)
        if math.isfinite(loss):
            self._epoch_sum += loss * steps
            self._epoch_steps += steps
        if self.guard is not None and self.stop_message is None:
            verdict = self.guard.observe(loss, None if grad_norm is None else float(grad_norm))
            if verdict == SUSPECT and self._trouble_since is None:
                self._trouble_since = state.global_step
            elif self.guard.healthy:
                self._trouble_since = None
            if verdict == DIVERGED:
                self._stop(args, state, control, guard_reason(self.guard.cause), loss)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        for key, value in (metrics or {}).items():
            if key.startswith("eval_") and isinstance(value, (int, float)):
                name = key[len("eval_") :]
                if name in ("runtime", "samples_per_second", "steps_per_second"):
                    continue
                self._eval[f"val_{name}"] = float(value)
        if self._pending_epoch is not None:  # evaluation at the end of the epoch
            self._pending_epoch.update(self._eval)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush_epoch()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_message is not None:
            control.should_save = False  # an epoch-end save would hold the damaged weights
        self._flush_epoch()
        self._pending_epoch = {
            "type": "epoch",
            "epoch": _epoch_index(state.epoch),
            "step": state.global_step,
            "lr": self._last_lr,  # the last logged (used) LR
            "train_loss": self._epoch_sum / self._epoch_steps if self._epoch_steps else math.nan,
            **self._eval,
        }
        self._epoch_sum, self._epoch_steps = 0.0, 0

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._metrics is not None:
            self._metrics.flush()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush_epoch()
        if self._metrics is None:
            return
        self._metrics.close()
        self._metrics = None
        if self.diagnose and self._run_dir is not None:
            self.findings = print_diagnosis(self._run_dir)
        if self.stop_message is not None:
            print(self.stop_message)

    # -- checkpoint state (TrainingArguments.restore_callback_states_from_checkpoint) -----
    def state(self) -> dict:
        """What the Trainer stores in ``trainer_state.json`` and rebuilds the callback from:
        the constructor's arguments and the guard's state (so a resumed guard goes on from
        the checkpoint's loss window)."""
        return {
            "args": {
                "guard": self.guard is not None,
                "log_dir": None if self.log_dir is None else str(self.log_dir),
                "diagnose": self.diagnose,
                "guard_options": self._guard_options,
                "check_grads": self.check_grads,
            },
            "attributes": {"guard_state": self.guard_state},
        }

    @property
    def guard_state(self) -> dict | None:
        return None if self.guard is None else self.guard.state_dict()

    @guard_state.setter
    def guard_state(self, value: dict | None) -> None:
        if self.guard is not None and value is not None:
            self.guard.load_state_dict(value)

    # -- helpers --------------------------------------------------------------------------
    def _flush_epoch(self) -> None:
        if self._pending_epoch is not None:
            self._write(self._pending_epoch)
            self._pending_epoch = None
            self._eval = {}

    def _write(self, record: dict) -> None:
        if self._metrics is not None:
            self._metrics.write(record)

    def _stop(self, args: Any, state: Any, control: Any, reason: str, loss: float) -> None:
        control.should_training_stop = True
        control.should_save = False  # never save the damaged weights as a checkpoint
        step = state.global_step
        since = step if self._trouble_since is None else min(step, self._trouble_since)
        good = _last_checkpoint_before(args.output_dir, since)
        where = f"resume from {good}" if good else "restart (no earlier checkpoint was saved)"
        self.stop_message = (
            f"lrpilot guard: training stopped at step {step}: {reason}"
            + (f" (trouble since step {since})" if since < step else "")
            + f". The weights of this step are not saved. What to do: {where} with the peak "
            "learning rate halved "
            "(TrainingArguments.learning_rate or the schedule's lr), e.g. "
            "trainer.train(resume_from_checkpoint=...); run `lrpilot diagnose "
            f"{self._run_dir}` for the curves."
        )
        self._write(
            {
                "type": "event",
                "step": step,
                "epoch": _epoch_index(state.epoch),
                "action": "guard_stop",
                "reason": reason,
                "loss": loss,
                "resume_from": good,
            }
        )
        print(self.stop_message)


def _epoch_index(epoch: float | None) -> int:
    """The 0-based epoch in progress from the Trainer's fractional ``state.epoch`` (which
    reaches ``e + 1`` at the last step of epoch ``e``)."""
    if not epoch:
        return 0
    return max(math.ceil(float(epoch)) - 1, 0)


def _last_checkpoint_before(output_dir: str, step: int) -> str | None:
    """The newest ``checkpoint-N`` directory in ``output_dir`` with ``N < step``."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in root.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir() and int(match.group(1)) < step:
            n = int(match.group(1))
            if best is None or n > best[0]:
                best = (n, path)
    return None if best is None else str(best[1])
