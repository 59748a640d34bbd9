"""PNG plot of a finder result (matplotlib, Agg backend; no decision logic here).

Raw and smoothed loss against the learning rate on a log axis, with the instability point
(and its interval) and the suggested peak LR (and its interval) marked.
"""

from __future__ import annotations

import math
from pathlib import Path

from lrpilot._plotting import save_png
from lrpilot.finder.result import FinderResult


def plot_result(result: FinderResult, path: str | Path) -> Path:
    """Write the plot to ``path`` (atomically: temp file then rename); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    finite = [(lr, y) for lr, y in zip(result.lrs, result.losses, strict=True) if math.isfinite(y)]
    if finite:
        ax.plot(*zip(*finite, strict=True), ".", color="0.6", ms=3, label="raw loss")
    smooth = [
        (lr, y) for lr, y in zip(result.lrs, result.smoothed, strict=True) if math.isfinite(y)
    ]
    if smooth:
        ax.plot(*zip(*smooth, strict=True), "-", color="C0", lw=2, label="smoothed (centred)")
    if math.isfinite(result.initial_loss):
        ax.axhline(result.initial_loss, color="0.4", ls=":", lw=1, label="loss before the sweep")
    if result.lr_unstable is not None:
        ax.axvline(
            result.lr_unstable,
            color="C3",
            lw=1.5,
            label=f"unstable at the probe batch {result.lr_unstable:.3g}",
        )
        if result.unstable_interval is not None:
            ax.axvspan(*result.unstable_interval, color="C3", alpha=0.12)
    if result.suggestion is not None:
        ax.axvline(
            result.suggestion,
            color="C2",
            lw=2,
            ls="--",
            label=(
                f"suggested peak ({result.schedule}, training batch = "
                f"{result.batch_ratio:g}x probe) {result.suggestion:.3g}"
            ),
        )
        if result.suggestion_interval is not None:
            ax.axvspan(*result.suggestion_interval, color="C2", alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (first parameter group)")
    ax.set_ylabel("loss")
    title = f"LR range test: {result.verdict}"
    if result.verdict != "ok" and result.message:
        title += f"\n{result.message}"
    ax.set_title(title, fontsize=9)
    if finite:
        ys = sorted(y for _, y in finite)
        lo, hi = ys[0], ys[int(0.95 * (len(ys) - 1))]
        pad = 0.1 * (hi - lo) if hi > lo else 1.0
        top = max(hi, result.initial_loss if math.isfinite(result.initial_loss) else hi)
        ax.set_ylim(lo - pad, top + 2 * pad)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
