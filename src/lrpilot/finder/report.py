"""The finder's text report: why a suggested peak sits above the unstable LR, and what to do
when the confidence is low (pure functions of a :class:`~lrpilot.finder.FinderResult`;
``lrpilot find`` prints them).

The suggestion is ``f(schedule) * r ** kappa * lr_unstable`` (:mod:`lrpilot.finder.policy`)
with ``r`` = training batch / probe batch: with ``r = 8`` and SGD (``kappa = 1``) the
one-cycle peak is ``0.207 * 8 = 1.66`` times the LR where the *probe* became unstable, which
is expected (a batch 8x larger averages out gradient noise and tolerates a larger LR:
P. Goyal et al. 2017, linear rule; S. Malladi et al. 2022, square-root rule for Adam).

>>> from lrpilot.finder.result import FinderResult
>>> res = FinderResult([], [], [], [], 2.3, "ok", "", 0.1, (0.08, 0.12), "one_cycle",
...                    0.1656, (0.044, 0.39), "low", "sgd", 8.0)
>>> explain_peak(res, probe_batch=8, batch_size=64)[-42:]
'peak = 0.207 (one_cycle) x 8 x 0.1 = 0.166'
>>> next_steps(res, "mnist1d-cnn", seed=0)[0][:40]
'next: the interval spans 8.9x, 5.9x of i'
>>> res.repeat_lr_unstable = [1.85e-5, 0.09]
>>> consistency(res)[0]
'inconsistent'
"""

from __future__ import annotations

from lrpilot.finder.policy import CALIBRATION_RATIOS, SCHEDULE_FRACTIONS, family_exponent
from lrpilot.finder.result import FinderResult

__all__ = ["SEED_SPREAD_LIMIT", "consistency", "explain_peak", "next_steps"]

#: Seeds whose ``lr_unstable`` differ by more than this factor make any single suggestion
#: unreliable (wider than the calibration spread of the one-cycle rule, 5.9x).
SEED_SPREAD_LIMIT = 3.0


def explain_peak(res: FinderResult, probe_batch: int, batch_size: int) -> str | None:
    """One line on why the suggested peak exceeds ``lr_unstable``; ``None`` when it does not
    (or when there is no suggestion)."""
    if res.verdict != "ok" or res.suggestion is None or res.lr_unstable is None:
        return None
    if res.suggestion <= res.lr_unstable:
        return None
    kappa = family_exponent(res.optimizer_family)
    transfer = res.batch_ratio**kappa
    rule = "linear" if kappa == 1 else f"power {kappa:g}" if kappa != 0.5 else "square-root"
    fraction = SCHEDULE_FRACTIONS[res.schedule]
    return (
        f"why the peak is above the unstable LR: the sweep probed at batch {probe_batch}, "
        f"training uses batch {batch_size} ({res.batch_ratio:g}x); a larger batch averages out "
        f"gradient noise and tolerates a larger LR, by {res.batch_ratio:g}^{kappa:g} = "
        f"{transfer:.3g} for {res.optimizer_family} ({rule} scaling), so peak = "
        f"{fraction:g} ({res.schedule}) x {transfer:.3g} x {res.lr_unstable:.3g} = "
        f"{res.suggestion:.3g}"
    )


def next_steps(res: FinderResult, task: str, seed: int) -> list[str]:
    """What to do about a low-confidence suggestion (empty otherwise): how much of the
    interval is the rule's calibration spread, how to pick within it, and how to check the
    sweep's seed-to-seed spread (a single sweep cannot see it)."""
    if res.verdict != "ok" or res.confidence != "low" or res.suggestion_interval is None:
        return []
    lo, hi = res.suggestion_interval
    q_lo, q_hi = CALIBRATION_RATIOS[res.schedule]
    return [
        f"next: the interval spans {hi / lo:.2g}x, {q_hi / q_lo:.2g}x of it from how far the "
        "calibration tasks' best LRs sat from the rule, so no sweep can narrow it alone: run "
        f"`lrpilot auto --task {task}` (short runs around it within a compute budget), or "
        f"train a few epochs at {lo:.3g}, {res.suggestion:.3g} and {hi:.3g} and keep the best",
        f"check: rerun with --seed {seed + 1} and --seed {seed + 2}; if lr_unstable moves by "
        f"more than {SEED_SPREAD_LIMIT:g}x between seeds, no single suggestion is reliable on "
        "this task (use the short runs above)",
    ]


def consistency(res: FinderResult) -> tuple[str, str] | None:
    """``(verdict, message)`` on the agreement of a sweep's repeats (``find_lr(...,
    repeats=N)``, ``lrpilot find --repeats N``); ``None`` with a single repeat. The verdict
    is ``"inconsistent"`` when a repeat gave no usable curve while another did, or when the
    repeats' ``lr_unstable`` differ by more than :data:`SEED_SPREAD_LIMIT`; then no single
    suggestion is reliable (the pooled curve's number would hide that). Else
    ``"consistent"``."""
    values = res.repeat_lr_unstable
    if len(values) < 2:
        return None
    known = [v for v in values if v is not None]
    if not known:
        return None
    if len(known) < len(values):
        return (
            "inconsistent",
            f"{len(values) - len(known)} of {len(values)} repeats gave no usable curve while "
            f"the others put lr_unstable at {min(known):.3g}..{max(known):.3g}",
        )
    spread = max(known) / min(known)
    if spread > SEED_SPREAD_LIMIT:
        return (
            "inconsistent",
            f"the {len(values)} repeats put lr_unstable from {min(known):.3g} to "
            f"{max(known):.3g} ({spread:.3g}x, more than {SEED_SPREAD_LIMIT:g}x)",
        )
    return "consistent", f"the {len(values)} repeats agree within {spread:.3g}x"
