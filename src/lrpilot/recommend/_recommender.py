"""The recommender: a pure function from a scenario (and measurements) to a fit config.

:func:`recommend` reads every number from :mod:`lrpilot.recommend._rules` and records, for
each value it writes, a :class:`Choice`: the config key, the value, the rule, and the basis
(``assumed`` rule of thumb, ``measured`` on the task, ``given`` by the user, or the task's
own default). Measurements (:class:`Measurements`, taken by :mod:`lrpilot.recommend._measure`)
replace rules where they exist; :attr:`Recommendation.replaced` lists which.

How the values are chosen:

* **optimizer**: ``--optimizer``; else the scenario's (``scenario.text``/``finetune``/
  ``regression``: AdamW; vision scenarios: ``optimizer.default``, SGD); ``auto`` takes the
  measured pick (``measure.optimizer``).
* **schedule**: a small dataset (``scenario.small_data``, not detection/segmentation):
  one-cycle plus early stopping; detection/segmentation: multistep at 2/3 and 8/9 of the
  run; otherwise cosine with a warmup of ``min(5, 0.1 * epochs)`` epochs
  (``warmup.default``), at least 3 epochs above the batch range (``warmup.large_batch``,
  at most half the run).
* **total batch**: ``--batch``; else the point of ``batch.total`` (64), capped by the
  measured noise scale (power of two at or below ``B_simple``, at least 8) and by the
  dataset size. It is split over ``--gpus`` and, where the measured memory limit is lower,
  into ``accumulate`` micro-batches.
* **peak LR**: the finder's suggestion for the schedule at the total batch when measured
  (multistep uses the cosine fraction, which is not calibrated for multistep); otherwise
  the point of ``lr.sgd`` / ``lr.adamw`` (``lr.adamw_text`` for text), carried from the
  nearest end of the batch range with ``scaling.sgd`` / ``scaling.adamw``.
* ``lr_scaling`` is written with ``base_batch`` = the total batch, so a later change of the
  batch or of the number of GPUs scales the LR by the optimizer's rule.

>>> rec = recommend(Request("detection", dataset_size=50_000, epochs=12))
>>> rec.config["optimizer"]["name"], rec.config["schedule"]["name"]
('sgd', 'multistep')
>>> rec.config["schedule"]["milestones"], rec.config["optimizer"]["lr"]
([8.0, 10.667], 0.01)
"""

from __future__ import annotations

import math
from typing import Any

from lrpilot.errors import ConfigError, check_int
from lrpilot.recommend._records import (
    Choice,
    FinderMeasurement,
    Measurements,
    Recommendation,
    Request,
)
from lrpilot.recommend._rules import rule, value

__all__ = [
    "OPTIMIZER_CHOICES",
    "SCENARIOS",
    "TASK_PLACEHOLDER",
    "Choice",
    "FinderMeasurement",
    "Measurements",
    "Recommendation",
    "Request",
    "accumulation_for",
    "recommend",
]

SCENARIOS = ("classification", "detection", "segmentation", "text", "finetune", "regression")
OPTIMIZER_CHOICES = ("sgd", "adamw", "auto")
FAMILY = {"sgd": "sgd", "adamw": "adam"}  # optimizer -> lrpilot.finder family
TASK_PLACEHOLDER = "CHANGE_ME:task"


def _check_request(req: Request) -> None:
    if req.scenario not in SCENARIOS:
        raise ConfigError(
            f"--scenario={req.scenario!r} is not allowed; valid: {', '.join(SCENARIOS)}"
        )
    if req.optimizer is not None and req.optimizer not in OPTIMIZER_CHOICES:
        raise ConfigError(
            f"--optimizer={req.optimizer!r} is not allowed; valid: {', '.join(OPTIMIZER_CHOICES)}"
        )
    for name in ("dataset_size", "batch", "epochs"):
        if getattr(req, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(req, name), low=1)
    check_int("--gpus", req.gpus, low=1)
    if req.scenario == "finetune" and req.head is None and req.task is None:
        raise ConfigError(
            "--scenario finetune needs --head NAME (the head module's name, e.g. fc or "
            "classifier) or --task to find it"
        )


def _scenario_optimizer(scenario: str) -> tuple[str, str]:
    """``(optimizer, rule id)`` the scenario's rules give."""
    rid = f"scenario.{scenario}"
    scen = value(rid)
    if isinstance(scen, dict) and "optimizer" in scen:
        return scen["optimizer"], rid
    return value("optimizer.default"), "optimizer.default"


def _optimizer(req: Request, m: Measurements, out: list[Choice], replaced: list) -> str:
    if req.optimizer == "auto":
        if m.optimizer_pick is None:
            raise ConfigError("--optimizer auto needs --task (it measures SGD and AdamW)")
        name, rid = _scenario_optimizer(req.scenario)
        if m.optimizer_tie:  # the sweeps do not tell them apart: the scenario's rule stands
            out.append(Choice("optimizer.name", name, rid, "assumed", m.optimizer_reason))
            return name
        out.append(
            Choice(
                "optimizer.name",
                m.optimizer_pick,
                "measure.optimizer",
                "measured",
                m.optimizer_reason,
            )
        )
        replaced.append((rid, "measure.optimizer"))
        return m.optimizer_pick
    if req.optimizer is not None:
        out.append(Choice("optimizer.name", req.optimizer, "", "given", "--optimizer"))
        return req.optimizer
    name, rid = _scenario_optimizer(req.scenario)
    out.append(Choice("optimizer.name", name, rid, "assumed", rule(rid).text))
    return name


def _schedule_kind(req: Request, size: int | None) -> tuple[str, str]:
    """``(kind, rule id)``: one_cycle, multistep or cosine."""
    if req.scenario in ("detection", "segmentation"):
        return "multistep", f"scenario.{req.scenario}"
    if size is not None and size < value("scenario.small_data"):
        return "one_cycle", "scenario.small_data"
    return "cosine", f"scenario.{req.scenario}"


def _floor_pow2(x: float) -> int:
    return 2 ** math.floor(math.log2(x)) if x >= 1 else 1


def _batch(
    req: Request, m: Measurements, size: int | None, out: list[Choice], replaced: list
) -> int:
    if req.batch is not None:
        out.append(Choice("total batch", req.batch, "", "given", "--batch"))
        return req.batch
    low, point, high = value("batch.total")
    total = point
    if m.b_simple is not None and math.isfinite(m.b_simple) and m.b_simple > 0:
        cap = max(8, _floor_pow2(m.b_simple))
        measured = f"B_simple = {m.b_simple:.3g} at initialisation caps the batch at {cap}"
        if cap < point:
            total = cap
            why = f"{measured} (the rule's point is {point}, range {low}-{high})"
            out.append(Choice("total batch", total, "measure.noise_scale", "measured", why))
            replaced.append(("batch.total", "measure.noise_scale"))
        else:
            why = f"{rule('batch.total').text}; {measured}: not binding"
            out.append(Choice("total batch", total, "batch.total", "assumed", why))
    else:
        out.append(Choice("total batch", total, "batch.total", "assumed", rule("batch.total").text))
    if size is not None and total > size:
        total = size
        out.append(Choice("total batch", total, "", "derived", f"the dataset has {size} samples"))
    return total


def accumulation_for(per_device: int, limit: int) -> int:
    """The fewest accumulation steps that split ``per_device`` into equal micro-batches of
    at most ``limit`` (a divisor of ``per_device``); else ``ceil(per_device / limit)``.

    >>> accumulation_for(64, 10), accumulation_for(61, 10), accumulation_for(64, 64)
    (8, 7, 1)
    """
    low = math.ceil(per_device / limit)
    for acc in range(low, min(per_device, 4 * low) + 1):
        if per_device % acc == 0:
            return acc
    return low


def _split(
    total: int, req: Request, m: Measurements, out: list[Choice], notes: list
) -> tuple[int, int]:
    """``(batch_size per device, accumulate)`` for the total batch over ``req.gpus``."""
    per_device = math.ceil(total / req.gpus)
    accumulate = 1
    if m.max_device_batch is not None and per_device > m.max_device_batch:
        accumulate = accumulation_for(per_device, m.max_device_batch)
        per_device = math.ceil(per_device / accumulate)
        out.append(
            Choice(
                "accumulate",
                accumulate,
                "measure.memory",
                "measured",
                f"largest per-device batch that fits: {m.max_device_batch}",
            )
        )
    why = f"total {total} over {req.gpus} device(s)" + (
        f", accumulate {accumulate}" if accumulate > 1 else ""
    )
    out.append(Choice("batch_size", per_device, "", "derived", why))
    if m.has_batchnorm and per_device < value("batch.bn_min"):
        notes.append(
            f"batch_size={per_device} per device with BatchNorm: below {value('batch.bn_min')} "
            "(rule batch.bn_min); use GroupNorm in the model or a larger per-device batch"
        )
    return per_device, accumulate


def _rule_lr(opt: str, scenario: str, total: int) -> tuple[float, str, str]:
    """The rule-of-thumb LR carried to ``total``: ``(lr, rule id, reason)``."""
    from lrpilot.batch import scale_lr

    rid = "lr.adamw_text" if (opt == "adamw" and scenario == "text") else f"lr.{opt}"
    v = value(rid)
    point = v[1] if isinstance(v, tuple) else v
    low, _, high = value("batch.total")
    scaling = value(f"scaling.{opt}")
    if low <= total <= high:
        return point, rid, f"{rule(rid).text} (at total batch {low}-{high})"
    ref = high if total > high else low
    lr = scale_lr(point, ref, total, rule=scaling["rule"], conservative=scaling["conservative"])
    why = (
        f"{rule(rid).text} at batch {ref}, carried to {total} by the {scaling['rule']} rule "
        f"(scaling.{opt}" + (f", trimmed {scaling['conservative']:.0%})" if total > ref else ")")
    )
    return float(f"{lr:.3g}"), rid, why


def _lr(
    opt: str,
    kind: str,
    req: Request,
    m: Measurements,
    total: int,
    out: list[Choice],
    replaced: list,
) -> float:
    from lrpilot.finder.policy import suggest_peak_lr, suggestion_interval

    fm = m.finder.get(opt)
    lr, rid, why = _rule_lr(opt, req.scenario, total)
    if fm is not None and fm.verdict == "ok" and fm.lr_unstable is not None:
        sched = kind if kind in ("one_cycle", "cosine") else "cosine"
        ratio = total / fm.probe_batch
        peak = suggest_peak_lr(fm.lr_unstable, sched, FAMILY[opt], batch_ratio=ratio)
        assert peak is not None
        caveat = "" if kind == sched else " (cosine fraction; not calibrated for multistep)"
        span = suggestion_interval(fm.unstable_interval, sched, FAMILY[opt], batch_ratio=ratio)
        interval = f" (interval {span[0]:.3g}..{span[1]:.3g})" if span else ""
        out.append(
            Choice(
                "optimizer.lr",
                float(f"{peak:.3g}"),
                "measure.finder",
                "measured",
                f"finder: unstable at {fm.lr_unstable:.3g} (probe batch {fm.probe_batch}); "
                f"peak for {sched} at batch {total}{interval}{caveat}; the rule said {lr:.3g}",
            )
        )
        replaced.append((rid, "measure.finder"))
        return float(f"{peak:.3g}")
    if fm is not None:
        why += f"; the finder gave no suggestion (verdict {fm.verdict!r})"
    out.append(Choice("optimizer.lr", lr, rid, "assumed", why))
    return lr


def _warmup_epochs(epochs: int, total: int, out: list[Choice]) -> float:
    top = value("batch.total")[2]
    longest, fraction = value("warmup.default")
    w = min(longest, fraction * epochs)
    rid = "warmup.default"
    if total > top:
        w = max(value("warmup.large_batch"), w)
        rid = "warmup.large_batch"
        if w > 0.5 * epochs:
            w = 0.5 * epochs
    w = round(w, 2)
    out.append(Choice("schedule.warmup.epochs", w, rid, "assumed", rule(rid).text))
    return w


def _schedule(
    kind: str, lr: float, epochs: int, total: int, req: Request, out: list[Choice]
) -> dict:
    top = value("batch.total")[2]
    if kind == "one_cycle":
        out.append(
            Choice(
                "schedule.name",
                kind,
                "scenario.small_data",
                "assumed",
                rule("scenario.small_data").text,
            )
        )
        return {"name": "one_cycle", "max_lr": lr}
    if kind == "multistep":
        rid = f"scenario.{req.scenario}"
        spec = value(rid)
        sched: dict[str, Any] = {
            "name": "multistep",
            "lr": lr,
            "unit": "epochs",
            "gamma": spec["gamma"],
        }
        span = float(epochs)
        if total > top:
            w = _warmup_epochs(epochs, total, out)
            sched["warmup"] = {"epochs": w}
            span -= w
        sched["milestones"] = sorted({round(f * span, 3) for f in spec["milestones"]})
        out.append(Choice("schedule.name", kind, rid, "assumed", rule(rid).text))
        return sched
    w = _warmup_epochs(epochs, total, out)
    rid = f"scenario.{req.scenario}"
    out.append(Choice("schedule.name", kind, rid, "assumed", rule(rid).text))
    return {"name": "cosine", "lr": lr, "warmup": {"epochs": w}}


def _optimizer_settings(opt: str, lr: float, out: list[Choice], no_decay: bool) -> dict:
    settings: dict[str, Any] = {"name": opt, "lr": lr}
    if opt == "sgd":
        settings["momentum"] = value("momentum.sgd")
        out.append(
            Choice(
                "optimizer.momentum",
                settings["momentum"],
                "momentum.sgd",
                "assumed",
                rule("momentum.sgd").text,
            )
        )
    rid = f"weight_decay.{opt}"
    settings["weight_decay"] = value(rid)
    out.append(
        Choice("optimizer.weight_decay", settings["weight_decay"], rid, "assumed", rule(rid).text)
    )
    if no_decay:
        settings["no_decay"] = "auto"
        out.append(
            Choice(
                "optimizer.no_decay",
                "auto",
                "weight_decay.no_decay",
                "assumed",
                rule("weight_decay.no_decay").text,
            )
        )
    return settings


def _epochs(req: Request, m: Measurements, out: list[Choice]) -> int:
    """``--epochs``, else the task's default, else the rule's."""
    if req.epochs is not None:
        out.append(Choice("epochs", req.epochs, "", "given", "--epochs"))
        return req.epochs
    if m.task_epochs is not None:
        out.append(Choice("epochs", m.task_epochs, "", "task default", "the task's default epochs"))
        return m.task_epochs
    epochs = value("epochs.default")
    out.append(Choice("epochs", epochs, "epochs.default", "assumed", rule("epochs.default").text))
    return epochs


def _lr_scaling(opt: str, total: int, out: list[Choice]) -> dict[str, Any]:
    """The optimizer family's LR scaling rule, based at the recommended total batch."""
    scaling = value(f"scaling.{opt}")
    config = {
        "rule": scaling["rule"],
        "base_batch": total,
        "conservative": scaling["conservative"],
    }
    out.append(
        Choice(
            "lr_scaling",
            config,
            f"scaling.{opt}",
            "assumed",
            rule(f"scaling.{opt}").text + f"; the LR above is for total batch {total}",
        )
    )
    return config


def _early_stopping(out: list[Choice]) -> dict[str, Any]:
    """Early stopping that restores the best weights (with a one-cycle schedule)."""
    patience = value("early_stopping.patience")
    out.append(
        Choice(
            "early_stopping.patience",
            patience,
            "early_stopping.patience",
            "assumed",
            rule("early_stopping.patience").text,
        )
    )
    return {"patience": patience, "restore_best": True}


def recommend(
    req: Request,
    measured: Measurements | None = None,
    *,
    supports: frozenset[str] = frozenset(),
) -> Recommendation:
    """The ``lrpilot fit`` config for ``req`` (module docstring), with every value's reason.

    Pure: the same request and measurements give the same config. ``supports`` names the
    regularisation settings this ``lrpilot fit`` accepts (``no_decay``, ``label_smoothing``;
    :func:`lrpilot.recommend._check.supported_knobs`); only those are written.
    """
    _check_request(req)
    m = measured or Measurements()
    out: list[Choice] = []
    replaced: list[tuple[str, str]] = []
    notes: list[str] = []
    size = m.dataset_size if m.dataset_size is not None else req.dataset_size
    if m.dataset_size is not None and req.dataset_size not in (None, m.dataset_size):
        notes.append(
            f"--dataset-size {req.dataset_size} ignored: the task has {m.dataset_size} training samples"
        )
    opt = _optimizer(req, m, out, replaced)
    kind, _ = _schedule_kind(req, size)
    total = _batch(req, m, size, out, replaced)
    batch_size, accumulate = _split(total, req, m, out, notes)
    total = batch_size * accumulate * req.gpus
    epochs = _epochs(req, m, out)
    lr = _lr(opt, kind, req, m, total, out, replaced)
    config: dict[str, Any] = {
        "task": req.task or TASK_PLACEHOLDER,
        "epochs": epochs,
        "batch_size": batch_size,
        "accumulate": accumulate,
        "optimizer": _optimizer_settings(opt, lr, out, "no_decay" in supports),
        "schedule": _schedule(kind, lr, epochs, total, req, out),
    }
    config["lr_scaling"] = _lr_scaling(opt, total, out)
    if kind == "one_cycle":
        config["early_stopping"] = _early_stopping(out)
    if req.scenario == "finetune":
        config["layer_lr"] = _layer_lr(req, m, out)
    smoothing = req.scenario in ("classification", "finetune") and m.cross_entropy is not False
    if smoothing and "label_smoothing" in supports:
        rid = "regularisation.label_smoothing"
        config["loss"] = {"label_smoothing": value(rid)}
        out.append(Choice("loss.label_smoothing", value(rid), rid, "assumed", rule(rid).text))
    if opt == "adamw":
        notes.append(rule("optimizer.plateau_switch").text + " (rule optimizer.plateau_switch)")
    if req.task is None:
        notes.append(f"set task (now {TASK_PLACEHOLDER!r}) to your task before lrpilot fit")
    return Recommendation(config, out, replaced, notes)


def _layer_lr(req: Request, m: Measurements, out: list[Choice]) -> dict[str, float]:
    """``{"<head>.*": 1.0, "*": 0.1}``: the head's parameters first (first match wins in
    ``build_param_groups``), every other parameter (the backbone) at the backbone factor."""
    spec = value("scenario.finetune")
    head = req.head or m.head
    if head is None:
        raise ConfigError(
            "--scenario finetune: the task's model has no top-level module with parameters "
            "to take as the head; give --head NAME"
        )
    basis = "given" if req.head else "measured"
    why = "--head" if req.head else "the last top-level module with parameters in the task's model"
    layer_lr = {f"{head}.*": float(spec["head"]), "*": float(spec["backbone"])}
    out.append(
        Choice(
            "layer_lr",
            layer_lr,
            "scenario.finetune",
            basis,
            f"head {head!r} from {why}; {rule('scenario.finetune').text}",
        )
    )
    return layer_lr
