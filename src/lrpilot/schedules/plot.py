"""PNG plot of a schedule (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrpilot._plotting import save_png

__all__ = ["save_schedule_png"]


def save_schedule_png(
    path: str | os.PathLike[str],
    steps: Sequence[int],
    lrs: Sequence[float],
    *,
    title: str = "learning-rate schedule",
    boundaries: Sequence[int] = (),
    momentum: Sequence[float] | None = None,
    steps_per_epoch: int | None = None,
) -> Path:
    """Plot LR against step (momentum on a second axis if given) and write ``path``.

    The figure goes to a temporary file in the same directory that is renamed into place,
    so an existing file is never left half-written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    target = Path(path)
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(steps, lrs, color="tab:blue", lw=1.5, label="learning rate")
    for b in boundaries:
        ax.axvline(b, color="0.8", lw=0.8, ls="--", zorder=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if momentum is not None:
        ax2 = ax.twinx()
        ax2.plot(steps, momentum, color="tab:orange", lw=1.0, label="momentum")
        ax2.set_ylabel("momentum", color="tab:orange")
    if steps_per_epoch:
        spe = steps_per_epoch

        def to_epoch(s: Any) -> Any:
            return s / spe

        def to_step(e: Any) -> Any:
            return e * spe

        top = ax.secondary_xaxis("top", functions=(to_epoch, to_step))
        top.set_xlabel("epoch")
    fig.tight_layout()
    return save_png(fig, target)
