"""The registry of diagnosis rules: the kinds a :class:`~lrpilot.diagnosis.finding.Finding`
can have and the rules :func:`~lrpilot.diagnosis.diagnose` runs come from here.

A rule is a :class:`Rule`: its ``kind``, ``check(ctx) -> Finding | None`` and
``needs(ctx) -> reason | None`` (a reason when the data it needs is missing; the rule is then
skipped and the reason reported). :func:`diagnose` runs the rules in registration order
(the built-in ones first, in the order of :data:`~lrpilot.diagnosis.finding.KINDS`).
``healthy`` and ``not_enough_data`` are the verdicts of :func:`diagnose` itself, not rules.

>>> from lrpilot.diagnosis import Finding, Rule, register_rule, unregister_rule
>>> def loss_above_10(ctx):
...     t = ctx.train
...     return None if t is None or t.end <= 10 else Finding("loss_above_10", "warning")
>>> register_rule(Rule("loss_above_10", loss_above_10, lambda ctx: None))
>>> "loss_above_10" in kinds()
True
>>> unregister_rule("loss_above_10")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrpilot.errors import ConfigError

if TYPE_CHECKING:
    from lrpilot.diagnosis.context import Context
    from lrpilot.diagnosis.finding import Finding

__all__ = ["META_KINDS", "RULES", "Rule", "get_rule", "kinds", "register_rule", "unregister_rule"]

#: Kinds of the verdicts :func:`~lrpilot.diagnosis.diagnose` gives itself (no rule).
META_KINDS: tuple[str, ...] = ("healthy", "not_enough_data")

RuleFn = Callable[["Context"], "Finding | None"]


@dataclass(frozen=True)
class Rule:
    """A registered rule: its kind, the check, and what data it needs (``needs(ctx)``
    returns a reason string when the data is missing, else ``None``)."""

    kind: str
    check: RuleFn
    needs: Callable[[Context], str | None]


#: kind -> rule, in registration order (the order :func:`diagnose` runs and reports them)
RULES: dict[str, Rule] = {}


def register_rule(rule: Rule) -> None:
    """Add ``rule`` under ``rule.kind``; a kind already registered (or ``healthy``,
    ``not_enough_data``) raises. Findings of that kind are valid from then on."""
    if not isinstance(rule, Rule):
        raise ConfigError(f"register_rule needs a diagnosis Rule, got {type(rule).__name__}")
    if not isinstance(rule.kind, str) or not rule.kind.isidentifier():
        raise ConfigError(f"rule kind must be an identifier such as 'too_slow', got {rule.kind!r}")
    if rule.kind in RULES or rule.kind in META_KINDS:
        raise ConfigError(
            f"diagnosis rule kind {rule.kind!r} is already registered; taken: " + ", ".join(kinds())
        )
    if not callable(rule.check) or not callable(rule.needs):
        raise ConfigError(f"rule {rule.kind!r}: check and needs must be callable")
    RULES[rule.kind] = rule


def unregister_rule(kind: str) -> None:
    """Remove the rule registered as ``kind`` (unknown kinds raise listing the valid ones)."""
    get_rule(kind)
    del RULES[kind]


def get_rule(kind: str) -> Rule:
    """The registered rule for ``kind``; unknown kinds raise listing the valid ones."""
    if kind not in RULES:
        raise ConfigError(f"unknown diagnosis rule {kind!r}; valid: {', '.join(sorted(RULES))}")
    return RULES[kind]


def kinds() -> tuple[str, ...]:
    """Every kind a finding can have now: the registered rules' (in order), then
    ``healthy`` and ``not_enough_data``."""
    return (*RULES, *META_KINDS)
