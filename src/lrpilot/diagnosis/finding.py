"""The ``Finding`` record: one thing the diagnosis says about a run.

>>> f = Finding("plateau", "info", step=700, epoch=11, evidence={"lr": 0.1},
...             advice="start decay or reduce on plateau at epoch 12")
>>> f.to_dict()["kind"], f.to_dict()["epoch"]
('plateau', 11)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lrpilot.diagnosis.registry import kinds
from lrpilot.errors import ConfigError

#: The built-in kinds, in the order ``diagnose`` reports them. A rule registered with
#: :func:`lrpilot.diagnosis.register_rule` adds its kind; :func:`~lrpilot.diagnosis.kinds`
#: lists them all.
KINDS: tuple[str, ...] = (
    "nan",
    "diverged",
    "oscillating",
    "overfitting",
    "too_slow",
    "underfitting",
    "plateau",
    "healthy",
    "not_enough_data",
)

#: ``critical``: the run is broken; ``warning``: the run works but is clearly wasting
#: compute or accuracy; ``info``: worth knowing, or nothing wrong.
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")


def _plain(value: Any) -> Any:
    """JSON-safe copy: floats rounded to 6 significant digits, NaN/inf as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    try:
        return _plain(float(value))
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True)
class Finding:
    """What is wrong (or right) with a run, where it starts, the numbers behind it and
    what to do.

    Attributes:
        kind: a registered kind (:func:`lrpilot.diagnosis.kinds`: the built-in
            :data:`KINDS` and the kinds of rules registered since).
        severity: one of :data:`SEVERITIES`.
        step: optimizer step where the symptom starts (``None`` when it has no place).
        epoch: epoch where the symptom starts, the 0-based index of the run's records
            (``metrics.jsonl``, ``summary.json``); text (``describe``, ``summary``,
            ``advice``) counts epochs from 1, like the progress lines (``None`` when unknown).
        evidence: the measured numbers the verdict rests on.
        advice: what to change, with concrete values taken from the run.
        summary: the symptom in one sentence.
    """

    kind: str
    severity: str
    step: int | None = None
    epoch: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""
    summary: str = ""

    def __post_init__(self) -> None:
        valid = kinds()
        if self.kind not in valid:
            raise ConfigError(f"finding kind {self.kind!r}; valid: {', '.join(valid)}")
        if self.severity not in SEVERITIES:
            raise ConfigError(f"finding severity {self.severity!r}; valid: {', '.join(SEVERITIES)}")

    @property
    def is_problem(self) -> bool:
        """True for kinds that say something is wrong (not healthy / not enough data)."""
        return self.kind not in ("healthy", "not_enough_data")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (floats rounded to 6 significant digits)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "step": self.step,
            "epoch": self.epoch,
            "summary": self.summary,
            "advice": self.advice,
            "evidence": _plain(self.evidence),
        }

    def describe(self) -> str:
        """One human line: ``[severity] kind at epoch E (step S): summary -> advice``, with
        ``E = epoch + 1`` (counted from 1).

        >>> Finding("plateau", "info", step=700, epoch=0).describe()
        '[info] plateau at epoch 1, step 700: '
        """
        where = []
        if self.epoch is not None:
            where.append(f"epoch {self.epoch + 1}")  # counted from 1 in text
        if self.step is not None:
            where.append(f"step {self.step}")
        place = f" at {', '.join(where)}" if where else ""
        text = f"[{self.severity}] {self.kind}{place}: {self.summary}"
        if self.advice:
            text += f" Advice: {self.advice}"
        return text
