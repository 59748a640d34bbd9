"""``FinderResult``: what ``find_lr`` reports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lrpilot.finder.policy import schedule_fraction, suggest_peak_lr


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (tuples become lists), so that
    ``json.dumps(..., allow_nan=False)`` accepts it.

    >>> json_safe({"a": float("nan"), "b": (1.5, float("inf"))})
    {'a': None, 'b': [1.5, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def confidence_label(interval: tuple[float, float] | None) -> str:
    """``"high"`` when the interval spans at most 1.5x, ``"medium"`` up to 3x, else ``"low"``
    (``"none"`` without an interval).

    >>> confidence_label((1.0, 1.4)), confidence_label((1.0, 2.0)), confidence_label(None)
    ('high', 'medium', 'none')
    """
    if interval is None:
        return "none"
    ratio = interval[1] / interval[0]
    if ratio <= 1.5:
        return "high"
    if ratio <= 3.0:
        return "medium"
    return "low"


@dataclass
class FinderResult:
    """Outcome of an LR range test.

    Attributes:
        lrs, losses: the raw recorded curve (all repeats pooled, sorted by LR).
        smoothed, slope: the centred smoothed loss and ``d loss / d log10(lr)`` at each LR.
        initial_loss: the loss before the first update (mean over repeats).
        verdict: ``"ok"``, ``"flat"``, ``"noisy"``, ``"never diverged"``, ``"diverged at
            once"`` or ``"too short"``; anything but ``"ok"`` comes with ``lr_unstable`` and
            ``suggestion`` set to ``None`` (except "diverged at once", which may keep
            the LR where it saw the instability, with no suggestion).
        message: why, and what to change, when the verdict is not ``"ok"``.
        lr_unstable: the LR where training becomes unstable (see ``lrpilot.finder.decision``).
        unstable_interval: ``(low, high)`` range for ``lr_unstable`` (noise of the curve,
            the LR step and, with ``repeats > 1``, the spread between repeats).
        schedule: the intended schedule the suggestion is for.
        optimizer_family: ``"sgd"`` or ``"adam"``, the family the suggestion is for.
        batch_ratio: training batch / probe batch the suggestion assumes.
        suggestion: recommended PEAK learning rate for that schedule and optimizer,
            ``f(schedule) * batch_ratio ** kappa(optimizer_family) * lr_unstable``
            (``lrpilot.finder.policy``); ``None`` when the verdict is not ``"ok"``.
        suggestion_interval: the interval of ``lr_unstable`` carried over the same way,
            widened by the spread of the calibration ratios.
        confidence: ``"high"``/``"medium"``/``"low"`` from the interval's width
            (at most 1.5x / 3x / wider), ``"none"`` without a suggestion.
        lr_min_loss: the LR at the smallest smoothed loss.
        noise: the curve's robust noise, in the units of ``loss_scale``.
        loss_scale: ``"log"`` when the decision analysed ``ln(loss)`` (all losses positive),
            ``"linear"`` otherwise (``lrpilot.finder.decision``, step 0).
        repeat_lr_unstable: ``lr_unstable`` of each repeat analysed on its own.
        samples: samples passed through the model (the finder's compute).
        optimizer_steps: optimizer steps applied (tested LRs, all repeats).
        skipped_steps: steps a GradScaler skipped (inf/NaN gradients), not counted as tested.
        stop_reasons: why each repeat ended ("completed", "diverged", "non-finite loss", ...).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    slope: list[float]
    initial_loss: float
    verdict: str
    message: str
    lr_unstable: float | None
    unstable_interval: tuple[float, float] | None
    schedule: str
    suggestion: float | None
    suggestion_interval: tuple[float, float] | None
    confidence: str
    optimizer_family: str
    batch_ratio: float
    lr_min_loss: float | None = None
    noise: float = 0.0
    loss_scale: str = "linear"
    repeat_lr_unstable: list[float | None] = field(default_factory=list)
    samples: int = 0
    optimizer_steps: int = 0
    skipped_steps: int = 0
    stop_reasons: list[str] = field(default_factory=list)

    def suggest(self, schedule: str) -> float | None:
        """The recommended peak LR for another intended ``schedule`` (same measurement, same
        optimizer family and batch ratio)."""
        if self.verdict != "ok":
            schedule_fraction(schedule)  # still validate the name
            return None
        return suggest_peak_lr(self.lr_unstable, schedule, self.optimizer_family, self.batch_ratio)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (non-finite floats become ``None``)."""
        return json_safe(asdict(self))
