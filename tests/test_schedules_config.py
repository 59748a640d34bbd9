"""from_config / momentum_from_config: the YAML/dict form, units, total_steps, errors,
and hypothesis-fuzzed configs that may only ever raise ValueError."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lrpilot import ConfigError
from lrpilot import schedules as S
from lrpilot.schedules import from_config, momentum_from_config


def same(a, b, n=200):
    return all(a(t) == b(t) for t in range(n))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"name": "constant", "lr": 0.1}, S.constant(0.1)),
        ({"name": "step_decay", "lr": 0.1, "every": 30, "gamma": 0.1}, S.step_decay(0.1, 30, 0.1)),
        ({"name": "exponential", "lr": 0.1, "gamma": 0.99}, S.exponential(0.1, 0.99)),
        ({"name": "polynomial", "lr": 0.1, "steps": 50, "power": 2}, S.polynomial(0.1, 50, 2.0)),
        ({"name": "linear", "start_lr": 0.1, "end_lr": 0.0, "steps": 9}, S.linear(0.1, 0.0, 9)),
        ({"name": "piecewise", "boundaries": [3], "values": [1, 2]}, S.piecewise([3], [1, 2])),
        (
            {"name": "cosine_restarts", "lr": 1, "period": 7, "period_mult": 2},
            S.cosine_restarts(1, 7, 2),
        ),
        ({"name": "cyclic", "base_lr": 0.1, "max_lr": 1, "up": 4}, S.cyclic(0.1, 1, 4)),
        ({"name": "inverse_sqrt", "lr": 1, "warmup": 10}, S.inverse_sqrt(1, 10)),
        (
            {
                "name": "wsd",
                "lr": 1,
                "steps": 100,
                "warmup": 5,
                "decay_fraction": 0.1,
                "decay": "cosine",
            },
            S.wsd(1, 100, 5, 0.1, "cosine"),
        ),
        (
            {"name": "one_cycle", "max_lr": 1, "steps": 50, "anneal": "linear"},
            S.one_cycle(1, 50, anneal="linear"),
        ),
    ],
)
def test_every_family_from_config(config, expected):
    s = from_config(config)
    assert s == expected and same(s, expected)


def test_yaml_warmup_cosine_spans_run_after_warmup():
    cfg = yaml.safe_load(
        """
        name: cosine
        lr: 0.1
        final_lr: 0.001
        warmup: {steps: 100, start_lr: 0.001, mode: linear}
        """
    )
    s = from_config(cfg, total_steps=1000)
    ref = S.warmup(S.cosine(0.1, 900, 0.001), 100, 0.001)
    assert s == ref and same(s, ref, 1100)
    assert s.length == 1000 and s(1000) == 0.001


def test_epochs_unit_and_shorthand():
    s = from_config(
        {
            "name": "multistep",
            "lr": 0.1,
            "gamma": 0.1,
            "unit": "epochs",
            "milestones": [30, 60],
            "warmup": {"steps": 2},
        },
        steps_per_epoch=10,
    )
    # `steps` means steps whatever `unit` says; `unit` converts the bare milestones only
    assert s == S.warmup(S.multistep(0.1, [300, 600], 0.1), 2)
    s = from_config(
        {"name": "cosine", "lr": 0.1, "epochs": 3, "warmup": {"epochs": 0.5}}, steps_per_epoch=10
    )
    assert s == S.warmup(S.cosine(0.1, 30), 5)
    s = from_config({"name": "cosine", "lr": 0.1, "epochs": 3}, steps_per_epoch=10, total_steps=999)
    assert s.length == 30  # an explicit length wins over total_steps


@pytest.mark.parametrize(
    ("config", "kwargs", "pattern"),
    [
        (
            {"name": "cosine", "lr": 0.1, "epochs": 3},
            {},
            r"schedule\(cosine\)\.epochs is given in epochs and needs steps_per_epoch",
        ),
        (
            {"name": "multistep", "lr": 0.1, "gamma": 0.1, "unit": "epochs", "milestones": [3]},
            {},
            r"milestones\[0\] is given in epochs and needs steps_per_epoch",
        ),
        ({"name": "cosine", "lr": 0.1}, {}, r"missing key 'steps' \(or 'epochs'\).*total_steps"),
        (
            {"name": "cosine", "lr": 0.1, "warmup": {"steps": 10}},
            {"total_steps": 10},
            r"total_steps=10 leaves no steps after the 10-step warmup",
        ),
        (
            {"name": "cosin", "lr": 0.1},
            {},
            r"name='cosin' is not a schedule; valid names: constant, cosine, cosine_restarts",
        ),
        ({"lr": 0.1}, {}, r"missing 'name'"),
        (
            {"name": "cosine", "lr": 0.1, "steps": 5, "gama": 1},
            {},
            r"unknown key 'gama'; valid keys: epochs, final_lr, lr, name, steps, unit, warmup",
        ),
        (
            {"name": "cosine", "lr": 0.1, "steps": 5, "epochs": 1},
            {"steps_per_epoch": 3},
            r"either 'steps' or 'epochs'",
        ),
        (
            {"name": "cosine", "lr": 0.1, "steps": 5, "unit": "days"},
            {},
            r"unit='days' is not valid; allowed: steps, epochs",
        ),
        ({"name": "constant", "lr": 0.1, "unit": "epochs"}, {}, r"unit=epochs has no effect"),
        ({"name": "step_decay", "lr": 0.1, "gamma": 0.1}, {}, r"missing key 'every'"),
        (
            {"name": "cosine", "lr": 0.1, "steps": 5, "warmup": {"steps": 1, "epochs": 1}},
            {},
            r"warmup needs exactly one of 'steps' or 'epochs'",
        ),
        (
            {"name": "cosine", "lr": 0.1, "steps": 5, "warmup": {"steps": 1, "shape": "x"}},
            {},
            r"warmup: unknown key 'shape'",
        ),
        ({"name": "cosine", "lr": 0.1, "steps": 5, "warmup": 3}, {}, r"warmup must be a mapping"),
        ({"name": "cosine", "lr": "fast", "steps": 5}, {}, r"lr must be a number, got 'fast'"),
        (
            {"name": "cosine", "lr": 0.1, "steps": 5},
            {"steps_per_epoch": 0},
            r"steps_per_epoch=0 is out of range",
        ),
        ({"name": "cosine", "lr": 0.1}, {"total_steps": -3}, r"total_steps=-3 is out of range"),
        (
            {"name": "join", "schedules": [{"name": "constant", "lr": 1}], "boundaries": []},
            {},
            r"boundaries must not be empty",
        ),
        (
            {
                "name": "join",
                "schedules": [{"name": "constant", "lr": 1}, {"name": "nope"}],
                "boundaries": [3],
            },
            {},
            r"schedules\[1\]\.name='nope' is not a schedule",
        ),
        (
            {
                "name": "one_cycle",
                "max_lr": 1,
                "steps": 10,
                "cycle_momentum": False,
                "max_momentum": 0.9,
            },
            {},
            r"max_momentum has no effect with cycle_momentum: false",
        ),
        ("cosine", {}, r"schedule must be a mapping"),
        (
            {"name": "wsd", "lr": 1, "decay_fraction": 0.1, "warmup": {"steps": 3}},
            {"total_steps": 50},
            r"warmup is wsd's own warmup length",
        ),
    ],
)
def test_config_errors_name_the_field(config, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_config(config, **kwargs)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # issue 16: a key called `steps` is steps, `epochs` is epochs, whatever `unit` says
        (
            {
                "name": "step_decay",
                "lr": 0.1,
                "gamma": 0.5,
                "every": 2,
                "unit": "epochs",
                "warmup": {"steps": 20},
            },
            S.warmup(S.step_decay(0.1, 20, 0.5), 20),
        ),
        (
            {
                "name": "step_decay",
                "lr": 0.1,
                "gamma": 0.5,
                "every": 20,
                "unit": "steps",
                "warmup": {"epochs": 2},
            },
            S.warmup(S.step_decay(0.1, 20, 0.5), 20),
        ),
        (
            {
                "name": "cosine_restarts",
                "lr": 0.1,
                "period": 3,
                "unit": "epochs",
                "warmup": {"epochs": 1},
            },
            S.warmup(S.cosine_restarts(0.1, 30), 10),
        ),
        (
            {
                "name": "wsd",
                "lr": 0.1,
                "warmup": 1,
                "decay_fraction": 0.5,
                "steps": 50,
                "unit": "epochs",
            },
            S.wsd(0.1, 50, 10, 0.5),
        ),
        (
            {"name": "inverse_sqrt", "lr": 0.1, "warmup": 2, "unit": "epochs"},
            S.inverse_sqrt(0.1, 20),
        ),
        (
            {
                "name": "join",
                "unit": "epochs",
                "boundaries": [1],
                "schedules": [
                    {"name": "linear", "start_lr": 0.0, "end_lr": 0.1, "steps": 4},
                    {"name": "constant", "lr": 0.1},
                ],
            },
            S.join([S.linear(0.0, 0.1, 4), S.constant(0.1)], [10]),
        ),
    ],
)
def test_steps_key_means_steps_whatever_the_unit(config, expected):
    s = from_config(config, steps_per_epoch=10)
    assert s == expected and same(s, expected, 200)


def test_unit_epochs_that_converts_nothing_is_refused():
    cfg = {"name": "cosine", "lr": 0.1, "steps": 30, "unit": "epochs"}
    with pytest.raises(ConfigError, match=r"only length is 'steps', which is always steps"):
        from_config(cfg, steps_per_epoch=10)
    # the same length in epochs, said with the `epochs` key
    s = from_config({"name": "cosine", "lr": 0.1, "epochs": 3}, steps_per_epoch=10)
    assert s == S.cosine(0.1, 30)


def test_join_from_config_pieces_on_local_time_and_spans():
    cfg = {
        "name": "join",
        "unit": "epochs",
        "boundaries": [1, 3],
        "schedules": [
            {"name": "linear", "start_lr": 0.0, "end_lr": 0.1},  # spans its piece (1 epoch)
            {"name": "constant", "lr": 0.1},
            {"name": "cosine", "lr": 0.1, "final_lr": 0.0},  # spans the rest of the run
        ],
    }
    s = from_config(cfg, steps_per_epoch=10, total_steps=100)
    ref = S.join([S.linear(0.0, 0.1, 10), S.constant(0.1), S.cosine(0.1, 70)], [10, 30])
    assert s == ref and same(s, ref, 120)
    assert s.boundaries(100) == [0, 10, 30, 100]


def test_momentum_from_config_one_cycle():
    cfg = {
        "name": "one_cycle",
        "max_lr": 0.1,
        "base_momentum": 0.8,
        "max_momentum": 0.9,
        "pct_start": 0.25,
    }
    m = momentum_from_config(cfg, total_steps=200)
    assert m == S.one_cycle_momentum(200, 0.8, 0.9, pct_start=0.25)
    lr = from_config(cfg, total_steps=200)
    assert lr == S.one_cycle(0.1, 200, pct_start=0.25)  # momentum keys not passed to the LR
    off = {"name": "one_cycle", "max_lr": 0.1, "steps": 50, "cycle_momentum": False}
    assert momentum_from_config(off) is None
    assert momentum_from_config({"name": "cosine", "lr": 0.1, "steps": 10}) is None
    wrapped = momentum_from_config({**cfg, "steps": 100, "warmup": {"steps": 10}})
    assert [wrapped(t) for t in (0, 9)] == [0.9, 0.9]
    assert wrapped(10 + 24) == 0.8  # the cycle's trough, shifted by the warmup


def test_a_momentum_key_gives_any_schedule_a_momentum_schedule():
    up = {"name": "linear", "start_lr": 0.95, "end_lr": 0.85, "steps": 30}
    cfg = {"name": "cosine", "lr": 0.1, "momentum": {"name": "join", "boundaries": [30],
           "schedules": [up, {"name": "cosine", "lr": 0.85, "final_lr": 0.95}]}}  # fmt: skip
    m = momentum_from_config(cfg, total_steps=100)
    ref = S.join([S.linear(0.95, 0.85, 30), S.cosine(0.85, 70, final_lr=0.95)], [30])
    assert m == ref and same(m, ref, 100)
    assert from_config(cfg, total_steps=100) == S.cosine(0.1, 100)  # the LR: unchanged
    for bad, match in [
        ({"name": "constant", "lr": 1.0}, r"schedule.momentum is 1.0 at step 0; allowed: \[0, 1\)"),
        (up | {"end_lr": 1.2}, r"is 1.2 at step 30"),
        ({"name": "constnt", "lr": 0.9}, r"schedule.momentum.name='constnt' is not a schedule"),
    ]:
        with pytest.raises(ConfigError, match=match):
            momentum_from_config({**cfg, "momentum": bad}, total_steps=100)
    with pytest.raises(ConfigError, match="one_cycle already cycles the momentum"):
        from_config({"name": "one_cycle", "max_lr": 0.1, "steps": 10, "momentum": up})
    off = {"name": "one_cycle", "max_lr": 0.1, "steps": 30, "cycle_momentum": False}
    assert momentum_from_config({**off, "momentum": up}) == S.linear(0.95, 0.85, 30)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 2),
    st.sampled_from(
        [
            "cos",
            "linear",
            "exp",
            "cosine",
            "sqrt",
            "epochs",
            "steps",
            "max",
            "",
            "triangular2",
            "exp_range",
        ]
    ),
)
KEYS = st.sampled_from(
    [
        "lr",
        "steps",
        "epochs",
        "final_lr",
        "gamma",
        "every",
        "milestones",
        "power",
        "start_lr",
        "end_lr",
        "boundaries",
        "values",
        "period",
        "period_mult",
        "decay",
        "max_lr",
        "base_lr",
        "pct_start",
        "div_factor",
        "final_div_factor",
        "anneal",
        "three_phase",
        "up",
        "down",
        "mode",
        "warmup",
        "decay_fraction",
        "unit",
        "base_momentum",
        "max_momentum",
        "cycle_momentum",
        "schedules",
        "bogus",
    ]
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def configs(draw):
    cfg = draw(st.dictionaries(KEYS, VALUES, max_size=7))
    if draw(st.booleans()):
        cfg["name"] = draw(st.sampled_from([*S.SCHEDULE_NAMES, "nope", 3]))
    if draw(st.booleans()):
        cfg["warmup"] = draw(
            st.dictionaries(
                st.sampled_from(["steps", "epochs", "start_lr", "mode", "x"]), SCALARS, max_size=3
            )
        )
    if cfg.get("name") == "join" and draw(st.booleans()):
        cfg["schedules"] = draw(st.lists(configs(), min_size=2, max_size=3))
    return cfg


@settings(max_examples=200, deadline=None)
@given(
    configs(),
    st.one_of(st.none(), st.integers(-2, 50), st.floats(allow_nan=True)),
    st.one_of(st.none(), st.integers(-2, 10_000)),
)
def test_fuzzed_configs_only_raise_value_error(cfg, spe, total):
    try:
        s = from_config(cfg, steps_per_epoch=spe, total_steps=total)
        m = momentum_from_config(cfg, steps_per_epoch=spe, total_steps=total)
    except ValueError:
        return
    for t in (0, 1, 7, 100, 10**6):
        float(s(t))
        if m is not None:
            float(m(t))
    s.boundaries(1000)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["cosine", "linear", "polynomial", "one_cycle", "wsd"]),
    st.integers(1, 5000),
    st.integers(0, 200),
)
def test_fuzzed_valid_spans_end_exactly_at_total_steps(name, total, warm):
    base = {
        "cosine": {"lr": 0.1},
        "linear": {"start_lr": 0.1, "end_lr": 0.0},
        "polynomial": {"lr": 0.1},
        "one_cycle": {"max_lr": 0.1},
        "wsd": {"lr": 0.1, "warmup": 0, "decay_fraction": 0.5},
    }[name]
    cfg = {"name": name, **base, "warmup": {"steps": warm}}
    if name == "wsd":
        cfg["warmup"] = warm  # wsd's own warmup parameter (an int), not the combinator
    try:
        s = from_config(cfg, total_steps=total)
    except ValueError as exc:
        if name == "wsd":
            assert warm > total - max(1, round(0.5 * total)), exc
        elif name == "one_cycle":
            assert total - warm < 4, exc  # too short for two non-empty phases
        else:
            assert warm >= total, exc
        return
    assert s.length == total


@st.composite
def family_configs(draw):
    """Only the family's own keys (so validation past the key check is exercised)."""
    name = draw(st.sampled_from(sorted(S.FAMILIES)))
    fam = S.FAMILIES[name]
    cfg = {"name": name}
    for key in fam.params:
        if key in fam.required or draw(st.booleans()):
            cfg[key] = draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3)))
    if draw(st.booleans()):
        cfg["unit"] = draw(st.sampled_from(["steps", "epochs"]))
    return cfg


@settings(max_examples=200, deadline=None)
@given(
    family_configs(),
    st.one_of(st.none(), st.integers(1, 20)),
    st.one_of(st.none(), st.integers(1, 500)),
)
def test_fuzzed_family_configs_only_raise_value_error(cfg, spe, total):
    try:
        s = from_config(cfg, steps_per_epoch=spe, total_steps=total)
    except ValueError:
        return
    for t in (0, 1, 7, 100, 10**6):
        float(s(t))
    s.boundaries(1000)
