"""The autopilot's prior: the finder's sweeps on the engine's model, and one suggestion from
them.

The suggestion of one half-epoch sweep at batch ``B // 8`` moves as much with the order
of the data as between seeds. Five sweeps from one initialisation of mnist1d-cnn/AdamW,
each in its own data order, suggested 0.0057-0.066 (seed 0) and 0.0044-0.045 (seed 2),
while the medians of the five sat at 0.017-0.027 on all five seeds; the spread of
log10(suggestion) across seeds fell from 0.31 (the first sweep) to 0.17 (the median of
three) and 0.07 (of five) (``bench/results/autopilot_research.md``, fourteenth session).
A plan takes three sweeps when the budget leaves room for them beyond its probes, the
guard's reserve included (:func:`lrpilot.autopilot._plan.with_sweeps`; at 15 epochs and
budget 1.3 it does), and :func:`combine_sweeps` takes their median in log LR when the first
sweep gave a suggestion (the later ones never create or remove a prior).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lrpilot.autopilot._decide import prior_lr
from lrpilot.tasks import Task

#: the data-order seed of sweep ``k`` is ``seed + SWEEP_SEED_STEP x k`` (sweep 0 is the
#: single sweep of a plan that affords one)
SWEEP_SEED_STEP = 1000


def combine_sweeps(found: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One prior from the finder's sweeps: the later sweeps refine the first one's
    suggestion, they never decide whether there is one.

    * no prior when the first sweep gave none (its verdict; ``no suggestion`` for an ``ok``
      without a positive, finite LR), whatever the later ones say;
    * else the median in log LR of the sweeps that gave a suggestion, the first included
      (for an even count the geometric mean of the middle two); the interval from the
      sweep nearest to it;
    * ``samples``: the sum; ``sweeps``: every sweep's verdict, suggestion and samples (the
      evidence).

    Why the first sweep keeps the verdict: the single sweep's verdict chooses between the
    ladder around a suggestion and the ladder up from the default, and the method was
    calibrated with it. Letting two of three sweeps decide moved held-out runs both ways
    at 15 epochs: a transformer whose first sweep diverged at once gained a prior (37.1%
    -> 88.8%), and a regression MLP whose first sweep diverged got a prior 7x too low (MSE
    0.015 -> 0.142) (``bench/results/autopilot_research.md``, fourteenth session).

    A single sweep is returned as it is.

    >>> s = [{"verdict": "ok", "suggestion": x, "samples": 10} for x in (0.008, 0.045)]
    >>> p = combine_sweeps(s)
    >>> p["verdict"], round(p["suggestion"], 4), p["samples"]
    ('ok', 0.019, 20)
    >>> combine_sweeps([{"verdict": "noisy", "suggestion": None, "samples": 10}] + s)["verdict"]
    'noisy'
    """
    if not found:
        raise ValueError("combine_sweeps needs at least one sweep")
    if len(found) == 1:
        return dict(found[0])
    evidence = [{k: f.get(k) for k in ("verdict", "suggestion", "samples")} for f in found]
    samples = sum(int(f.get("samples", 0)) for f in found)
    first = found[0]
    if prior_lr(first) is None:
        verdict = first.get("verdict") if first.get("verdict") != "ok" else "no suggestion"
        message = "the first sweep gave no suggestion: no prior (later sweeps only refine one)"
        return {
            **first, "verdict": verdict, "suggestion": None, "samples": samples,
            "sweeps": evidence, "message": message,
        }  # fmt: skip
    ok = [f for f in found if prior_lr(f) is not None]
    logs = sorted(math.log(float(f["suggestion"])) for f in ok)
    mid = len(logs) // 2
    value = math.exp(logs[mid] if len(logs) % 2 else (logs[mid - 1] + logs[mid]) / 2)
    near = min(ok, key=lambda f: abs(math.log(float(f["suggestion"]) / value)))
    message = f"median of {len(ok)} sweeps' suggestions ({len(found)} run)"
    return {
        **near, "suggestion": value, "samples": samples, "sweeps": evidence, "message": message
    }  # fmt: skip


def describe_sweeps(prior: Mapping[str, Any]) -> str:
    """Each sweep's suggestion (or verdict) of a prior from several, for the decision's
    reason and the progress line; empty for a single sweep.

    >>> describe_sweeps({"sweeps": [{"verdict": "ok", "suggestion": 0.0097},
    ...                             {"verdict": "noisy", "suggestion": None}]})
    '2 sweeps, each in its own data order: 0.0097, noisy'
    """
    sweeps = prior.get("sweeps") or []
    if len(sweeps) < 2:
        return ""
    each = ", ".join(
        f"{s['suggestion']:.3g}" if s.get("suggestion") else str(s.get("verdict")) for s in sweeps
    )
    return f"{len(sweeps)} sweeps, each in its own data order: {each}"


def finder_prior(engine: Any, fit_task: Task, batch: int, seed: int, sweeps: int = 1) -> dict:
    """The finder's sweep on the engine's model and optimizer (``lrpilot.find_lr``, the
    protocol of ``lrpilot find``: half an epoch at batch ``batch // 8``), ``sweeps`` times
    from the same state, sweep ``k`` in the data order of ``seed + SWEEP_SEED_STEP x k``;
    ``find_lr`` restores everything it touches after each. A first sweep without a
    suggestion ends it: the later ones could not give a prior (:func:`combine_sweeps`).
    Returns what the decisions read."""
    from lrpilot.finder import find_lr
    from lrpilot.finder.protocol import probe_plan
    from lrpilot.finder.task_probe import probe_loader

    pp = probe_plan(len(fit_task.train_set), batch)  # type: ignore[arg-type]
    found = []
    for k in range(max(1, sweeps)):
        loader = probe_loader(fit_task.train_set, pp.batch_size, seed + SWEEP_SEED_STEP * k)
        res = find_lr(
            engine.model,
            engine.optimizer,
            fit_task.loss_fn,
            loader,
            start_lr=pp.start_lr,
            end_lr=pp.end_lr,
            steps=pp.steps,
            schedule="one_cycle",
            batch_ratio=batch / pp.batch_size,
        )
        found.append(
            {
                "verdict": res.verdict,
                "suggestion": res.suggestion,
                "interval": list(res.suggestion_interval) if res.suggestion_interval else None,
                "samples": int(res.samples),
                "probe_batch": pp.batch_size,
                "message": getattr(res, "message", ""),
            }
        )
        if prior_lr(found[0]) is None:  # no prior whatever the later sweeps say: stop
            break
    return combine_sweeps(found)
