"""PNG of a run's curves with each finding marked (matplotlib, Agg backend).

Top panel: raw training loss per logged step (light), its running median, and the
per-epoch training and validation losses at the step where each epoch ended; the y axis
is logarithmic when every loss is positive. Bottom panel: the learning rate. Each finding
is a labelled vertical line at its step (at the last step for findings without one); each
divergence-guard rescue is a dotted black line with a triangle at its step, labelled
"guard rescue" in the legend.
Kept apart from the decisions: this module only draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lrpilot._plotting import save_png
from lrpilot.diagnosis.curves import Curves
from lrpilot.diagnosis.finding import Finding
from lrpilot.history import History

_COLORS = {"critical": "tab:red", "warning": "tab:orange", "info": "tab:green"}


def _running_median(y: np.ndarray, width: int) -> np.ndarray:
    half = max(1, width // 2)
    return np.array([np.median(y[max(0, i - half) : i + half + 1]) for i in range(y.size)])


def mark_rescues(ax, ax_lr, curves: Curves) -> list[float]:  # type: ignore[no-untyped-def]
    """Draw each divergence-guard rescue of ``curves`` (a dotted line on both panels and a
    triangle at the top of the loss panel); return the steps marked."""
    steps = [float(e["step"]) for e in curves.guard_rescues() if e.get("step") is not None]
    for i, step in enumerate(steps):
        for axis in (ax, ax_lr):
            axis.axvline(step, color="black", ls=":", lw=1.0)
        ax.plot(
            [step], [1.0], marker="v", color="black", ms=7, ls="none", clip_on=False,
            transform=ax.get_xaxis_transform(), label="guard rescue" if i == 0 else None,
        )  # fmt: skip
    return steps


def _plot_losses(ax, c: Curves):  # type: ignore[no-untyped-def]
    """The step losses (raw and running median), the epoch losses, a log axis when every
    loss is positive; return the x of the epoch points (their step, else their epoch)."""
    ok = np.isfinite(c.step_loss)
    losses = [c.step_loss[ok]]
    if ok.any():
        x, y = c.step_x[ok], c.step_loss[ok]
        ax.plot(x, y, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (step)")
        ax.plot(
            x,
            _running_median(y, max(3, y.size // 50)),
            color="tab:blue",
            lw=1.5,
            label="train loss (running median)",
        )
    ex = np.where(np.isfinite(c.epoch_step), c.epoch_step, c.epoch_x)
    for series, color, label in (
        (c.epoch_train, "tab:purple", "train loss (epoch)"),
        (c.epoch_val, "tab:red", "validation loss (epoch)"),
    ):
        good = np.isfinite(series)
        if good.any():
            ax.plot(ex[good], series[good], "o-", color=color, ms=3, lw=1.2, label=label)
            losses.append(series[good])
    everything = np.concatenate(losses) if losses else np.array([])
    if everything.size and np.all(everything > 0):
        ax.set_yscale("log")
    bad = ~ok
    if bad.any():
        ax.scatter(c.step_x[bad], np.full(bad.sum(), np.nan), marker="x")
    return ex


def _mark_findings(ax, ax_lr, findings: Sequence[Finding], last: float) -> None:  # type: ignore[no-untyped-def]
    """A dashed line per finding at its step (else at the end), coloured by severity and
    labelled with its kind."""
    for i, f in enumerate(findings):
        where = f.step if f.step is not None else last
        color = _COLORS.get(f.severity, "black")
        for axis in (ax, ax_lr):
            axis.axvline(where, color=color, ls="--", lw=1.2)
        ax.annotate(
            f.kind,
            xy=(where, 1.0 - 0.07 * (i % 5)),
            xycoords=("data", "axes fraction"),
            color=color,
            fontsize=9,
            ha="left",
            va="top",
            rotation=0,
        )


def plot_diagnosis(
    history: History, findings: Sequence[Finding], path: str | Path, title: str = ""
) -> Path:
    """Draw the curves and the findings to ``path`` (PNG); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = Curves.from_history(history)
    out = Path(path)
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ex = _plot_losses(ax, c)
    xs, lrs = c.lr_series()
    if xs.size:
        ax_lr.plot(xs, lrs, color="tab:gray")
        if np.all(lrs > 0):
            ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    last = float(max(c.step_x.max(initial=0), np.nanmax(ex, initial=0)))
    _mark_findings(ax, ax_lr, findings, last)
    mark_rescues(ax, ax_lr, c)
    kinds = ", ".join(f.kind for f in findings)
    ax.set_title(title or f"diagnosis: {kinds}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    try:
        save_png(fig, out, dpi=110)
    finally:
        plt.close(fig)
    return out
