"""Small pieces of the training loop: gradient clearing and the finiteness check."""

from __future__ import annotations

import torch
from torch import nn

from lrpilot.train._builders import grad_clearer, params_finite


def _model_with_grads() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}], lr=0.1
    )
    model(torch.randn(5, 3)).sum().backward()
    return model, optimizer


def test_grad_clearer_matches_zero_grad_set_to_none() -> None:
    model, optimizer = _model_with_grads()
    assert all(p.grad is not None for p in model.parameters())
    grad_clearer(optimizer)()
    assert all(p.grad is None for p in model.parameters())
    # the same state as PyTorch's own zero_grad(set_to_none=True) leaves
    reference, ref_opt = _model_with_grads()
    ref_opt.zero_grad(set_to_none=True)
    assert [p.grad for p in reference.parameters()] == [p.grad for p in model.parameters()]


def test_grad_clearer_uses_an_optimizers_own_zero_grad() -> None:
    calls = []

    class Custom(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none=set_to_none)

    model = nn.Linear(2, 2)
    model(torch.randn(3, 2)).sum().backward()
    grad_clearer(Custom(model.parameters(), lr=0.1))()
    assert calls == [True] and model.weight.grad is None


def test_params_finite() -> None:
    assert params_finite([])
    assert params_finite([torch.ones(2), torch.zeros(3)])
    assert not params_finite([torch.ones(2), torch.tensor([float("inf")])])


def test_snapshot_reuse_equals_a_fresh_snapshot_and_owns_its_memory() -> None:
    from lrpilot.train._guard import take_snapshot

    model, optimizer = _model_with_grads()
    optimizer.param_groups[0]["momentum"] = 0.9
    optimizer.step()
    old = take_snapshot(1, model, optimizer)
    old_tensors = {id(t) for t in old["model"].values()}
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()  # new weights and momentum
    reused = take_snapshot(2, model, optimizer, reuse=old)
    fresh = take_snapshot(2, model, optimizer)
    assert {id(t) for t in reused["model"].values()} == old_tensors  # no new allocation
    for k, v in fresh["model"].items():
        assert torch.equal(reused["model"][k], v)
        assert reused["model"][k].data_ptr() != model.state_dict()[k].data_ptr()
    assert reused["optimizer"]["param_groups"] == fresh["optimizer"]["param_groups"]
    for k, st in fresh["optimizer"]["state"].items():
        assert torch.equal(
            reused["optimizer"]["state"][k]["momentum_buffer"], st["momentum_buffer"]
        )
    before = {k: v.clone() for k, v in reused["model"].items()}
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()  # training goes on: the snapshot must not change
    assert all(torch.equal(before[k], reused["model"][k]) for k in before)


# -------------------------------------------------------------- optimizer implementation
def test_resolve_implementation_auto_fuses_dense_float_parameters_only() -> None:
    import pytest

    from lrpilot.errors import ConfigError
    from lrpilot.train._builders import makes_sparse_grads, resolve_implementation

    dense = list(nn.Linear(3, 2).parameters())
    assert resolve_implementation("auto", dense) == "fused"
    assert resolve_implementation("auto", [torch.zeros(2, dtype=torch.float64)]) == "fused"
    for explicit in ("fused", "foreach", "for-loop"):
        assert resolve_implementation(explicit, dense) == explicit
    # sparse gradients and devices without the fused kernels keep PyTorch's default
    sparse = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    assert makes_sparse_grads(sparse) and not makes_sparse_grads(nn.Embedding(10, 4))
    assert resolve_implementation("auto", list(sparse.parameters()), sparse_grads=True) == (
        "for-loop"
    )
    meta = [torch.zeros(3, device="meta")]
    assert resolve_implementation("auto", meta) == "for-loop"
    with pytest.raises(ConfigError, match="sparse gradients"):
        resolve_implementation("fused", list(sparse.parameters()), sparse_grads=True)
    with pytest.raises(ConfigError, match=r"torch\.float32 on meta; valid here: auto, foreach"):
        resolve_implementation("fused", meta)
    with pytest.raises(ConfigError, match="implementation='fast' is not allowed; valid: auto"):
        resolve_implementation("fast", dense)


def test_build_optimizer_runs_the_resolved_kernel() -> None:
    from lrpilot.train._builders import build_optimizer, implementation_of
    from lrpilot.train._config import parse_config

    for task, name in (("mnist1d-cnn", "SGD"), ("mnist1d-mlp", "AdamW")):
        cfg = parse_config({"task": task})
        for impl in ("fused", "foreach", "for-loop"):
            model = nn.Linear(3, 2)
            opt = build_optimizer(cfg, [{"params": list(model.parameters())}], impl)
            assert type(opt).__name__ == name
            assert implementation_of(opt) == impl
            group = opt.param_groups[0]
            assert bool(group["fused"]) is (impl == "fused")
            assert bool(group["foreach"]) is (impl == "foreach")
    # PyTorch's own default on CPU is the for-loop: what "for-loop" reproduces bit for bit
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    cfg = parse_config({"task": "mnist1d-cnn", "optimizer": {"momentum": 0.9}})
    ours = build_optimizer(cfg, [{"params": list(a.parameters())}], "for-loop")
    torch_default = torch.optim.SGD(
        b.parameters(), lr=cfg.optimizer.lr, momentum=0.9, weight_decay=cfg.optimizer.weight_decay
    )
    x = torch.randn(16, 8)
    for model, opt in ((a, ours), (b, torch_default)):
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_loading_an_older_checkpoint_keeps_the_built_implementation() -> None:
    from lrpilot.train._builders import implementation_of, load_optimizer_state

    model = nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    old = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # flags unset: pre-fused
    old.step()
    state = old.state_dict()
    assert state["param_groups"][0]["fused"] is None
    fused = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, fused=True)
    plain = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, fused=True)
    plain.load_state_dict(state)  # PyTorch's own loader takes the checkpoint's flags
    assert implementation_of(plain) == "for-loop" and plain._step_supports_amp_scaling
    load_optimizer_state(fused, state)
    assert implementation_of(fused) == "fused"
    group = fused.param_groups[0]
    assert group["lr"] == 0.1  # everything else is the checkpoint's
    momentum = fused.state[model.weight]["momentum_buffer"]
    assert torch.equal(momentum, old.state[model.weight]["momentum_buffer"])
