"""Cheap measurements on a task for ``lrpilot recommend --task``.

In this order, each a public lrpilot tool:

1. the task itself: training-set size, default epochs, whether the model has BatchNorm, the
   head's name (the last top-level module of ``model.named_children()`` with trainable
   parameters: ``fc`` for a torchvision ResNet, ``classifier`` for many Hugging Face
   models, ``"8"`` for an ``nn.Sequential`` whose last layer is the 9th child);
2. the gradient noise scale ``B_simple`` at initialisation (:func:`lrpilot.batch.noise_scale`,
   small batch 16, big batch 256 or the largest multiple of 16 up to a sixteenth of the
   training set, 16 measurements), only when ``--batch`` is not given;
3. the largest per-device batch that fits (:func:`lrpilot.batch.probe_memory`, on CUDA when
   available, else the CPU peak-RSS fit); a probe that stops at its cap (the training-set
   size) sets no limit;
4. the LR range test (:func:`lrpilot.find_lr` with the ``lrpilot find`` protocol of
   :func:`lrpilot.finder.protocol.probe_plan`: probe batch = total batch // 8, half an epoch)
   for the recommended optimizer, or for SGD and AdamW from the same initial weights and
   batches with ``--optimizer auto``, compared by :func:`lrpilot.recommend._choice.better_sweep`.

Each step's cost is reported (seconds; the finder's in epochs of the training set).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.recommend._choice import SweepComparison, better_sweep
from lrpilot.recommend._recommender import (
    FinderMeasurement,
    Measurements,
    Request,
    recommend,
)
from lrpilot.recommend._rules import value

Progress = Callable[[str], None]
#: what ``measure`` can measure (``lrpilot recommend --measure``); all by default
MEASUREMENTS = ("finder", "noise", "memory")


def head_name(model: Any) -> str | None:
    """The last top-level child of ``model`` with trainable parameters (``None``: none).

    >>> from torch import nn
    >>> head_name(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Softmax(-1)))
    '2'
    """
    last = None
    for name, child in model.named_children():
        if any(p.requires_grad for p in child.parameters()):
            last = name
    return last


def _optimizer(name: str, params: Any) -> Any:
    """The registry's optimizer (:func:`lrpilot.optim.create_optimizer`, PyTorch's default
    kernel) with the hyperparameters the recommended config writes."""
    from lrpilot.optim import create_optimizer

    if name == "sgd":
        return create_optimizer(
            "sgd",
            params,
            lr=0.01,
            momentum=value("momentum.sgd"),
            weight_decay=value("weight_decay.sgd"),
        )
    return create_optimizer("adamw", params, lr=1e-3, weight_decay=value("weight_decay.adamw"))


def _sweep(task: Any, optimizer: str, total: int, seed: int) -> tuple[Any, int]:
    """One finder run with the ``lrpilot find`` protocol: ``(FinderResult, probe batch)``."""
    import torch

    from lrpilot.finder import find_lr
    from lrpilot.finder.protocol import probe_plan
    from lrpilot.finder.task_probe import probe_loader

    plan = probe_plan(len(task.train_set), total)
    torch.manual_seed(seed)
    model = task.build_model()
    loader = probe_loader(task.train_set, plan.batch_size, seed)
    result = find_lr(
        model,
        _optimizer(optimizer, model.parameters()),
        task.loss_fn,
        loader,
        start_lr=plan.start_lr,
        end_lr=plan.end_lr,
        steps=plan.steps,
        batch_ratio=total / plan.batch_size,
    )
    return result, plan.batch_size


def _noise(task: Any, seed: int) -> float | None:
    from lrpilot.batch import noise_scale

    big = min(256, (len(task.train_set) // 16 // 16) * 16)
    if big < 32:
        return None
    return noise_scale(task, small_batch=16, big_batch=big, measurements=16, seed=seed).b_simple


def _task_facts(task: Any, seed: int) -> Measurements:
    """Training-set size, default epochs, BatchNorm, head name (step 1)."""
    import torch

    from lrpilot.batch import has_batchnorm

    torch.manual_seed(seed)
    model = task.build_model()
    epochs = task.defaults.get("epochs")
    ce = task.loss_fn is torch.nn.functional.cross_entropy or isinstance(
        task.loss_fn, torch.nn.CrossEntropyLoss
    )
    return Measurements(
        dataset_size=len(task.train_set),
        task_epochs=int(epochs) if epochs is not None else None,
        has_batchnorm=has_batchnorm(model),
        head=head_name(model),
        cross_entropy=ce,
    )


def _memory(task: Any, optimizer: str | None) -> dict[str, Any]:
    """The memory probe (step 3) on CUDA when available, else on the CPU."""
    import torch

    from lrpilot.batch import probe_memory

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    opt = optimizer if optimizer in ("sgd", "adamw") else "adamw"  # auto: the larger state
    probe = probe_memory(task, device=device, optimizer=opt)
    return {
        "max_device_batch": probe.batch_size,
        "capped": probe.capped,
        "device": device,
        "seconds": time.perf_counter() - t0,
    }


def _finders(task: Any, names: tuple[str, ...], total: int, seed: int, say: Progress):  # type: ignore[no-untyped-def]
    """Step 4: ``(FinderMeasurement per optimizer, recorded sweeps, report)``."""
    finder: dict[str, FinderMeasurement] = {}
    sweeps, report = {}, {}
    for name in names:
        say(f"LR range test ({name})")
        t0 = time.perf_counter()
        result, probe_batch = _sweep(task, name, total, seed)
        finder[name] = FinderMeasurement(
            name,
            result.verdict,
            result.lr_unstable,
            result.unstable_interval,
            probe_batch,
            result.samples,
        )
        sweeps[name] = (result.lrs, result.losses, result.initial_loss)
        report[name] = {
            "verdict": result.verdict,
            "lr_unstable": result.lr_unstable,
            "unstable_interval": result.unstable_interval,
            "probe_batch": probe_batch,
            "epochs_of_compute": result.samples / len(task.train_set),
            "seconds": time.perf_counter() - t0,
        }
    return finder, sweeps, report


def check_measurements(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``names`` validated against :data:`MEASUREMENTS` (unknown ones raise listing them).

    >>> check_measurements(["noise", "finder"])
    ('noise', 'finder')
    """
    for name in names:
        if name not in MEASUREMENTS:
            raise ConfigError(
                f"--measure {name!r} is not a measurement; valid: {', '.join(MEASUREMENTS)}"
            )
    return tuple(names)


def measure(
    req: Request,
    seed: int = 0,
    progress: Progress | None = None,
    which: tuple[str, ...] = MEASUREMENTS,
) -> tuple[Measurements, dict[str, Any]]:
    """Measure ``req.task`` (module docstring): ``(Measurements, report)``; the report holds
    each measurement's raw outcome and cost, and the optimizer comparison when ``auto``.
    ``which`` limits the measurements (the task's own facts are always read); the rules
    stand where nothing was measured. ``--optimizer auto`` needs ``"finder"``."""
    from lrpilot.tasks import get_task

    if req.task is None:
        raise ConfigError("measure needs a task (--task)")
    which = check_measurements(which)
    if req.optimizer == "auto" and "finder" not in which:
        raise ConfigError("--optimizer auto compares finder sweeps: --measure must include finder")
    say = progress or (lambda _msg: None)
    task = get_task(req.task)
    m = _task_facts(task, seed)
    report: dict[str, Any] = {"task": task.name, "dataset_size": m.dataset_size}
    report["measured"] = list(which)
    if req.batch is None and "noise" in which:
        say("noise scale")
        t0 = time.perf_counter()
        b = _noise(task, seed)
        report["noise_scale"] = {"b_simple": b, "seconds": time.perf_counter() - t0}
        m = dataclasses.replace(m, b_simple=b)
    if "memory" in which:
        say("memory probe")
        report["memory"] = _memory(task, req.optimizer)
        if not report["memory"]["capped"]:
            m = dataclasses.replace(m, max_device_batch=report["memory"]["max_device_batch"])
    if "finder" not in which:
        return m, report
    # The total batch the finder must probe for: the plan so far, without an LR.
    auto = req.optimizer == "auto"
    plan_req = dataclasses.replace(req, optimizer=None) if auto else req
    plan = recommend(plan_req, m).config
    total = plan["batch_size"] * plan["accumulate"] * req.gpus
    names = ("sgd", "adamw") if auto else (plan["optimizer"]["name"],)
    finder, sweeps, report["finder"] = _finders(task, names, total, seed, say)
    m = dataclasses.replace(m, finder=finder)
    if auto:
        cmp: SweepComparison = better_sweep(sweeps)
        default = plan["optimizer"]["name"]
        pick = cmp.pick or default
        why = cmp.reason + ("" if cmp.pick else f"; kept the scenario's {default}")
        report["optimizer_choice"] = {
            "pick": pick,
            "tie": cmp.pick is None,
            "scores": cmp.scores,
            "verdicts": cmp.verdicts,
            "reason": why,
        }
        m = dataclasses.replace(
            m, optimizer_pick=pick, optimizer_reason=why, optimizer_tie=cmp.pick is None
        )
    return m, report
