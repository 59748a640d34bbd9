"""lrpilot.batch.scaling and lrpilot.batch.plan against closed forms and brute force."""

from __future__ import annotations

import math

import pytest
from torch import nn

from lrpilot.batch import (
    get_rule,
    has_batchnorm,
    list_rules,
    plan_accumulation,
    register_rule,
    rule_for_optimizer,
    scale_lr,
    scale_warmup,
)
from lrpilot.errors import ConfigError
from lrpilot.tasks import get_task

RATIOS = [(64, 64), (64, 128), (256, 8192), (100, 7), (1, 3), (512, 256)]


@pytest.mark.parametrize(("b0", "b1"), RATIOS)
def test_rules_match_closed_forms(b0, b1):
    k = b1 / b0
    assert scale_lr(0.1, b0, b1) == pytest.approx(0.1 * k, rel=1e-15)
    assert scale_lr(3e-4, b0, b1, rule="sqrt") == pytest.approx(3e-4 * math.sqrt(k), rel=1e-15)
    assert scale_lr(0.02, b0, b1, rule="none") == 0.02


@pytest.mark.parametrize(("b0", "b1"), RATIOS)
def test_conservative_trims_only_raised_lr(b0, b1):
    plain = scale_lr(0.1, b0, b1)
    trimmed = scale_lr(0.1, b0, b1, conservative=0.15)
    if b1 > b0:
        assert trimmed == pytest.approx(plain * 0.85, rel=1e-15)
    else:
        assert trimmed == plain


def test_goyal_reference_point():
    # Goyal et al.: 0.1 at batch 256 -> 3.2 at batch 8192
    assert scale_lr(0.1, 256, 8192) == pytest.approx(3.2, rel=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": math.nan}, "lr=nan"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"from_batch": 0}, "from_batch=0"),
        ({"to_batch": 2.5}, "to_batch"),
        ({"conservative": 1.0}, "conservative=1.0"),
        ({"conservative": -0.1}, "conservative=-0.1"),
        ({"rule": "cubic"}, "valid: linear, none, sqrt"),
    ],
)
def test_refuses_nonsense(kwargs, needle):
    args = {"lr": 0.1, "from_batch": 64, "to_batch": 128, **kwargs}
    with pytest.raises(ConfigError, match=re_escape(needle)):
        scale_lr(**args)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_registry():
    assert {"linear", "sqrt", "none"} <= set(list_rules())
    register_rule("quarter-power", lambda k: k**0.25)
    assert scale_lr(1.0, 1, 16, rule="quarter-power") == pytest.approx(2.0)
    assert get_rule("sqrt")(4.0) == 2.0
    with pytest.raises(ConfigError, match="must be callable"):
        register_rule("bad", 3)
    assert rule_for_optimizer("SGD") == "linear"
    assert rule_for_optimizer("adam") == "sqrt"


def test_warmup_keeps_samples():
    for steps, b0, b1 in [(500, 64, 256), (1000, 256, 8192), (7, 10, 3), (1, 1, 1000)]:
        got = scale_warmup(steps, b0, b1)
        assert got == max(1, math.ceil(steps * b0 / b1))
        assert got * b1 >= steps * b0  # never fewer warmup samples
    assert scale_warmup(0, 1, 2) == 0
    with pytest.raises(ConfigError, match="warmup steps=-1"):
        scale_warmup(-1, 1, 2)


def test_plan_against_brute_force():
    for max_pd in (1, 3, 7, 16, 64, 100):
        for nominal in (1, 5, 16, 63, 64, 256, 1000):
            for procs in (1, 2, 3, 8):
                p = plan_accumulation(max_pd, nominal, procs, lr=0.1, base_batch=64)
                assert 1 <= p.per_device <= max_pd
                assert p.effective == p.per_device * procs * p.accumulate
                if nominal >= procs:
                    assert p.effective >= nominal
                    a_min = math.ceil(nominal / (max_pd * procs))  # fewest that can reach it
                    exact = [
                        a
                        for a in range(a_min, 2 * a_min + 1)
                        if nominal % (procs * a) == 0 and nominal // (procs * a) <= max_pd
                    ]
                    if exact:  # an exact split within twice the minimum is preferred
                        assert (p.accumulate, p.effective) == (exact[0], nominal)
                    else:
                        assert p.accumulate == a_min
                        assert p.per_device == math.ceil(nominal / (procs * a_min))
                assert p.lr == pytest.approx(scale_lr(0.1, 64, p.effective), rel=1e-15)
                assert (p.effective != nominal) == any(
                    "effective batch is" in w for w in p.warnings
                )


def test_plan_examples_and_reasons():
    p = plan_accumulation(24, 64, lr=0.1)
    assert (p.per_device, p.accumulate, p.effective, p.lr) == (16, 4, 64, 0.1)
    assert "accumulating 4 micro-batches of 16" in p.reasons[0]
    p = plan_accumulation(512, 256, processes=4, lr=3e-4, base_batch=64, rule="sqrt")
    assert (p.per_device, p.accumulate, p.effective) == (64, 1, 256)
    assert p.lr == pytest.approx(6e-4)
    assert any("warmup" in r for r in p.reasons)
    assert p.to_dict()["warnings"] == []


def test_plan_batchnorm_warnings():
    cpu = plan_accumulation(2, 8, batchnorm=True)
    assert len(cpu.warnings) == 1 and "GroupNorm" in cpu.warnings[0]
    assert "SyncBatchNorm needs CUDA" in cpu.warnings[0]
    cuda = plan_accumulation(2, 8, processes=4, batchnorm=True, device="cuda")
    assert "convert_sync_batchnorm" in cuda.warnings[0] and "8 samples" in cuda.warnings[0]
    assert plan_accumulation(2, 8, batchnorm=False).warnings == ()
    assert plan_accumulation(4, 8, batchnorm=True).warnings == ()
    assert has_batchnorm(get_task("digits-cnn").build_model())
    assert not has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((0, 64), {}, "per-device batch=0"),
        ((8, 0), {}, "nominal batch=0"),
        ((8, 64, 0), {}, "processes=0"),
        ((8, 64), {"rule": "x"}, "unknown lr scaling rule"),
        ((8, 64), {"lr": -1.0}, "lr=-1.0"),
    ],
)
def test_plan_refuses_nonsense(args, kwargs, needle):
    with pytest.raises(ConfigError, match=re_escape(needle)):
        plan_accumulation(*args, **kwargs)
