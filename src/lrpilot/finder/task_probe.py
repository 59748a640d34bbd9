"""The LR range test on a :class:`~lrpilot.tasks.Task`, with the calibrated protocol.

:func:`find_for_task` is what ``lrpilot find`` runs: the task's defaults give the optimizer
(built by the optimizer registry, :mod:`lrpilot.optim`, with the settings ``lrpilot fit``
would train with) and the training batch; :func:`~lrpilot.finder.protocol.probe_plan` gives
the probe batch (training batch // 8), the number of steps (half an epoch of samples, at
least 20 steps) and the LR range; :func:`~lrpilot.finder.find_lr` sweeps and decides.

>>> from lrpilot.tasks import get_task
>>> setup = prepare_probe(get_task("mnist1d-mlp"), optimizer="sgd")
>>> setup.settings["momentum"], setup.plan.batch_size, setup.batch_size
(0.0, 8, 64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lrpilot.errors import ConfigError, check_int, check_seed
from lrpilot.finder.core import find_lr
from lrpilot.finder.policy import schedule_fraction
from lrpilot.finder.protocol import (
    MAX_BUDGET_EPOCHS,
    MIN_SWEEP_STEPS,
    ProbePlan,
    default_probe_batch,
    probe_plan,
)
from lrpilot.finder.report import consistency, explain_peak, next_steps
from lrpilot.finder.result import FinderResult
from lrpilot.optim import (
    create_optimizer,
    get_optimizer,
    makes_sparse_grads,
    resolve_implementation,
    resolve_settings,
)
from lrpilot.tasks import Task, get_task
from lrpilot.tasks.base import dataset_len

#: The most repeats ``find_for_task`` runs (each costs one sweep).
MAX_REPEATS = 10

__all__ = ["ProbeSetup", "TaskFinding", "find_for_task", "prepare_probe", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    >>> resolve_device("cpu").type
    'cpu'
    """
    if not isinstance(name, str) or not (
        name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise ConfigError(f"device={name!r} is not allowed; valid: auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine")
    return torch.device(name)


def build_task_optimizer(
    settings: dict[str, Any], model: nn.Module, params: Any = None
) -> torch.optim.Optimizer:
    """The optimizer ``settings`` (:func:`lrpilot.optim.resolve_settings`) describe, over
    ``params`` (default: the model's trainable parameters), with the kernel
    ``settings["implementation"]`` (default ``auto``) resolves to, as ``lrpilot fit`` does."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    flat = (
        [p for g in params for p in g["params"]]
        if params and isinstance(params[0], dict)
        else params
    )
    impl = resolve_implementation(
        str(settings.get("implementation", "auto")), flat, sparse_grads=makes_sparse_grads(model)
    )
    hyper = {k: v for k, v in settings.items() if k not in ("name", "implementation")}
    return create_optimizer(settings["name"], params, implementation=impl, **hyper)


@dataclass
class ProbeSetup:
    """Everything a task's sweep needs: the model (on its device), the optimizer, the
    loader of probe batches, the protocol's plan, the training batch and the optimizer
    settings it was built with."""

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    plan: ProbePlan
    batch_size: int
    settings: dict[str, Any]
    device: torch.device


def prepare_probe(
    task: Task | str,
    *,
    optimizer: str | None = None,
    batch_size: int | None = None,
    probe_batch: int | None = None,
    budget_epochs: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> ProbeSetup:
    """Build the model, optimizer and probe loader of a task's sweep (module doc). The
    optimizer is the registry's, with the settings ``lrpilot fit`` would train with
    (:func:`lrpilot.optim.resolve_settings`); ``optimizer`` names another one, which then
    starts from its own defaults. Bad values raise ``ConfigError`` naming the argument."""
    task = get_task(task)
    n = dataset_len(task.train_set)
    task_opt = dict(task.defaults.get("optimizer", {}))
    settings = resolve_settings(optimizer, task_opt)
    get_optimizer(settings["name"])
    if batch_size is None:
        batch_size = task.defaults.get("batch_size", 64)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is out of range; allowed: [1, inf]")
    if batch_size > n:
        raise ConfigError(f"batch_size={batch_size} is larger than the training set ({n})")
    plan = probe_plan(n, batch_size, budget_epochs=budget_epochs, probe_batch=probe_batch)
    check_seed(seed)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = task.build_model().to(dev)
    opt = build_task_optimizer(settings, model)
    loader = probe_loader(task.train_set, plan.batch_size, seed)
    return ProbeSetup(task, model, opt, loader, plan, batch_size, settings, dev)


def probe_loader(train_set: Any, batch_size: int, seed: int) -> DataLoader[Any]:
    """The sweep's loader: shuffled by ``seed``, full batches of the probe batch size."""
    return DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass(frozen=True)
class TaskFinding:
    """:func:`find_for_task`'s answer: the finder's result and the set-up it came from."""

    result: FinderResult
    task: str
    optimizer: str
    batch_size: int
    plan: ProbePlan
    train_size: int
    device: str
    amp: bool
    seed: int = 0

    @property
    def epochs_of_compute(self) -> float:
        return self.result.samples / self.train_size

    def to_dict(self) -> dict[str, Any]:
        """The result's dict plus the set-up and the text report's explanation and next
        steps (what ``lrpilot find --json`` prints)."""
        res = self.result
        payload = res.to_dict()
        payload.update(
            {
                "task": self.task,
                "optimizer": self.optimizer,
                "batch_size": self.batch_size,
                "probe_batch_size": self.plan.batch_size,
                "epochs_of_compute": self.epochs_of_compute,
                "budget_raised": self.plan.raised,
                "device": self.device,
                "amp": self.amp,
                "peak_explanation": explain_peak(res, self.plan.batch_size, self.batch_size),
                "next_steps": next_steps(res, self.task, self.seed),
                "repeats": dict(
                    zip(("verdict", "message"), consistency(res) or (None, None), strict=True)
                ),
            }
        )
        return payload

    def summary_lines(self) -> list[str]:
        """What ``lrpilot find`` prints: a note when the budget was raised, the suggestion or
        the verdict with the compute spent, and for a noisy sweep the flags to try."""
        res, plan, n = self.result, self.plan, self.train_size
        budget_epochs = plan.samples_budget / n
        lines = []
        if plan.raised:
            lines.append(
                f"note: half an epoch of {n} samples is too few for a sweep of "
                f"{MIN_SWEEP_STEPS} steps of batch {plan.batch_size}; this one uses "
                f"{plan.samples_budget} samples ({budget_epochs:.2f} epochs)"
            )
        compute = (
            f"{res.samples} samples = {self.epochs_of_compute:.2f} epoch at probe batch "
            f"{plan.batch_size}"
        )
        agreement = consistency(res)
        if res.verdict == "ok" and agreement is not None and agreement[0] == "inconsistent":
            return [
                *lines,
                f"{self.task}: no reliable suggestion, verdict inconsistent: {agreement[1]}; "
                f"the pooled curve says unstable at lr ~ {res.lr_unstable:.3g} ({compute})",
                *next_steps(res, self.task, self.seed),
            ]
        if res.verdict == "ok":
            lo, hi = res.suggestion_interval or (math.nan, math.nan)
            lines.append(
                f"{self.task} ({self.optimizer}, batch {self.batch_size}): training becomes "
                f"unstable at lr ~ {res.lr_unstable:.3g}; suggested peak LR for "
                f"{res.schedule}: {res.suggestion:.3g} (interval {lo:.3g}..{hi:.3g}, "
                f"confidence {res.confidence}; {compute})"
            )
            why = explain_peak(res, plan.batch_size, self.batch_size)
            lines += [f"repeats: {agreement[1]}"] if agreement else []
            return [*lines, *([why] if why else []), *next_steps(res, self.task, self.seed)]
        lines.append(
            f"{self.task}: no suggestion, verdict {res.verdict}: {res.message} ({compute})"
        )
        larger = min(2 * plan.batch_size, self.batch_size)
        if res.verdict == "noisy" and larger > plan.batch_size:
            budget = min(math.ceil(20 * budget_epochs) / 10, MAX_BUDGET_EPOCHS)
            lines.append(
                f"hint: --probe-batch {larger} lowers the noise (add --budget-epochs "
                f"{budget:g} to keep the number of tested LRs); the rule was calibrated at "
                f"probe batch {default_probe_batch(self.batch_size)}, so check its suggestion "
                "with a short run"
            )
        return lines


def find_for_task(
    task: Task | str,
    *,
    optimizer: str | None = None,
    batch_size: int | None = None,
    schedule: str = "one_cycle",
    probe_batch: int | None = None,
    budget_epochs: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    amp: bool = False,
    repeats: int = 1,
) -> TaskFinding:
    """Run the LR range test on ``task`` with the calibrated protocol and suggest the peak
    LR for ``schedule`` at the training batch (module doc). ``probe_batch`` and
    ``budget_epochs`` override the protocol (the suggestion then uses the ratio training
    batch / probe batch, with which the rule was not calibrated). ``amp`` runs the sweep's
    forward passes under autocast (bfloat16 on CPU, float16 with a gradient scaler on CUDA).
    ``repeats`` (1 in the calibrated protocol) runs the sweep that many times on later
    batches and pools the curves; the text then says whether the repeats agree
    (:func:`lrpilot.finder.report.consistency`).

    >>> found = find_for_task("mnist1d-mlp", batch_size=256, budget_epochs=0.5)
    >>> found.result.verdict, found.plan.batch_size, found.optimizer
    ('ok', 32, 'adamw')
    """
    schedule_fraction(schedule)  # validate before any work
    check_int("repeats", repeats, low=1, high=MAX_REPEATS)
    if not isinstance(amp, bool):
        raise ConfigError(f"amp must be True or False, got {amp!r}")
    setup = prepare_probe(
        task,
        optimizer=optimizer,
        batch_size=batch_size,
        probe_batch=probe_batch,
        budget_epochs=budget_epochs,
        seed=seed,
        device=device,
    )
    plan = setup.plan
    result = find_lr(
        setup.model,
        setup.optimizer,
        setup.task.loss_fn,
        setup.loader,
        start_lr=plan.start_lr,
        end_lr=plan.end_lr,
        steps=plan.steps,
        schedule=schedule,
        amp=amp,
        batch_ratio=setup.batch_size / plan.batch_size,
        repeats=repeats,
    )
    return TaskFinding(
        result=result,
        task=setup.task.name,
        optimizer=setup.settings["name"],
        batch_size=setup.batch_size,
        plan=plan,
        train_size=dataset_len(setup.task.train_set),
        device=str(setup.device),
        amp=amp,
        seed=seed,
    )
