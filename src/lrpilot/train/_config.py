"""The ``lrpilot fit`` configuration: parsing, defaults and validation.

Everything is checked before any work starts; a bad key or value raises ``ConfigError``
naming the field (the CLI exits with code 2 and writes nothing).

Semantics worth knowing:

* ``batch_size`` is the **micro-batch** (what goes through the model at once, the memory
  batch); the optimizer sees ``batch_size * accumulate`` samples per step (the
  optimization batch). The schedule counts optimizer steps.
* Defaults come from the task (``epochs``, ``batch_size``, ``optimizer``). The optimizer
  mapping is merged key by key over the task's when the optimizer ``name`` is the same (or
  omitted); naming another optimizer starts from that optimizer's own defaults.
* Learning rate: a ``schedule`` that states its own learning rate wins. When the schedule
  omits it, ``optimizer.lr`` fills the schedule's main LR parameter (``lr``, ``max_lr`` for
  one-cycle, ``start_lr`` for ``linear``). Without a ``schedule`` the LR is constant at
  ``optimizer.lr``. A schedule length left out spans the run after its warmup.
* ``plateau``: the :class:`lrpilot.schedules.Plateau` parameters plus ``monitor``
  (default ``val_loss``; ``mode`` defaults to ``min`` for losses, ``max`` for metrics),
  reported once per epoch. ``early_stopping`` takes ``true`` or a mapping.
* ``guard``: ``true``/``false`` or a mapping of :class:`GuardConfig` fields (rule in
  :mod:`lrpilot.train._guard`).
* ``checkpoint_every``: ``auto`` (default: every 60 s of wall time and at the end),
  ``epoch``, or a number of optimizer steps.
* ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ``amp``
  means bf16 autocast on CPU, fp16 autocast with a ``GradScaler`` on CUDA.
* ``optimizer.implementation``: ``auto`` (default: PyTorch's fused kernel where it applies,
  see :func:`lrpilot.train._builders.resolve_implementation`), ``fused``, ``foreach`` or
  ``for-loop``. The same update rule; they differ in speed and in the last bits.
* Regularisation (:mod:`lrpilot.train._knobs`): ``loss: {label_smoothing: 0.1}``
  (cross-entropy tasks, training loss only), ``optimizer.no_decay: auto`` (no weight decay
  on biases and normalisation weights; default ``none``), ``early_stopping``, and
  ``model: {dropout: 0.2, ...}`` (keyword arguments for the task's ``build_model``).
* YAML is read by :mod:`lrpilot._safe_yaml`: ``1e-3`` is a number (YAML 1.2), duplicate keys
  and hostile files (alias bombs, devices, deep nesting, huge values) are refused.

>>> cfg = parse_config({"task": "mnist1d-mlp", "epochs": 2, "optimizer": {"lr": 0.003}})
>>> cfg.optimizer.name, cfg.optimizer.lr, cfg.batch_size, cfg.accumulate
('adamw', 0.003, 64, 1)
>>> parse_config({"task": "mnist1d-mlp", "epoch": 2})
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: unknown config key 'epoch'; valid: accumulate, amp, batch_size, checkpoint_every, device, early_stopping, epochs, grad_clip, guard, layer_lr, log_every, loss, lr_scaling, model, noise_scale, optimizer, plateau, schedule, seed, task
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lrpilot._distributed import launched_world_size
from lrpilot.batch.noise import parse_noise_scale
from lrpilot.batch.scaling import parse_lr_scaling
from lrpilot.errors import ConfigError, check_int, check_range, check_seed, short_repr
from lrpilot.optim import IMPLEMENTATIONS, optimizer_defaults
from lrpilot.tasks import Task, get_task

# LOSS_KEYS is re-exported: the accepted keys, read by lrpilot.recommend._check.supported_knobs
from lrpilot.train._knobs import LOSS_KEYS as LOSS_KEYS
from lrpilot.train._knobs import NO_DECAY, parse_loss, parse_model

TOP_KEYS = (
    "task",
    "seed",
    "epochs",
    "batch_size",
    "optimizer",
    "schedule",
    "plateau",
    "layer_lr",
    "grad_clip",
    "accumulate",
    "amp",
    "early_stopping",
    "guard",
    "log_every",
    "checkpoint_every",
    "device",
    "lr_scaling",
    "noise_scale",
    "loss",
    "model",
)
OPTIMIZERS = ("sgd", "adamw", "adam")
OPTIMIZER_KEYS = (
    "name",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "betas",
    "implementation",
    "no_decay",
)
# The defaults (and IMPLEMENTATIONS) are the optimizer registry's (lrpilot.optim): one set
# for `lrpilot fit`, `lrpilot find` and the memory probe.
_OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {n: optimizer_defaults(n) for n in OPTIMIZERS}
EARLY_STOPPING_KEYS = ("monitor", "mode", "patience", "min_delta", "restore_best")
GUARD_KEYS = (
    "enabled",
    "factor",
    "max_rescues",
    "window",
    "threshold",
    "patience",
    "horizon",
    "min_history",
    "snapshot_every",
    "max_replay",
    "rebound",
    "rebound_progress",
)
PLATEAU_KEYS = (
    "monitor",
    "mode",
    "factor",
    "patience",
    "threshold",
    "threshold_mode",
    "cooldown",
    "min_lr",
    "eps",
)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    implementation: str = "auto"
    no_decay: str = "none"  # lrpilot.train._knobs.NO_DECAY


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best`` the model ends with the weights of the best epoch."""

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass(frozen=True)
class GuardConfig:
    """Divergence guard settings; the rule is documented in :mod:`lrpilot.train._guard`."""

    enabled: bool = True
    factor: float = 0.5
    max_rescues: int = 8
    window: int = 50
    threshold: float = 6.0
    patience: int = 3
    horizon: int = 10
    min_history: int = 3
    snapshot_every: int = 50
    #: steps the rescues may run again in all (None: no limit); past it a rescue puts back
    #: the good weights and goes on from the current step (a compute budget: lrpilot auto)
    max_replay: int | None = None
    rebound: float | None = 0.8
    rebound_progress: float = 6.0


@dataclass(frozen=True)
class FitConfig:
    """A validated ``lrpilot fit`` configuration with every default filled in."""

    task: str
    seed: int = 0
    epochs: int = 15
    batch_size: int = 64
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: dict | None = None
    plateau: dict | None = None
    layer_lr: dict[str, float] = field(default_factory=dict)
    grad_clip: float | None = None
    accumulate: int = 1
    amp: bool = False
    early_stopping: EarlyStoppingConfig | None = None
    guard: GuardConfig = field(default_factory=GuardConfig)
    log_every: int = 10
    checkpoint_every: int | str = "auto"
    device: str = "auto"
    # lrpilot.batch.scaling / lrpilot.batch.noise: {rule, base_batch, conservative} / {beta, every}
    lr_scaling: dict | None = None
    noise_scale: dict | None = None
    loss: dict[str, float] = field(default_factory=dict)  # {label_smoothing}
    model: dict[str, Any] = field(default_factory=dict)  # keyword arguments of build_model

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``config.yaml`` in the run directory holds)."""
        out = asdict(self)
        opt = out["optimizer"]
        if self.optimizer.name == "sgd":
            del opt["betas"]
        else:
            del opt["momentum"], opt["nesterov"]
            opt["betas"] = list(self.optimizer.betas)
        out["checkpoint_every"] = self.checkpoint_every
        return out


def _check_keys(where: str, mapping: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            label = f"{where}.{key}" if where != "config" else str(key)
            raise ConfigError(f"unknown config key {label!r}; valid: {', '.join(sorted(allowed))}")
    return dict(mapping)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not allowed; valid: {', '.join(choices)}")
    return value


def _optimizer(raw: Any, task: Task) -> OptimizerConfig:
    user = _check_keys("optimizer", raw if raw is not None else {}, OPTIMIZER_KEYS)
    task_opt = dict(task.defaults.get("optimizer", {}))
    name = user.get("name", task_opt.get("name", "sgd"))
    name = _check_choice("optimizer.name", name, OPTIMIZERS)
    merged: dict[str, Any] = dict(_OPTIMIZER_DEFAULTS[name])
    if task_opt.get("name", name) == name:
        merged.update({k: v for k, v in task_opt.items() if k != "name"})
    merged.update({k: v for k, v in user.items() if k != "name"})
    lr = check_range("optimizer.lr", merged["lr"], low=0, low_inclusive=False)
    impl = _check_choice(
        "optimizer.implementation", merged.get("implementation", "auto"), IMPLEMENTATIONS
    )
    wd = check_range("optimizer.weight_decay", merged.get("weight_decay", 0.0), low=0)
    no_decay = _check_choice("optimizer.no_decay", merged.get("no_decay", "none"), NO_DECAY)
    if name == "sgd":
        if "betas" in user:
            raise ConfigError("optimizer.betas applies to adam/adamw, not to sgd")
        momentum = check_range(
            "optimizer.momentum", merged.get("momentum", 0.0), low=0, high=1, high_inclusive=False
        )
        nesterov = _check_bool("optimizer.nesterov", merged.get("nesterov", False))
        if nesterov and momentum == 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")
        return OptimizerConfig(
            name, lr, momentum, nesterov, wd, implementation=impl, no_decay=no_decay
        )
    for key in ("momentum", "nesterov"):
        if key in user:
            raise ConfigError(
                f"optimizer.{key} applies to sgd, not to {name} (use optimizer.betas)"
            )
    betas = merged.get("betas", [0.9, 0.999])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError(f"optimizer.betas must be a pair [beta1, beta2], got {betas!r}")
    b1 = check_range("optimizer.betas[0]", betas[0], low=0, high=1, high_inclusive=False)
    b2 = check_range("optimizer.betas[1]", betas[1], low=0, high=1, high_inclusive=False)
    return OptimizerConfig(name, lr, 0.0, False, wd, (b1, b2), impl, no_decay)


def monitor_names(task: Task) -> tuple[str, ...]:
    """Quantities a run records once per epoch, usable as ``monitor``."""
    return ("val_loss", "train_loss", *(f"val_{m}" for m in task.metrics))


def default_mode(monitor: str) -> str:
    """``min`` for losses, ``max`` for task metrics (higher is better for every metric)."""
    return "min" if monitor.endswith("loss") else "max"


def _early_stopping(raw: Any, task: Task) -> EarlyStoppingConfig | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    es = _check_keys("early_stopping", raw, EARLY_STOPPING_KEYS)
    monitor = _check_choice(
        "early_stopping.monitor", es.get("monitor", "val_loss"), monitor_names(task)
    )
    mode = _check_choice(
        "early_stopping.mode", es.get("mode", default_mode(monitor)), ("min", "max")
    )
    patience = check_int("early_stopping.patience", es.get("patience", 5), low=1)
    min_delta = check_range("early_stopping.min_delta", es.get("min_delta", 0.0), low=0)
    restore = _check_bool("early_stopping.restore_best", es.get("restore_best", True))
    return EarlyStoppingConfig(monitor, mode, patience, min_delta, restore)


def _guard(raw: Any) -> GuardConfig:
    if raw is None or raw is True:
        return GuardConfig()
    if raw is False:
        return GuardConfig(enabled=False)
    g = _check_keys("guard", raw, GUARD_KEYS)
    d = GuardConfig()
    out = GuardConfig(
        enabled=_check_bool("guard.enabled", g.get("enabled", d.enabled)),
        factor=check_range(
            "guard.factor",
            g.get("factor", d.factor),
            low=0,
            high=1,
            low_inclusive=False,
            high_inclusive=False,
        ),
        max_rescues=check_int("guard.max_rescues", g.get("max_rescues", d.max_rescues), low=0),
        window=check_int("guard.window", g.get("window", d.window), low=3),
        threshold=check_range(
            "guard.threshold", g.get("threshold", d.threshold), low=0, low_inclusive=False
        ),
        patience=check_int("guard.patience", g.get("patience", d.patience), low=1),
        horizon=check_int("guard.horizon", g.get("horizon", d.horizon), low=1),
        min_history=check_int("guard.min_history", g.get("min_history", d.min_history), low=3),
        snapshot_every=check_int(
            "guard.snapshot_every", g.get("snapshot_every", d.snapshot_every), low=1
        ),
        max_replay=None
        if g.get("max_replay", d.max_replay) is None
        else check_int("guard.max_replay", g.get("max_replay"), low=0),
        rebound=None
        if g.get("rebound", d.rebound) is None
        else check_range(
            "guard.rebound", g.get("rebound", d.rebound), low=0, high=1, low_inclusive=False
        ),
        rebound_progress=check_range(
            "guard.rebound_progress",
            g.get("rebound_progress", d.rebound_progress),
            low=0,
            low_inclusive=False,
        ),
    )
    if out.horizon < out.patience:
        raise ConfigError(f"guard.horizon={out.horizon} must be >= guard.patience={out.patience}")
    return out


def _plateau(raw: Any, task: Task) -> dict | None:
    if raw is None:
        return None
    p = _check_keys("plateau", raw, PLATEAU_KEYS)
    monitor = _check_choice("plateau.monitor", p.get("monitor", "val_loss"), monitor_names(task))
    p["monitor"] = monitor
    p.setdefault("mode", default_mode(monitor))
    _check_choice("plateau.mode", p["mode"], ("min", "max"))
    return p


def _layer_lr(raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"layer_lr must map module-name patterns to multipliers, got {raw!r}")
    out: dict[str, float] = {}
    for pattern, mult in raw.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"layer_lr: pattern {pattern!r} must be a non-empty string")
        out[pattern] = check_range(f"layer_lr[{pattern!r}]", mult, low=0)
    return out


def _device(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {raw!r}")
    if raw == "auto":
        return raw
    import torch

    try:
        dev = torch.device(raw)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device={raw!r} is not a valid torch device ({exc})") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={raw!r}; allowed: auto, cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={raw!r} but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={raw!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return raw


def parse_config(raw: Mapping[str, Any], task: Task | None = None) -> FitConfig:
    """Validate a raw mapping and fill defaults (task defaults first, then lrpilot's).

    ``task`` may pass an already-resolved ``Task`` (the Python API accepts ``Task``
    objects); otherwise ``raw["task"]`` is resolved with :func:`lrpilot.tasks.get_task`.
    """
    cfg = _check_keys("config", raw, TOP_KEYS)
    seed = check_seed(cfg.get("seed", 0))  # before any task work
    if task is None:
        if "task" not in cfg:
            raise ConfigError("config needs 'task' (a built-in name or 'module:function')")
        task = get_task(cfg["task"]) if not isinstance(cfg["task"], Task) else cfg["task"]
    elif "task" in cfg and isinstance(cfg["task"], str) and cfg["task"] != task.name:
        task = get_task(cfg["task"])
    task_name = cfg["task"] if isinstance(cfg.get("task"), str) else task.name
    tdef = task.defaults
    epochs = check_int("epochs", cfg.get("epochs", tdef.get("epochs", 15)), low=1)
    batch_size = check_int("batch_size", cfg.get("batch_size", tdef.get("batch_size", 64)), low=1)
    if batch_size > len(task.train_set):
        raise ConfigError(
            f"batch_size={batch_size} is larger than the training set ({len(task.train_set)} samples)"
        )
    grad_clip = cfg.get("grad_clip")
    if grad_clip is not None:
        grad_clip = check_range("grad_clip", grad_clip, low=0, low_inclusive=False)
    checkpoint_every = cfg.get("checkpoint_every", "auto")
    if checkpoint_every is None:
        checkpoint_every = "auto"
    if checkpoint_every not in ("auto", "epoch"):
        if isinstance(checkpoint_every, str):
            raise ConfigError(
                f"checkpoint_every={checkpoint_every!r}; allowed: auto, epoch or a number of steps"
            )
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, low=1)
    schedule = cfg.get("schedule")
    if schedule is not None:
        if not isinstance(schedule, Mapping):
            raise ConfigError(f"schedule must be a mapping with 'name', got {schedule!r}")
        schedule = copy.deepcopy(dict(schedule))
    fit = FitConfig(
        task=task_name,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=_optimizer(cfg.get("optimizer"), task),
        schedule=schedule,
        plateau=_plateau(cfg.get("plateau"), task),
        layer_lr=_layer_lr(cfg.get("layer_lr")),
        grad_clip=grad_clip,
        accumulate=_accumulate(cfg.get("accumulate", 1), len(task.train_set), batch_size),
        amp=_check_bool("amp", cfg.get("amp", False)),
        early_stopping=_early_stopping(cfg.get("early_stopping"), task),
        guard=_guard(cfg.get("guard")),
        log_every=check_int("log_every", cfg.get("log_every", 10), low=1),
        checkpoint_every=checkpoint_every,
        device=_device(cfg.get("device", "auto")),
        lr_scaling=parse_lr_scaling(cfg.get("lr_scaling")),
        noise_scale=parse_noise_scale(
            cfg.get("noise_scale"), cfg.get("accumulate", 1), launched_world_size()
        ),
        loss=parse_loss(cfg.get("loss"), task),
        model=parse_model(cfg.get("model"), task),
    )
    return fit


def _accumulate(raw: Any, num_samples: int, batch_size: int) -> int:
    """``accumulate`` in ``[1, micro-batches in one epoch]``: one optimizer step must not
    need more micro-batches than an epoch holds.

    >>> _accumulate(1000000, 4000, 64)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: accumulate=1000000 is out of range; allowed: [1, 63] (an epoch of 4000 samples holds 63 micro-batches of batch_size=64)
    """
    micro = math.ceil(num_samples / batch_size)
    value = check_int("accumulate", raw, low=1)
    if value > micro:
        raise ConfigError(
            f"accumulate={short_repr(value)} is out of range; allowed: [1, {micro}] (an epoch "
            f"of {num_samples} samples holds {micro} micro-batches of batch_size={batch_size})"
        )
    return value


def steps_per_epoch(num_samples: int, batch_size: int, accumulate: int) -> int:
    """Optimizer steps in one epoch: ``ceil(ceil(N / batch_size) / accumulate)`` (the last
    micro-batch and the last accumulation group may be short; nothing is dropped).

    >>> steps_per_epoch(4000, 64, 1), steps_per_epoch(4000, 16, 4)
    (63, 63)
    """
    micro = math.ceil(num_samples / batch_size)
    return math.ceil(micro / accumulate)
