"""What ``lrpilot recommend`` does, as a library call: :func:`advise` measures the task
(when one is given), applies the rules (:func:`lrpilot.recommend.recommend`), checks that
the config parses as ``lrpilot fit``'s and runs ``lrpilot check``'s rules on it; an
:class:`Advice` renders the commented YAML and the evidence record.

>>> from lrpilot.recommend import Request
>>> advice = advise(Request("classification", dataset_size=5000))
>>> advice.findings, advice.recommendation.config["task"]
([], 'CHANGE_ME:task')
>>> advice.yaml_text().splitlines()[0]
'# lrpilot recommend: each value, its rule and basis (measured / assumed / given)'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lrpilot.recommend._recommender import (
    TASK_PLACEHOLDER,
    Measurements,
    Recommendation,
    Request,
    recommend,
)


@dataclass
class Advice:
    """A recommendation with its measurements (``report``, as ``measure`` returns it)
    and ``lrpilot check``'s findings on the config."""

    recommendation: Recommendation
    report: dict[str, Any] = field(default_factory=dict)
    findings: list = field(default_factory=list)

    def yaml_text(self) -> str:
        """The config as YAML, each value's reason, rule and basis in comments above it."""
        import yaml

        rec = self.recommendation
        lines = ["# lrpilot recommend: each value, its rule and basis (measured / assumed / given)"]
        for c in rec.choices:
            src = f"; {c.source()}" if c.rule else ""
            lines.append(f"# {c.key} = {c.value}: {c.reason} [{c.rule or '-'}, {c.basis}{src}]")
        for rid, by in rec.replaced:
            lines.append(f"# rule {rid} replaced by the measurement {by}")
        for note in rec.notes:
            lines.append(f"# note: {note}")
        return "\n".join(lines) + "\n" + yaml.safe_dump(rec.config, sort_keys=False)

    def evidence(self, out: str | None = None) -> dict[str, Any]:
        """Every choice with its evidence, the measurements and the findings (JSON-safe)."""
        from lrpilot.finder.result import json_safe

        payload = self.recommendation.to_dict()
        payload.update(
            {
                "measurements": self.report,
                "check": [f.__dict__ for f in self.findings],
                "out": out,
            }
        )
        return json_safe(payload)


def advise(
    req: Request,
    *,
    seed: int = 0,
    which: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Advice:
    """Recommend a config for ``req``; with ``req.task``, measure ``which`` of ``finder``,
    ``noise``, ``memory`` first (:func:`lrpilot.recommend._measure.measure`). Bad requests
    raise ``ConfigError`` before any measurement. When the LR was measured, ``lrpilot
    check``'s LR-vs-rule warning becomes a note (the measurement replaces that rule)."""
    from lrpilot.recommend._check import supported_knobs
    from lrpilot.recommend._measure import MEASUREMENTS, check_measurements, measure

    which = check_measurements(list(which) if which is not None else list(MEASUREMENTS))
    # bad arguments fail here, before any measurement (auto is only resolved by measuring)
    recommend(
        dataclasses.replace(req, optimizer=None) if req.optimizer == "auto" and req.task else req
    )
    measured: Measurements | None = None
    report: dict[str, Any] = {}
    if req.task is not None:
        measured, report = measure(req, seed=seed, progress=progress, which=which)
    rec = recommend(req, measured, supports=supported_knobs())
    size = measured.dataset_size if measured is not None else req.dataset_size
    findings = validate(rec.config, size, req.gpus)
    lr_measured = any(c.key == "optimizer.lr" and c.basis == "measured" for c in rec.choices)
    if lr_measured:  # the measurement replaces the rule the LR check compares against
        for f in [f for f in findings if f.rule == "check.lr_factor"]:
            findings.remove(f)
            rec.notes.append(f"the measured LR disagrees with the rule of thumb: {f.message}")
    return Advice(rec, report, findings)


def validate(config: dict, dataset_size: int | None, gpus: int) -> list:
    """Parse ``config`` as ``lrpilot fit`` would and build its schedule; with a real task,
    return ``lrpilot check``'s findings on it. Raises ``ConfigError`` when it does not parse."""
    from lrpilot.recommend._check import check_config
    from lrpilot.schedules import from_config
    from lrpilot.train import parse_config

    if config["task"] != TASK_PLACEHOLDER:
        findings = check_config(config, gpus=gpus)
        if config.get("layer_lr"):  # every pattern must match a parameter, as in fit
            from lrpilot.tasks import get_task
            from lrpilot.train._builders import build_param_groups

            build_param_groups(get_task(config["task"]).build_model(), config["layer_lr"])
        return findings
    n = dataset_size or max(config["batch_size"], 1) * 100
    cfg = parse_config({k: v for k, v in config.items() if k != "task"}, task=_stand_in(n))
    spe = math.ceil(n / (cfg.batch_size * gpus * cfg.accumulate))
    assert cfg.schedule is not None  # recommend always writes one
    from_config(cfg.schedule, steps_per_epoch=spe, total_steps=cfg.epochs * spe)
    return []


def _stand_in(n: int) -> Any:
    """A stand-in for the user's task with ``n`` training samples: a classifier
    (cross-entropy, as label smoothing needs); only the datasets' lengths are read."""
    from torch import nn
    from torch.utils.data import Dataset

    from lrpilot.tasks import Task

    class _Sized(Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> Any:  # pragma: no cover - never read
            raise IndexError(i)

    return Task(
        TASK_PLACEHOLDER, lambda: nn.Linear(1, 2), _Sized(n), _Sized(1), nn.functional.cross_entropy
    )
