"""``diagnose(history) -> list[Finding]``: read a run's curves and say what is wrong.

The registered rules (:mod:`lrpilot.diagnosis.registry`; the built-in ones are in
:mod:`lrpilot.diagnosis.rules`) run in registration order, the built-in ones first in the
order of :data:`~lrpilot.diagnosis.finding.KINDS`. A symptom with a more basic cause then hides
the ones it explains (:data:`EXPLAINS`): a run that went NaN is not also "plateaued";
strong oscillation is reported instead of the plateau or slow progress it causes;
overfitting instead of the memorisation plateau of the training loss (and of the
validation loss's rise counted as oscillation). When no problem
is found the result is one ``healthy`` finding; when no shape rule had enough data it is
one ``not_enough_data`` finding (plus ``nan``/``diverged`` if those were seen).

The result is deterministic: a pure function of the recorded history.

>>> from lrpilot.history import History
>>> h = History.from_records(
...     [{"type": "step", "step": s, "epoch": 0, "lr": 0.1, "train_loss": 2.0} for s in (1, 2)]
... )
>>> [f.kind for f in diagnose(h)]
['not_enough_data']
"""

from __future__ import annotations

from dataclasses import replace

from lrpilot.diagnosis import rules as _builtin_rules  # noqa: F401  (registers them)
from lrpilot.diagnosis.chance import chance_epochs, describe
from lrpilot.diagnosis.context import Context
from lrpilot.diagnosis.curves import Curves
from lrpilot.diagnosis.finding import Finding
from lrpilot.diagnosis.registry import RULES
from lrpilot.errors import ConfigError
from lrpilot.history import History

#: kind -> kinds it explains (and therefore hides when both fire).
EXPLAINS: dict[str, tuple[str, ...]] = {
    "nan": ("diverged", "oscillating", "overfitting", "too_slow", "underfitting", "plateau"),
    "diverged": ("oscillating", "too_slow", "underfitting", "plateau"),
    "oscillating": ("too_slow", "underfitting", "plateau"),
    "overfitting": ("oscillating", "underfitting", "plateau"),
    "too_slow": ("underfitting", "plateau"),
    "underfitting": ("plateau",),
}

#: Rules that judge the curve's shape; when all of them lack data, the verdict is
#: "not enough data" rather than a guess.
SHAPE_RULES = ("oscillating", "overfitting", "too_slow", "underfitting", "plateau")


def diagnose(history: History) -> list[Finding]:
    """Findings for a recorded run, most basic cause first.

    Args:
        history: the run's records (``History.read_jsonl(run_dir)``, or one of the
            readers in :mod:`lrpilot.diagnosis.readers`).

    Returns:
        A non-empty list of findings. Problems (``nan``, ``diverged``, ``oscillating``,
        ``overfitting``, ``too_slow``, ``underfitting``, ``plateau``), else one
        ``healthy`` finding, or ``not_enough_data`` when the curves are too short to judge.
    """
    if not isinstance(history, History):
        raise ConfigError(f"diagnose needs a lrpilot History, got {type(history).__name__}")
    ctx = Context.build(Curves.from_history(history))
    found: dict[str, Finding] = {}
    skipped: dict[str, str] = {}
    for kind, rule in list(RULES.items()):
        reason = rule.needs(ctx)
        if reason is not None:
            skipped[kind] = reason
            continue
        finding = rule.check(ctx)
        if finding is not None:
            found[kind] = finding
    hidden = {k for kind in found for k in EXPLAINS.get(kind, ())}
    findings = [f for kind, f in found.items() if kind not in hidden]
    if all(kind in skipped for kind in SHAPE_RULES):
        if not findings:
            findings.append(_not_enough(ctx, skipped))
        return _with_chance(findings, ctx)
    if not findings:
        findings.append(_healthy(ctx, skipped))
    return _with_chance(findings, ctx)


#: Added to the advice of ``too_slow`` for a run at chance level in every epoch: the curve
#: cannot tell a learning rate far too low from one so high that the network died between
#: two logged steps (a divergence the log saw, or a guard rescue, is ``diverged`` instead).
AT_CHANCE_CAVEAT = (
    "; but the model predicted at chance level in every epoch, which a learning rate so "
    "high that the network died before the first logged steps (dead units, a constant "
    "prediction) also gives: if lrpilot find puts the unstable LR below the current one, "
    "lower it instead"
)


def _with_chance(findings: list[Finding], ctx: Context) -> list[Finding]:
    """Each finding with the epochs at chance level (:mod:`lrpilot.diagnosis.chance`) in
    its evidence and summary; ``too_slow`` on a run at chance throughout gets
    :data:`AT_CHANCE_CAVEAT` after its "raise the learning rate"."""
    k, epochs = chance_epochs(ctx.curves)
    if not epochs or k is None:
        return findings
    total = int(ctx.curves.epoch_x.size)
    note = describe(k, epochs, total)
    out = []
    for f in findings:
        advice = f.advice
        if f.kind == "too_slow" and len(epochs) == total:
            advice += AT_CHANCE_CAVEAT
        evidence = {**f.evidence, "chance_classes": k, "chance_epochs": list(epochs)}
        out.append(replace(f, evidence=evidence, summary=f"{f.summary}; {note}", advice=advice))
    return out


def _not_enough(ctx: Context, skipped: dict[str, str]) -> Finding:
    c = ctx.curves
    return Finding(
        "not_enough_data",
        "info",
        evidence={
            "logged_steps": int(c.step_x.size),
            "epochs": int(c.epoch_x.size),
            "skipped": dict(skipped),
        },
        advice=("log more often (a smaller log_every) or train longer before judging the curves"),
        summary=f"not enough data to judge the curves ({next(iter(skipped.values()))})",
    )


def _healthy(ctx: Context, skipped: dict[str, str]) -> Finding:
    evidence: dict = {"not_checked": dict(skipped)}
    t, val = ctx.train, ctx.val
    if t is not None:
        evidence.update(initial_train_loss=t.init, final_train_loss=t.end)
    epoch = None
    if val is not None:
        epoch = int(val.epochs[val.best_i])
        evidence.update(best_val_loss=float(val.v[val.best_i]), best_epoch=epoch)
    note = f" (not checked: {', '.join(sorted(skipped))})" if skipped else ""
    return Finding(
        "healthy",
        "info",
        epoch=epoch,
        evidence=evidence,
        advice="nothing to change" + note,
        summary="the curves show no problem: the loss fell and settled",
    )
