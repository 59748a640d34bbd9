"""``batch_size: auto``: the optimization batch from the gradient noise scale, the
micro-batch from the memory probe, the LR by a named scaling rule.

Decision (:func:`choose_batch`, a pure function of the measurements):

* ``B_simple = tr(Σ)/|G|²`` is measured at initialisation (:func:`lrpilot.batch.noise_scale`,
  ``NOISE_MEASUREMENTS`` draws of ``NOISE_BIG`` samples in micro-batches of ``NOISE_SMALL``).
  McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training") show that at the
  critical batch ``B_crit ≈ B_simple`` training needs twice the minimum number of steps and
  twice the minimum number of samples: the balanced choice. The optimization batch is the
  power of two nearest to ``B_simple``, clamped to ``[max(MIN_BATCH, reference / SPAN),
  min(SPAN x reference, n / MIN_STEPS_PER_EPOCH)]`` (``reference``: the task's or config's
  batch, the one its LR is known at; the scaling rules are only trusted within a factor
  ``SPAN``; an epoch keeps at least ``MIN_STEPS_PER_EPOCH`` steps). A noise scale that is
  not finite and positive keeps the reference batch (said so).
* The micro-batch fits the memory limit (:func:`lrpilot.batch.probe_memory`, capped at
  the upper clamp, so the probe stays small): :func:`lrpilot.batch.plan_accumulation`
  splits the batch into ``accumulate`` micro-batches per optimizer step (at least
  ``ceil(batch / limit)``, an exact split preferred; the effective batch is ``micro x
  accumulate``).
* The LR follows the effective batch by the optimizer family's rule
  (:func:`lrpilot.batch.scaling.rule_for_optimizer`: ``linear`` for SGD, ``sqrt`` for the
  Adam family): ``lr = lr_ref x rule(effective / reference)``.

Cost: the noise probe's ``NOISE_MEASUREMENTS x NOISE_BIG`` forward+backward samples and the
memory probe's (each tried batch x its training steps); both count in ``compute_multiple``.
The decision is stored in ``autopilot/batch.json`` so a resumed run reuses it (the CPU
memory probe reads the resident memory, which is not bit-reproducible).

>>> c = choose_batch(64, memory_limit=256, b_simple=138.5, stderr=31.0, n_fit=3600,
...                  optimizer="adamw")
>>> c.batch, c.accumulate, c.effective, c.rule, round(c.lr_factor, 4)
(128, 1, 128, 'sqrt', 1.4142)
>>> c = choose_batch(64, memory_limit=40, b_simple=300.0, stderr=20.0, n_fit=3600, optimizer="sgd")
>>> c.batch, c.accumulate, c.effective, c.lr_factor
(32, 8, 256, 4.0)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError

#: the noise probe: draws of NOISE_BIG samples in micro-batches of NOISE_SMALL
NOISE_SMALL = 8
NOISE_BIG = 64
NOISE_MEASUREMENTS = 6
#: the chosen batch stays within this factor of the reference batch
SPAN = 4
MIN_BATCH = 8
MIN_STEPS_PER_EPOCH = 8
#: training steps per memory-probe try (lrpilot.batch.probe_memory's default)
MEMORY_STEPS = 2
BATCH_FILE = "batch.json"


@dataclass(frozen=True)
class BatchChoice:
    """The decision: micro-batch ``batch``, ``accumulate``, ``effective = batch x
    accumulate``, the scaling ``rule`` and its ``lr_factor``; ``reason`` in words and the
    ``evidence`` (measurements, bounds); ``samples``: forward+backward samples spent."""

    batch: int
    accumulate: int
    effective: int
    reference: int
    rule: str
    lr_factor: float
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchChoice:
        return cls(**d)


def _finite(x: float) -> float | None:
    """``x``, or ``None`` when it is not finite (``autopilot.json`` is strict JSON)."""
    return float(x) if math.isfinite(x) else None


def bounds(reference: int, n_fit: int) -> tuple[int, int]:
    """``(low, high)`` of the optimization batch (module doc); ``low > high``: impossible.

    >>> bounds(64, 3600), bounds(64, 100)
    ((16, 256), (16, 12))
    """
    low = max(MIN_BATCH, reference // SPAN)
    high = min(SPAN * reference, n_fit // MIN_STEPS_PER_EPOCH)
    return low, high


def check_possible(reference: int, n_fit: int) -> None:
    """``ConfigError`` when ``batch_size: auto`` cannot work on ``n_fit`` training samples."""
    low, high = bounds(reference, n_fit)
    if low > high or n_fit < NOISE_BIG:
        need = max(NOISE_BIG, MIN_STEPS_PER_EPOCH * low)
        raise ConfigError(
            f"batch_size=auto needs a training part of at least {need} samples (the noise "
            f"probe draws {NOISE_BIG}; an epoch keeps {MIN_STEPS_PER_EPOCH} steps of at least "
            f"{low}); this task has {n_fit}: give a fixed batch_size"
        )


def choose_batch(
    reference: int,
    *,
    memory_limit: int,
    b_simple: float,
    stderr: float,
    n_fit: int,
    optimizer: str,
) -> BatchChoice:
    """The decision of the module doc from recorded measurements (pure)."""
    from lrpilot.batch.plan import plan_accumulation
    from lrpilot.batch.scaling import get_rule, rule_for_optimizer

    check_possible(reference, n_fit)
    low, high = bounds(reference, n_fit)
    if math.isfinite(b_simple) and b_simple > 0:
        target = 2 ** round(math.log2(b_simple))
        why = (
            f"noise scale B_simple = {b_simple:.3g} (± {stderr:.2g}): nearest power of two {target}"
        )
    else:
        target = reference
        why = f"noise scale not measurable ({b_simple!r}): the reference batch {reference}"
    effective_goal = min(max(target, low), high)
    if effective_goal != target:
        why += f", clamped to [{low}, {high}]"
    split = plan_accumulation(max(1, memory_limit), effective_goal)
    micro, accumulate, effective = split.per_device, split.accumulate, split.effective
    rule = rule_for_optimizer(optimizer)
    factor = float(get_rule(rule)(effective / reference))
    if accumulate > 1:
        why += f"; memory fits {memory_limit}: {accumulate} micro-batches of {micro}"
    why += f"; LR x {factor:.3g} ({rule} rule, {optimizer}, from batch {reference})"
    evidence = {
        "b_simple": _finite(b_simple),
        "b_simple_stderr": _finite(stderr),
        "memory_limit": memory_limit,
        "bounds": [low, high],
        "target": target,
    }
    return BatchChoice(micro, accumulate, effective, reference, rule, factor, why, evidence)


def measure_and_choose(
    task: Any, optimizer: str, reference: int, seed: int, device: str, root: Path | None
) -> BatchChoice:
    """Measure (memory probe, noise scale at initialisation) and :func:`choose_batch`; the
    choice is kept in ``root / batch.json`` and read back from there on a resume."""
    path = None if root is None else root / BATCH_FILE
    if path is not None and path.is_file():
        return BatchChoice.from_dict(json.loads(path.read_text()))
    from lrpilot.batch.memory import probe_memory
    from lrpilot.batch.noise import noise_scale

    n_fit = len(task.train_set)
    check_possible(reference, n_fit)
    _, high = bounds(reference, n_fit)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    mem = probe_memory(task, device=device if kind == "cuda" else "cpu", optimizer=optimizer,
                       max_batch=high, steps=MEMORY_STEPS)  # fmt: skip
    noise = noise_scale(task, small_batch=NOISE_SMALL, big_batch=NOISE_BIG,
                        measurements=NOISE_MEASUREMENTS, seed=seed, device=device)  # fmt: skip
    choice = choose_batch(
        reference,
        memory_limit=mem.batch_size,
        b_simple=noise.b_simple,
        stderr=noise.stderr,
        n_fit=n_fit,
        optimizer=optimizer,
    )
    mem_samples = sum(b * MEMORY_STEPS for b, _ in mem.points)
    noise_samples = NOISE_MEASUREMENTS * NOISE_BIG
    evidence = dict(choice.evidence)
    evidence["memory_probe"] = {
        "batch_size": mem.batch_size,
        "capped": mem.capped,
        "method": mem.method,
        "tried": [b for b, _ in mem.points],
        "reasons": list(mem.reasons),
        "samples": mem_samples,
    }
    noise_info = {k: _finite(v) if isinstance(v, float) else v for k, v in noise.to_dict().items()}
    evidence["noise_probe"] = {**noise_info, "samples": noise_samples}
    out = BatchChoice(
        **{**choice.to_dict(), "evidence": evidence, "samples": mem_samples + noise_samples}
    )
    if path is not None:
        from lrpilot._atomic_io import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(out.to_dict(), indent=1).encode(), path)
    return out
