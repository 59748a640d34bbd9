"""``lrpilot check``: what the rules flag in a fit config, with the rule and a fix.

:func:`check_config` parses the config with :func:`lrpilot.train.parse_config` (a config
that does not parse raises ``ConfigError``), builds the task's model (to see BatchNorm,
norm and bias parameters) and the schedule exactly as ``lrpilot fit`` would, and returns one
:class:`Finding` per flagged value. The checks, each tied to a rule of
:mod:`lrpilot.recommend._rules`:

* ``batch.bn_min``: a model with BatchNorm and ``batch_size`` (per device) under 4;
* ``check.lr_factor``: the schedule's peak LR (``lr_scaling`` included) more than 10x
  outside the optimizer's usual range (``lr.sgd``, ``lr.adamw``), the range carried from the
  nearest end of ``batch.total`` to the total batch with ``scaling.<optimizer>``;
* ``warmup.large_batch``: a total batch above ``batch.total``'s range whose LR does not
  warm up (the LR at step 0 is at least half the peak) or warms up for under 3 epochs;
* ``scaling.<optimizer>``: a total batch other than the task's default batch, no
  ``lr_scaling``, and a peak LR that is not within ``check.hand_scaled`` (25%) of the task's
  LR scaled by the linear or the square-root rule (trimmed by ``conservative`` or not);
* ``check.schedule_tolerance``: a schedule that decays to its end value (cosine, linear,
  polynomial, one-cycle, wsd) and ends more than 10% before the run's last step, or any
  schedule (a multistep's last milestone too) that ends more than 10% after it;
* ``weight_decay.no_decay``: weight decay above 0 that also applies to biases and
  normalisation weights (the parameters with at most one dimension, timm's rule), unless
  ``optimizer.no_decay`` excludes them.

The total batch is ``batch_size * accumulate * gpus`` (``gpus``: processes, as under
``torchrun``); optimizer steps per epoch are ``ceil(N / (batch_size * gpus * accumulate))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lrpilot.recommend._rules import rule, value

DECAYING = ("cosine", "linear", "polynomial", "one_cycle", "wsd")


@dataclass(frozen=True)
class Finding:
    """One warning: the ``key`` and its ``value``, the ``rule`` id, what is wrong, the fix."""

    key: str
    value: Any
    rule: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.key}={self.value}: {self.message} [rule {self.rule}: {rule(self.rule).source}] fix: {self.fix}"


def usual_range(optimizer: str, total_batch: int) -> tuple[float, float]:
    """The optimizer's usual LR range carried to ``total_batch``.

    >>> usual_range("sgd", 64), usual_range("sgd", 256)
    ((0.008, 0.02), (0.016, 0.04))
    """
    from lrpilot.batch import scale_lr

    opt = "sgd" if optimizer == "sgd" else "adamw"
    low, _, high = value(f"lr.{opt}")
    b_low, _, b_high = value("batch.total")
    if b_low <= total_batch <= b_high:
        return low, high
    ref = b_high if total_batch > b_high else b_low
    rule_name = value(f"scaling.{opt}")["rule"]
    return (scale_lr(low, ref, total_batch, rule_name), scale_lr(high, ref, total_batch, rule_name))


def _schedule_values(schedule: Any, total: int) -> tuple[float, int, list[float]]:
    """``(peak, step of the peak, values)`` over the run (every step up to 20 000, else an
    even sample plus the schedule's own boundaries)."""
    if total <= 20_000:
        steps = list(range(total))
    else:
        stride = total / 20_000
        steps = sorted(
            {int(i * stride) for i in range(20_000)}
            | {b for b in schedule.boundaries(total) if b < total}
        )
    vals = [float(schedule(s)) for s in steps]
    i = max(range(len(vals)), key=vals.__getitem__)
    return vals[i], steps[i], vals


def _norm_bias_count(model: Any) -> int:
    return sum(1 for p in model.parameters() if p.requires_grad and p.ndim <= 1)


def supported_knobs() -> frozenset[str]:
    """The regularisation settings this ``lrpilot fit`` accepts, of ``no_decay``
    (``optimizer.no_decay``) and ``label_smoothing`` (``loss.label_smoothing``)."""
    from lrpilot.train import _config as train_config

    out = set()
    if "no_decay" in getattr(train_config, "OPTIMIZER_KEYS", ()):
        out.add("no_decay")
    if "label_smoothing" in getattr(train_config, "LOSS_KEYS", ()):
        out.add("label_smoothing")
    return frozenset(out)


def no_decay_supported() -> bool:
    """Whether ``lrpilot fit`` configs accept ``optimizer.no_decay``."""
    return "no_decay" in supported_knobs()


def check_config(raw: Mapping[str, Any], *, gpus: int = 1) -> list[Finding]:
    """The findings for a raw fit config (module docstring); ``[]`` when clean."""
    from lrpilot.batch.scaling import lr_scale_factor
    from lrpilot.errors import check_int
    from lrpilot.schedules import from_config, scale
    from lrpilot.tasks import get_task
    from lrpilot.train import parse_config
    from lrpilot.train._builders import build_model, schedule_mapping

    gpus = check_int("--gpus", gpus, low=1)
    cfg = parse_config(raw)
    task = get_task(raw["task"])
    model = build_model(task, cfg)  # with the config's model settings
    n = len(task.train_set)  # type: ignore[arg-type]
    total_batch = cfg.batch_size * cfg.accumulate * gpus
    spe = math.ceil(n / (cfg.batch_size * gpus * cfg.accumulate))
    total = cfg.epochs * spe
    mapping = schedule_mapping(cfg)
    schedule = from_config(mapping, steps_per_epoch=spe, total_steps=total)
    factor = lr_scale_factor(cfg.lr_scaling, total_batch)
    scaled = scale(schedule, factor) if factor != 1.0 else schedule
    peak, peak_step, vals = _schedule_values(scaled, total)
    ctx = _Ctx(
        cfg, task, model, total_batch, spe, total, mapping, scaled, factor, peak, peak_step, vals
    )
    out: list[Finding] = []
    for check in (_bn, _lr_range, _warmup, _scaling, _length, _decay):
        out.extend(check(ctx))
    return out


@dataclass
class _Ctx:
    cfg: Any
    task: Any
    model: Any
    total_batch: int
    spe: int
    total: int
    mapping: dict
    schedule: Any
    factor: float  # lr_scaling's multiplier at this total batch
    peak: float
    peak_step: int
    values: list[float]

    @property
    def opt(self) -> str:
        return "sgd" if self.cfg.optimizer.name == "sgd" else "adamw"


def _bn(c: _Ctx) -> list[Finding]:
    from lrpilot.batch import has_batchnorm

    low = value("batch.bn_min")
    if not has_batchnorm(c.model) or c.cfg.batch_size >= low:
        return []
    return [
        Finding(
            "batch_size",
            c.cfg.batch_size,
            "batch.bn_min",
            f"the model has BatchNorm and sees {c.cfg.batch_size} sample(s) per device (< {low})",
            f"a per-device batch_size of at least {low}, or GroupNorm instead of BatchNorm in "
            "the model (accumulate does not help BatchNorm)",
        )
    ]


def _lr_range(c: _Ctx) -> list[Finding]:
    low, high = usual_range(c.opt, c.total_batch)
    k = value("check.lr_factor")
    if low / k <= c.peak <= high * k:
        return []
    where = "above" if c.peak > high * k else "below"
    return [
        Finding(
            "optimizer.lr",
            f"{c.peak:.3g} (peak)",
            "check.lr_factor",
            f"more than {k:g}x {where} {c.cfg.optimizer.name}'s usual {low:.3g}-{high:.3g} "
            f"at total batch {c.total_batch} (rule lr.{c.opt})",
            f"an LR in {low:.3g}-{high:.3g}, or measure it: lrpilot find --task {c.cfg.task}",
        )
    ]


def _warmup(c: _Ctx) -> list[Finding]:
    top = value("batch.total")[2]
    need = value("warmup.large_batch")
    if c.total_batch <= top:
        return []
    warms = c.values[0] < 0.5 * c.peak
    epochs = c.peak_step / c.spe if warms else 0.0
    if epochs >= need:
        return []
    what = f"warms up for {epochs:.2g} epochs" if warms else "has no warmup"
    return [
        Finding(
            "schedule",
            c.mapping.get("name"),
            "warmup.large_batch",
            f"total batch {c.total_batch} (> {top}) and the LR {what}",
            f"add warmup: {{epochs: {need}}} to the schedule (at least {need} epochs)",
        )
    ]


def _scaling(c: _Ctx) -> list[Finding]:
    from lrpilot.batch import scale_lr

    base = c.task.defaults.get("batch_size")
    if base is None or c.total_batch == base or c.cfg.lr_scaling is not None:
        return []
    task_opt = dict(c.task.defaults.get("optimizer", {}))
    if task_opt.get("name", c.cfg.optimizer.name) != c.cfg.optimizer.name or "lr" not in task_opt:
        return []
    ref = float(task_opt["lr"])
    tol = value("check.hand_scaled")
    spec = value(f"scaling.{c.opt}")
    expected = [
        scale_lr(ref, base, c.total_batch, r, cons)
        for r in ("linear", "sqrt")
        for cons in (0.0, spec["conservative"])
    ]
    unscaled = c.peak / c.factor
    if any(abs(unscaled / e - 1) <= tol for e in expected):
        return []
    mine = scale_lr(ref, base, c.total_batch, spec["rule"], spec["conservative"])
    return [
        Finding(
            "batch_size",
            f"{c.cfg.batch_size} (total {c.total_batch})",
            f"scaling.{c.opt}",
            f"the total batch differs from the task's {base} but the LR ({unscaled:.3g}) was "
            f"not scaled (the task's {ref:g} by the {spec['rule']} rule gives {mine:.3g})",
            f"lr_scaling: {{rule: {spec['rule']}, base_batch: {base}, conservative: "
            f"{spec['conservative']}}} (with the task's LR), or set the LR to {mine:.3g}",
        )
    ]


def _length(c: _Ctx) -> list[Finding]:
    length = c.schedule.length
    tol = value("check.schedule_tolerance")
    name = c.mapping.get("name")
    if length is None:
        return []
    key = "schedule"
    if length > (1 + tol) * c.total:
        end = c.values[-1]
        return [
            Finding(
                key,
                name,
                "check.schedule_tolerance",
                f"the schedule ends at step {length}, after the run's {c.total} steps; the "
                f"run stops at LR {end:.3g} ({end / c.peak:.0%} of the peak)",
                "leave the schedule's length out (it then spans the run) or match it to "
                f"epochs={c.cfg.epochs} ({c.spe} steps per epoch)",
            )
        ]
    if name in DECAYING and length < (1 - tol) * c.total:
        return [
            Finding(
                key,
                name,
                "check.schedule_tolerance",
                f"the schedule ends at step {length} of {c.total}: the last "
                f"{1 - length / c.total:.0%} of the run stays at LR {float(c.schedule(length)):.3g}",
                "leave the schedule's length out (it then spans the run) or lower epochs",
            )
        ]
    return []


def _decay(c: _Ctx) -> list[Finding]:
    wd = c.cfg.optimizer.weight_decay
    excluded = getattr(c.cfg.optimizer, "no_decay", None) not in (None, False, "none")
    count = _norm_bias_count(c.model)
    if wd <= 0 or excluded or count == 0:
        return []
    fix = (
        "optimizer.no_decay: auto"
        if no_decay_supported()
        else "weight_decay: 0 (this lrpilot has no optimizer.no_decay to exclude them)"
    )
    return [
        Finding(
            "optimizer.weight_decay",
            wd,
            "weight_decay.no_decay",
            f"weight decay also applies to {count} bias/normalisation parameter tensor(s)",
            fix,
        )
    ]
