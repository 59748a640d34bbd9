"""The records :func:`lrpilot.recommend.recommend` takes and returns: the request, the
measurements on a task, and each written value with its reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lrpilot.recommend._rules import rule


@dataclass(frozen=True)
class Request:
    """What the user asked for (``None``: not given)."""

    scenario: str
    dataset_size: int | None = None
    batch: int | None = None
    gpus: int = 1
    epochs: int | None = None
    optimizer: str | None = None
    task: str | None = None
    head: str | None = None


@dataclass(frozen=True)
class FinderMeasurement:
    """One LR sweep's outcome, enough to recompute a suggestion for any schedule."""

    optimizer: str
    verdict: str
    lr_unstable: float | None
    unstable_interval: tuple[float, float] | None
    probe_batch: int
    samples: int


@dataclass(frozen=True)
class Measurements:
    """What :mod:`lrpilot.recommend._measure` found on the task (``None``: not measured)."""

    dataset_size: int | None = None
    task_epochs: int | None = None
    has_batchnorm: bool | None = None
    head: str | None = None
    cross_entropy: bool | None = None  # the task's loss is cross-entropy
    b_simple: float | None = None
    max_device_batch: int | None = None
    finder: dict[str, FinderMeasurement] = field(default_factory=dict)
    optimizer_pick: str | None = None
    optimizer_reason: str = ""
    optimizer_tie: bool = False  # the comparison could not tell the two apart


@dataclass(frozen=True)
class Choice:
    """One written value and why."""

    key: str
    value: Any
    rule: str
    basis: str  # assumed | measured | given | task default | derived
    reason: str

    def source(self) -> str:
        return rule(self.rule).source if self.rule else ""


@dataclass
class Recommendation:
    config: dict[str, Any]
    choices: list[Choice]
    replaced: list[tuple[str, str]]  # (rule id, measurement id)
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "choices": [dict(asdict(c), source=c.source()) for c in self.choices],
            "replaced": [{"rule": r, "by": m} for r, m in self.replaced],
            "notes": list(self.notes),
        }
