"""The diagnosis registry works from outside the package: a registered rule runs, its kind
becomes valid for ``Finding``, a duplicate kind raises, and removing it restores the rest."""

from __future__ import annotations

import math

import pytest

from lrpilot.diagnosis import (
    KINDS,
    META_KINDS,
    Finding,
    Rule,
    diagnose,
    get_rule,
    kinds,
    register_rule,
    unregister_rule,
)
from lrpilot.errors import ConfigError
from lrpilot.history import History
from test_diagnosis_rules import healthy_curve, make_history


def _history(lr: float = 0.1) -> History:
    """A healthy run (as in test_diagnosis_rules): the loss falls under a cosine decay."""
    return make_history(
        healthy_curve,
        val=lambda t: 0.25 + 2.0 * math.exp(-12 * t),
        lr=lambda t: lr * (1 + math.cos(math.pi * t)) / 2,
    )


def _lr_too_round(ctx):
    """A rule of a user's own: flags a learning rate that is exactly 0.1."""
    lrs = ctx.curves.lr_series()[1]
    if lrs.size and float(lrs[0]) == 0.1:
        return Finding("lr_too_round", "info", evidence={"lr": 0.1}, summary="lr is 0.1")
    return None


@pytest.fixture
def registered():
    calls = []

    def check(ctx):
        calls.append(ctx)
        return _lr_too_round(ctx)

    register_rule(Rule("lr_too_round", check, lambda ctx: None))
    try:
        yield calls
    finally:
        unregister_rule("lr_too_round")


def test_a_registered_rule_runs_and_its_kind_is_valid(registered):
    assert kinds() == (*KINDS[:-2], "lr_too_round", *META_KINDS)
    findings = diagnose(_history(lr=0.1))
    assert len(registered) == 1  # called once, with the run's context
    assert [f.kind for f in findings] == ["lr_too_round"]
    assert findings[0].evidence == {"lr": 0.1}
    assert get_rule("lr_too_round").kind == "lr_too_round"
    # the rule finds nothing: the built-in verdict stands
    assert [f.kind for f in diagnose(_history(lr=0.05))] == ["healthy"]


def test_without_the_rule_its_kind_is_rejected_again(registered):
    Finding("lr_too_round", "info")
    unregister_rule("lr_too_round")
    try:
        with pytest.raises(ConfigError, match="finding kind 'lr_too_round'; valid: nan"):
            Finding("lr_too_round", "info")
        assert [f.kind for f in diagnose(_history(lr=0.1))] == ["healthy"]
    finally:
        register_rule(Rule("lr_too_round", _lr_too_round, lambda ctx: None))


def test_a_skipped_rule_says_why(registered):
    unregister_rule("lr_too_round")
    register_rule(Rule("lr_too_round", _lr_too_round, lambda ctx: "needs a tracker"))
    findings = diagnose(_history(lr=0.1))
    assert [f.kind for f in findings] == ["healthy"]
    assert findings[0].evidence["not_checked"] == {"lr_too_round": "needs a tracker"}


@pytest.mark.parametrize("kind", ["nan", "plateau", "healthy", "not_enough_data"])
def test_duplicate_or_reserved_kind_raises(kind):
    with pytest.raises(ConfigError, match=f"kind '{kind}' is already registered"):
        register_rule(Rule(kind, _lr_too_round, lambda ctx: None))
    assert kinds() == KINDS


def test_bad_registrations_raise():
    with pytest.raises(ConfigError, match="needs a diagnosis Rule"):
        register_rule(_lr_too_round)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="identifier"):
        register_rule(Rule("lr too round", _lr_too_round, lambda ctx: None))
    with pytest.raises(ConfigError, match="unknown diagnosis rule 'nope'"):
        unregister_rule("nope")
    assert kinds() == KINDS
