"""``autopilot.json``, ``autopilot.png`` and the short decision table (I/O only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lrpilot._atomic_io import atomic_write_bytes


def _write_json(path: Path, obj: Any) -> None:
    """Strict JSON: a non-finite number (a diverged candidate's loss in the evidence) is
    written as ``null``."""
    from lrpilot.finder.result import json_safe

    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(text.encode(), path)


def write_plan_report(run_dir: Path, info: dict, outcome: Any) -> None:
    """``autopilot.json`` before the final run (decisions, candidates) and the PNG."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "autopilot.json", info)
    try:
        plot(run_dir / "autopilot.png", info)
    except Exception as exc:  # a plot never stops a run; say why there is none
        info["plot_error"] = f"{type(exc).__name__}: {exc}"
        _write_json(run_dir / "autopilot.json", info)


def finish_report(run_dir: Path, info: dict, summary: dict) -> dict:
    """Add the compute to ``autopilot.json`` and the autopilot's section to
    ``summary.json``; returns the new summary."""
    _write_json(run_dir / "autopilot.json", info)
    summary = dict(summary)
    summary["autopilot"] = {
        "compute_multiple": info["compute"]["compute_multiple"],
        "decisions": {d["name"]: d["value"] for d in info["decisions"]},
        "report": str(run_dir / "autopilot.json"),
    }
    summary["compute_multiple"] = info["compute"]["compute_multiple"]
    _write_json(run_dir / "summary.json", summary)
    return summary


def decision_rows(info: dict) -> list[tuple[str, str, str]]:
    """``(decision, value, why)`` for the table the CLI prints."""
    rows = []
    for d in info["decisions"]:
        value = d["value"]
        if isinstance(value, float):
            shown = f"{value:.4g}"
        elif isinstance(value, list):
            shown = ", ".join(f"{v:.3g}" for v in value)
        else:
            shown = str(value)
        rows.append((d["name"], shown, d["reason"]))
    plan = info.get("plan")
    if plan and info.get("mode", "search") == "search":
        rows.append(
            ("warmup", f"{plan['warmup']} steps", "5% of the run (shared trunk of the probes)")
        )
    split = info.get("decision_split")
    if split:
        when = split.get("trained_on_from_epoch", 0)
        rows.append(
            ("decision split", f"{split['samples']} of {split['of']}",
             "held out of training until the decision, scored on; trained on from epoch "
             f"{when + 1}" if when else "trained on from the start (no decision to make)")
        )  # fmt: skip
    rescue = info.get("rescue_budget")
    if rescue and rescue.get("max_replay") is not None:
        rows.append(
            ("guard replays", f"<= {rescue['max_replay']} steps",
             f"what the budget leaves; snapshots every {rescue['snapshot_every']} steps")
        )  # fmt: skip
    comp = info.get("compute")
    if comp:
        rows.append(
            ("compute", f"{comp['compute_multiple']:.3f} x one run", f"budget {info['budget']:g}")
        )
    return rows


def _plain_log_ticks(ax: Any) -> None:
    """Log-axis labels at 1, 2 and 5 per decade in plain numbers (matplotlib's default
    labels every minor tick in scientific notation on a narrow range, and they overlap)."""
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _plot_prior(ax: Any, prior: dict) -> None:
    """The finder's suggestion (green), and each sweep's when there were several (dotted)."""
    from lrpilot.autopilot._decide import prior_lr

    for sweep in prior.get("sweeps") or []:
        if (value := prior_lr(sweep)) is not None:
            ax.axvline(value, color="green", ls=":", lw=1, alpha=0.6)
    if (value := prior_lr(prior)) is not None:
        ax.axvline(value, color="green", lw=1, alpha=0.8, label=f"finder {value:.3g}")


def plot(path: Path, info: dict) -> None:
    """Left: each candidate's decision-split loss after its cooldown against its LR, per
    round (the chosen one circled). Right: the LR of the final trajectory per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrpilot.schedules import from_config

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    peak = next((d["value"] for d in info["decisions"] if d["name"] == "peak_lr"), None)
    for rnd, marker in ((1, "o"), (2, "s")):
        pts = [c for c in info["candidates"] if c["round"] == rnd]
        ok = [c for c in pts if c["score"] is not None]
        if ok:
            ax1.plot([c["lr"] for c in ok], [c["score"] for c in ok], marker, label=f"round {rnd}")
        for c in pts:
            if c["score"] is None:
                ax1.axvline(c["lr"], color="red", alpha=0.3, lw=1)
    if isinstance(peak, float) and math.isfinite(peak):
        ax1.axvline(peak, color="black", ls="--", lw=1, label=f"chosen {peak:.3g}")
    _plot_prior(ax1, info.get("prior") or {})
    ax1.set_xscale("log")
    _plain_log_ticks(ax1)
    ax1.set_xlabel("peak LR")
    ax1.set_ylabel("decision-split loss after cooldown")
    ax1.legend(fontsize=8)
    total = info["plan"]["total_steps"]
    spe = info["plan"]["steps_per_epoch"]
    sched = from_config(info["schedule"], total_steps=total, steps_per_epoch=spe)
    ax2.plot(range(total), [sched(t) for t in range(total)])
    ax2.axvline(info["decided_at_step"], color="grey", ls=":", label="decision")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("LR")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
