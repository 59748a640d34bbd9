"""What the memory probes share (:mod:`lrpilot.batch.memory`): the report record, the
probed optimizer, a batch of copies of one example, the training steps of one try and the
doubling-then-bisection search."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lrpilot.optim import create_optimizer, resolve_implementation, resolve_settings

GiB = 2**30
#: a registry name, settings (``lrpilot.optim.resolve_settings``) or a factory ``f(params)``
OptimizerChoice = str | Mapping[str, Any] | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MemoryProbe:
    """A memory probe's outcome.

    ``batch_size``: the largest per-device batch that fits. ``baseline_bytes``: memory in use
    before the probe (this process's RSS on CPU, allocated device memory on CUDA).
    ``memory_bytes``: memory at that
    batch (peak allocated on CUDA, measured; peak RSS predicted by the fit on CPU).
    ``fixed_bytes``/``per_sample_bytes``: the fitted line (CPU). ``points``: every
    measurement ``(batch, peak bytes or -1 for out-of-memory)``. ``capped``: the answer is
    ``max_batch``, not a memory limit.
    """

    batch_size: int
    device: str
    method: str
    budget_bytes: int
    baseline_bytes: int
    memory_bytes: float
    fixed_bytes: float | None
    per_sample_bytes: float | None
    points: tuple[tuple[int, int], ...]
    capped: bool
    seconds: float
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["points"] = [list(p) for p in self.points]
        d["reasons"] = list(self.reasons)
        return d


def make_optimizer(spec: OptimizerChoice, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The probed optimizer: a factory ``spec(params)``, a registry name (``"sgd"``,
    ``"adam"``, ``"adamw"``, :mod:`lrpilot.optim`; its defaults) or settings as
    :func:`lrpilot.optim.resolve_settings` returns them (a task's: what ``lrpilot fit``
    trains with, momentum buffers and kernel included)."""
    if callable(spec):
        return spec(params)
    settings = resolve_settings(spec, None) if isinstance(spec, str) else dict(spec)
    impl = resolve_implementation(str(settings.get("implementation", "auto")), params)
    hyper = {k: v for k, v in settings.items() if k not in ("name", "implementation")}
    return create_optimizer(settings["name"], params, implementation=impl, **hyper)


def repeat_batch(x1: torch.Tensor, y1: torch.Tensor | None, b: int, device: torch.device):
    """``b`` copies of one example, materialised on ``device`` (memory as a real batch)."""
    x = x1.to(device).unsqueeze(0).expand(b, *x1.shape).clone()
    y = None if y1 is None else y1.to(device).unsqueeze(0).expand(b, *y1.shape).clone()
    return x, y


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def train_steps(model, opt, loss_fn, x, y, steps: int) -> None:
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = out.float().mean() if loss_fn is None else loss_fn(out, y)
        loss.backward()
        opt.step()


def search_largest(fits: Callable[[int], bool], start: int, cap: int) -> int:
    """Largest ``b`` in ``[1, cap]`` with ``fits(b)``, assuming ``fits`` is monotone.

    Doubling from ``start`` until a failure (or ``cap``), then bisection between the last
    success and the first failure. Returns 0 when even ``b = 1`` fails.

    >>> search_largest(lambda b: b <= 37, 1, 1000)
    37
    >>> search_largest(lambda b: b <= 5000, 4, 1000)
    1000
    """
    start = max(1, min(start, cap))
    good, bad = 0, None
    b = start
    while True:
        if fits(b):
            good = b
            if b >= cap:
                return b
            b = min(2 * b, cap)
        else:
            bad = b
            break
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
