"""CUDA paths (issue 16): fp16 with a GradScaler in the finder, the CUDA memory probe
recovering from real out-of-memory errors. Skipped with a reason on a machine without
CUDA; ``bench/gpu_check.sh`` runs them (``pytest -m cuda``) on a GPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import lrpilot
from lrpilot.batch import probe_memory
from lrpilot.tasks import get_task

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none here"),
]
MiB = 2**20


def _states_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_states_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_finder_fp16_grad_scaler_restores_everything_on_cuda():
    task = get_task("mnist1d-cnn")
    torch.manual_seed(0)
    model = task.build_model().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = (t.cuda() for t in next(iter(DataLoader(task.train_set, batch_size=8))))
    task.loss_fn(model(x), y).backward()
    optimizer.step()  # momentum buffers and gradients to restore
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    gen = torch.Generator().manual_seed(1)
    loader = DataLoader(task.train_set, batch_size=8, shuffle=True, drop_last=True, generator=gen)
    before = (
        copy.deepcopy(model.state_dict()),
        [p.grad.clone() for p in model.parameters()],
        copy.deepcopy(optimizer.state_dict()),
        copy.deepcopy(scaler.state_dict()),
        torch.cuda.get_rng_state(),
        torch.get_rng_state(),
        gen.get_state(),
    )
    result = lrpilot.find_lr(
        model, optimizer, task.loss_fn, loader, steps=120, amp=True, scaler=scaler
    )
    after = (
        model.state_dict(),
        [p.grad for p in model.parameters()],
        optimizer.state_dict(),
        scaler.state_dict(),
        torch.cuda.get_rng_state(),
        torch.get_rng_state(),
        gen.get_state(),
    )
    for name, b, a in zip(
        ("model", "grads", "optimizer", "scaler", "cuda rng", "cpu rng", "loader"),
        before,
        after,
        strict=True,
    ):
        assert _states_equal(b, a), f"{name} not restored"
    assert next(model.parameters()).is_cuda
    assert result.skipped_steps >= 0 and len(result.lrs) > 10
    assert all(math.isfinite(v) for v in result.losses[:5])


class _Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_cuda_probe_recovers_from_real_out_of_memory():
    """Under a real 1 GiB cap (and a budget above it) only out-of-memory errors stop the
    search: the probe survives them, frees every try, and its batch really trains."""
    from conftest import cuda_workspace_baseline

    total = torch.cuda.get_device_properties(0).total_memory
    baseline = cuda_workspace_baseline()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1024 * MiB / total)
    try:
        probe = probe_memory(
            _Wide(),
            (torch.randn(3, 64, 64), torch.tensor(1)),
            device="cuda",
            budget=total,
            loss_fn=nn.functional.cross_entropy,
            optimizer="adamw",
            max_batch=1 << 16,
        )
        assert any(peak < 0 for _, peak in probe.points), probe.points  # a real OOM happened
        assert not probe.capped and probe.batch_size > 1
        assert torch.cuda.memory_allocated() - baseline < MiB  # every try cleaned up
        torch.manual_seed(0)
        model = _Wide().cuda()
        opt = torch.optim.AdamW(model.parameters())
        xb = torch.randn(probe.batch_size, 3, 64, 64, device="cuda")
        yb = torch.randint(0, 10, (probe.batch_size,), device="cuda")
        for _ in range(3):  # the probed batch trains under the cap
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        torch.cuda.synchronize()
        del model, opt, xb, yb
    finally:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
