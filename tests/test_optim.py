"""The optimizer registry: one set of defaults for `lrpilot find`, `lrpilot fit` and the
memory probe; unknown names raise listing the valid ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.errors import ConfigError
from lrpilot.finder import prepare_probe
from lrpilot.finder.core import optimizer_family_of
from lrpilot.finder.policy import OPTIMIZER_FAMILIES
from lrpilot.optim import (
    OptimizerSpec,
    create_optimizer,
    get_optimizer,
    optimizer_names,
    register_optimizer,
    resolve_settings,
)
from lrpilot.tasks import Task


def bare_task() -> Task:
    """A task without optimizer defaults: the case where find and fit used to differ."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(
        name="bare",
        build_model=lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        train_set=TensorDataset(x[:192], y[:192]),
        val_set=TensorDataset(x[192:], y[192:]),
        loss_fn=nn.functional.cross_entropy,
        defaults={"batch_size": 32},
    )


def _fit_optimizer(task: Task, name: str) -> torch.optim.Optimizer:
    """The optimizer `lrpilot fit` trains with: the engine's, built from the config."""
    from lrpilot.train import Engine
    from lrpilot.train._config import parse_config

    return Engine(parse_config({"task": task, "optimizer": {"name": name}}), task).optimizer


def _hyper(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


@pytest.mark.parametrize("task_name", ["bare", "mnist1d-cnn", "mnist1d-mlp"])
@pytest.mark.parametrize("name", optimizer_names())
def test_find_and_fit_build_the_same_optimizer(task_name, name):
    from lrpilot.tasks import get_task

    task = bare_task() if task_name == "bare" else get_task(task_name)
    fit = _fit_optimizer(task, name)
    find = prepare_probe(task, optimizer=name).optimizer
    assert type(find) is type(fit) is get_optimizer(name).cls
    # every hyperparameter the optimizer was built with (the engine's schedule adapter may
    # add its own bookkeeping keys, such as initial_lr)
    pairs = zip(_hyper(fit), _hyper(find), strict=True)  # as many groups
    assert _hyper(find) == [{k: g[k] for k in h} for g, h in pairs]


def test_the_bug_find_no_longer_probes_with_momentum_fit_does_not_use():
    fit = _fit_optimizer(bare_task(), "sgd")
    find = prepare_probe(bare_task(), optimizer="sgd").optimizer
    assert fit.param_groups[0]["momentum"] == find.param_groups[0]["momentum"] == 0.0
    # a task's own defaults are used by both when it names the same optimizer
    tuned = prepare_probe("mnist1d-cnn").optimizer.param_groups[0]
    assert tuned["momentum"] == 0.9 and tuned["weight_decay"] == 5e-4


def test_registry_entries_match_torch_and_the_scaling_rules():
    from lrpilot.batch import rule_for_optimizer

    p = [nn.Parameter(torch.zeros(2))]
    for name in optimizer_names():
        spec = get_optimizer(name)
        assert spec.lr_exponent == OPTIMIZER_FAMILIES[spec.family]
        assert rule_for_optimizer(name) == {1.0: "linear", 0.5: "sqrt"}[spec.lr_exponent]
        opt = create_optimizer(name, p)
        assert optimizer_family_of(opt) == spec.family
        # every default hyperparameter reaches the param group as given
        group = opt.param_groups[0]
        for key, value in spec.defaults.items():
            assert group[key] == (tuple(value) if isinstance(value, (list, tuple)) else value)
    assert get_optimizer("sgd").lr_exponent == 1.0 and get_optimizer("adamw").lr_exponent == 0.5


def test_create_optimizer_steps_as_torch_does():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 3), nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    ours = create_optimizer("adamw", a.parameters(), lr=0.01, betas=[0.8, 0.99])
    ref = torch.optim.AdamW(b.parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2)
    x = torch.randn(8, 6)
    for model, opt in ((a, ours), (b, ref)):
        for _ in range(4):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_unknown_names_and_keys_raise_listing_the_valid_ones():
    p = [nn.Parameter(torch.zeros(1))]
    for call in (
        lambda: get_optimizer("lion"),
        lambda: create_optimizer("lion", p),
        lambda: resolve_settings("lion", None),
        lambda: prepare_probe(bare_task(), optimizer="lion"),
    ):
        with pytest.raises(ConfigError, match=r"unknown optimizer 'lion'; valid: adam, adamw, sgd"):
            call()
    with pytest.raises(ConfigError, match="takes no momentum; valid: betas, lr, weight_decay"):
        create_optimizer("adamw", p, momentum=0.9)
    with pytest.raises(ConfigError, match="no 'turbo' kernel; valid: fused, foreach, for-loop"):
        create_optimizer("sgd", p, implementation="turbo")


def test_duplicate_and_invalid_registrations_raise():
    with pytest.raises(ConfigError, match="'sgd' is already registered"):
        register_optimizer(OptimizerSpec("sgd", torch.optim.SGD, "sgd", {"lr": 0.1}))
    with pytest.raises(ConfigError, match="family 'rms'; valid: adam, sgd"):
        OptimizerSpec("rmsprop", torch.optim.RMSprop, "rms", {"lr": 0.01})
    with pytest.raises(ConfigError, match="defaults need an 'lr'"):
        OptimizerSpec("rmsprop", torch.optim.RMSprop, "adam", {})
    assert "rmsprop" not in optimizer_names()


def test_memory_probe_builds_the_registry_optimizer_with_the_task_settings():
    from lrpilot.batch.memory import _resolve, make_optimizer
    from lrpilot.tasks import get_task

    *_, settings, _ = _resolve(get_task("mnist1d-cnn"), None, None, None)
    assert settings == resolve_settings(None, get_task("mnist1d-cnn").defaults["optimizer"])
    opt = make_optimizer(settings, [nn.Parameter(torch.zeros(2))])
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ConfigError, match="valid: adam, adamw, sgd"):
        _resolve(get_task("mnist1d-cnn"), None, None, "lamb")
