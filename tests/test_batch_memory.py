"""Memory probe: the search logic against brute force, the CPU fit against measurements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpilot.batch import max_batch_size, probe_memory
from lrpilot.batch._memory_cpu import measure_cpu as _measure_cpu
from lrpilot.batch.memory import _resolve, current_rss, fit_line, search_largest
from lrpilot.errors import ConfigError

MiB = 2**20


def test_search_largest_matches_brute_force():
    for cap in (1, 2, 7, 64, 1000):
        for limit in range(0, 80):
            for start in (1, 3, 16):
                tried: list[int] = []

                def fits(b: int, limit: int = limit, tried: list[int] = tried) -> bool:
                    tried.append(b)
                    return b <= limit

                got = search_largest(fits, start, cap)
                assert got == min(limit, cap), (cap, limit, start)
                assert all(1 <= b <= cap for b in tried)
                assert len(tried) <= 2 * (cap.bit_length() + 2)  # doubling + bisection


def test_fit_line_exact():
    fixed, slope = fit_line([(1, 1000 + 37), (8, 1000 + 37 * 8), (64, 1000 + 37 * 64)])
    assert fixed == pytest.approx(1000) and slope == pytest.approx(37)
    with pytest.raises(ValueError):
        fit_line([(1, 2)])


class _Wide(nn.Module):
    """Memory-heavy, compute-light: about 0.5 MiB of activations per sample."""

    def __init__(self, d: int = 32768) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x * self.w)
        return self.head(h.view(x.shape[0], 16, -1).mean(-1))


def test_cpu_prediction_holds_when_measured():
    """Probe under a budget 400 MiB above the current RSS, then measure the predicted batch
    and a batch 10% larger in fresh forked children: the first fits (2% slack for the
    allocator's noise), the second does not."""
    model = _Wide()
    sample = (torch.randn(32768), torch.tensor(1))
    base = current_rss()
    headroom = 400 * MiB
    kwargs = {"loss_fn": nn.functional.cross_entropy, "optimizer": "sgd"}
    probe = probe_memory(model, sample, budget=base + headroom, **kwargs)
    # the probe's own baseline (lazy imports may have grown this process meanwhile)
    headroom = probe.budget_bytes - probe.baseline_bytes
    assert 300 * MiB < headroom <= 400 * MiB
    assert not probe.capped and probe.method == "cpu-rss-fit"
    assert probe.per_sample_bytes > 0 and probe.points[0][0] == 2
    assert probe.memory_bytes == pytest.approx(probe.budget_bytes, rel=0.01)
    b = probe.batch_size
    factory, x1, y1, loss_fn, opt, _ = _resolve(model, sample, kwargs["loss_fn"], "sgd")
    at_b = _measure_cpu(factory, x1, y1, loss_fn, opt, b, 2)
    above = _measure_cpu(factory, x1, y1, loss_fn, opt, int(b * 1.1), 2)
    assert at_b <= 1.02 * headroom, (b, at_b / MiB)
    assert above > headroom, (b, above / MiB)


def test_builtin_task_probe_is_capped_by_the_training_set():
    probe = probe_memory("mnist1d-mlp", budget=current_rss() + 2**30)
    assert probe.capped and probe.batch_size == 4000
    assert any("capped at 4000" in r for r in probe.reasons)


def test_model_and_optimizer_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    b = max_batch_size(
        model,
        (torch.randn(20), torch.tensor(1)),
        budget=current_rss() + 2**30,
        loss_fn=nn.functional.cross_entropy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        max_batch=32,
    )
    assert b == 32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_dict() == opt_before


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"budget": 1.0}, "below this process's resident memory"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"fraction": 1.5}, "fraction=1.5"),
        ({"optimizer": "lamb"}, "valid: adam, adamw, sgd"),
        ({"max_batch": 0}, "max_batch=0"),
    ],
)
def test_refuses_nonsense(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        probe_memory("mnist1d-mlp", **kwargs)


def test_module_needs_a_sample():
    with pytest.raises(ConfigError, match="a sample"):
        max_batch_size(nn.Linear(2, 2))


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none"
)
def test_cuda_probe_finds_oom_boundary_and_cleans_up():
    from conftest import cuda_workspace_baseline

    baseline = cuda_workspace_baseline()
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
    budget = 512 * MiB
    probe = probe_memory(
        model,
        (torch.randn(4096), torch.tensor(1)),
        device="cuda",
        budget=budget,
        loss_fn=nn.functional.cross_entropy,
        max_batch=1 << 20,
    )
    assert probe.method == "cuda-oom-search" and not probe.capped
    assert probe.memory_bytes <= budget
    failed = [p for p in probe.points if p[0] == probe.batch_size + 1]
    assert failed and (failed[0][1] < 0 or failed[0][1] > budget)
    assert torch.cuda.memory_allocated() - baseline < MiB  # tries cleaned up (model: 64 MiB)
