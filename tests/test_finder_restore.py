"""find_lr restores everything it touched: training after it is bit-identical."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrpilot import find_lr
from lrpilot.errors import ConfigError


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model():
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)
    )


def _optimizer(kind, model):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(model.parameters(), lr=3e-3)


def _train(model, opt, loader, steps):
    done = 0
    while done < steps:
        for x, y in loader:  # shuffling draws from the global torch RNG
            loss = nn.functional.cross_entropy(model(x), y)  # dropout too
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break


def _state(model, opt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(opt.state_dict()),  # state_dict() holds live tensors
        random.random(),
        float(np.random.rand()),
        torch.rand(3),
    )


def _assert_same(a, b):
    (ma, oa, ra, na, ta), (mb, ob, rb, nb, tb) = a, b
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            w = ob["state"][i][k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (i, k)
    assert (ra, na) == (rb, nb)
    assert torch.equal(ta, tb)


def _run(kind, with_finder):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = _model()
    opt = _optimizer(kind, model)
    loader = DataLoader(_data(), batch_size=16, shuffle=True)
    _train(model, opt, loader, 3)  # optimizer state (momentum / Adam moments) exists
    if with_finder:
        res = find_lr(
            model, opt, nn.functional.cross_entropy, loader, start_lr=1e-4, end_lr=10, steps=12
        )
        assert res.optimizer_steps > 0
    _train(model, opt, loader, 5)
    return _state(model, opt)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_after_find_lr_is_bit_identical(kind):
    _assert_same(_run(kind, True), _run(kind, False))


def test_restore_on_exception_and_grads_and_modes():
    torch.manual_seed(1)
    model = _model()
    opt = _optimizer("sgd", model)
    loader = DataLoader(_data(), batch_size=16, shuffle=True)
    _train(model, opt, loader, 2)
    model.eval()  # a non-default mode must come back too
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = _state(model, opt)
    torch.manual_seed(1)
    random.seed(0)
    np.random.seed(0)
    before = (before[0], before[1], random.random(), float(np.random.rand()), torch.rand(3))
    torch.manual_seed(1)
    random.seed(0)
    np.random.seed(0)
    calls = {"n": 0}

    def exploding_loss(out, y):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, opt, exploding_loss, loader, start_lr=1e-3, end_lr=1, steps=10)
    assert calls["n"] == 5  # it did train (and change things) before raising
    _assert_same(_state(model, opt), before)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert opt.param_groups[0]["lr"] == 0.05


def test_loader_generator_is_restored():
    gen = torch.Generator().manual_seed(3)
    loader = DataLoader(_data(), batch_size=16, shuffle=True, generator=gen)
    state = gen.get_state()
    model = _model()
    opt = _optimizer("sgd", model)
    find_lr(model, opt, nn.functional.cross_entropy, loader, start_lr=1e-3, end_lr=1, steps=8)
    assert torch.equal(gen.get_state(), state)


def test_bad_arguments_raise_config_error_and_touch_nothing():
    model = _model()
    opt = _optimizer("sgd", model)
    loader = DataLoader(_data(), batch_size=16)
    w = model[0].weight.detach().clone()
    bad = [
        {"start_lr": 0},
        {"start_lr": 1.0, "end_lr": 0.5},
        {"steps": 3},
        {"mode": "cubic"},
        {"accumulate": 0},
        {"repeats": 0},
        {"schedule": "step"},
        {"amp": "yes"},
        {"optimizer_family": "lion"},
        {"batch_ratio": 0},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError) as info:
            find_lr(model, opt, nn.functional.cross_entropy, loader, **kwargs)
        name = next(iter(kwargs))
        assert name in str(info.value) or str(kwargs[name]) in str(info.value)
    assert torch.equal(model[0].weight, w)


def test_attached_torch_scheduler_sees_no_optimizer_step():
    model = _model()
    opt = _optimizer("sgd", model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert not getattr(opt, "_opt_called", False)
    loader = DataLoader(_data(), batch_size=16)
    find_lr(model, opt, nn.functional.cross_entropy, loader, start_lr=1e-3, end_lr=1, steps=6)
    assert not getattr(opt, "_opt_called", False)  # torch would not warn otherwise
    assert sched.get_last_lr() == [0.05] and opt.param_groups[0]["lr"] == 0.05
