"""The autopilot's schedule shape: its rule's choice against the two other shapes it offers.

``lrpilot auto`` picks the shape by a rule (``lrpilot.autopilot._shapes.choose_shape``:
one-cycle when the decision comes by 30% of the run, warmup+cosine after it); a user may fix
``cosine`` or ``wsd`` (warmup-stable-decay, a linear decay over the last 20%), and the
probes then hold at the peak itself. This script runs the panel's rows (15 epochs, batch 64,
budget 1.3, ``autopilot_panel.ROWS``) with each shape fixed (``autopilot_panel`` methods
``auto_cosine`` and ``auto_wsd``) and compares them, paired by seed, with the rule's runs
(``auto``, the table of record's) and with the grid's best point of each shape
(``grid one_cycle``, ``grid cosine``: the best LR of that schedule in the row's grid, over
the same seeds). The fixed shapes ran twice: a15 (the one-cycle probe bias, a quarter
decade for SGD and half a decade for Adam, applied to their probes too, though these hold
at the peak itself) and a17, the code now (only Adam's horizon quarter decade there:
``lrpilot.autopilot._decide.probe_bias``). a16 (no bias at all at the peak) ran too; its
runs stay in the cache and in ``results/autopilot_research.md``.

Seeds 0-4 (``autopilot_panel.SEEDS``). Compute: 100 autopilot runs per version, about 8 minutes on this
machine's two cores (one thread per process, one process per method)::

    OMP_NUM_THREADS=1 python bench/autopilot_panel.py run --methods auto_wsd &
    OMP_NUM_THREADS=1 python bench/autopilot_panel.py run --methods auto_cosine
    python bench/autopilot_shapes.py      # the table, from the cached runs

Output: ``results/autopilot_shapes_table.md``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import autopilot_panel as ap  # noqa: E402

TABLE = ap.RESULTS / "autopilot_shapes_table.md"
#: (method, version, column): the rule's runs (the table of record's), then each fixed shape
#: before (a15: the one-cycle probe bias applied to probes held at the peak) and after (a17,
#: the code now: only Adam's horizon quarter decade there) the fix
SHAPE_RUNS = (
    ("auto", None, "auto (rule)"),
    ("auto_cosine", "a15", "auto, cosine fixed (a15)"),
    ("auto_cosine", "a17", "auto, cosine fixed (a17)"),
    ("auto_wsd", "a15", "auto, wsd fixed (a15)"),
    ("auto_wsd", "a17", "auto, wsd fixed (a17)"),
)


def _fmt(row: str, xs: list[float]) -> str:
    m, sd = statistics.fmean(xs), statistics.stdev(xs)
    return f"{-m:.3f}±{sd:.3f}" if ap.loss_scored(row) else f"{m:.2f}±{sd:.2f}"


def _lrs(runs: list[dict]) -> str:
    """The median peak over the seeds."""
    return f"{statistics.median(r['lr'] for r in runs):.3g}"


def grid_best(row: str, schedule: str) -> tuple[float, list[float]]:
    """The best LR of ``schedule`` in the row's grid and its scores at the table's seeds."""
    grid = {k: v for k, v in ap.grid_of(row, train=False).items() if k[0] == schedule}
    lr = max(grid, key=lambda k: statistics.fmean(grid[k]))
    return lr[1], grid[lr]


def table(rows: list[str]) -> str:
    runs = ap.Runs()
    head = [
        "row", "rule's shape", *(c for _, _, c in SHAPE_RUNS),
        "cosine (a17) - rule", "wsd (a17) - rule", "median peak: rule / fixed a15 / fixed a17",
        "grid: best one_cycle", "grid: best cosine", "best of rule, cosine, wsd (a17)",
    ]  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    wins = {"rule": 0, "cosine": 0, "wsd": 0}
    for row in rows:
        got = {
            (m, v): [runs.get(m, row, s, v) for s in ap.SEEDS] for m, v, _ in SHAPE_RUNS
        }  # fmt: skip
        if any(r is None for rs in got.values() for r in rs):
            lines.append(" | ".join([row, *["-"] * (len(head) - 1)]))
            continue
        sc = {k: [r["score"] for r in rs] for k, rs in got.items()}
        rule = sc[("auto", None)]
        shapes = sorted({str(r.get("schedule")) for r in got[("auto", None)]})
        three = {"rule": rule, "cosine": sc[("auto_cosine", "a17")], "wsd": sc[("auto_wsd", "a17")]}
        best = max(three, key=lambda k: statistics.fmean(three[k]))
        wins[best] += 1
        cells = [row, "/".join(shapes), *(_fmt(row, sc[(m, v)]) for m, v, _ in SHAPE_RUNS)]
        cells += [ap.gap_text(row, three["cosine"], rule), ap.gap_text(row, three["wsd"], rule)]
        peaks = [got[("auto", None)], got[("auto_wsd", "a15")], got[("auto_wsd", "a17")]]
        cells.append(" / ".join(_lrs(p) for p in peaks))
        for schedule in ("one_cycle", "cosine"):
            lr, xs = grid_best(row, schedule)
            cells.append(f"{_fmt(row, xs)} (lr {lr:.3g})")
        cells.append(best)
        lines.append(" | ".join(cells))
    notes = (
        f"\nseeds {', '.join(map(str, ap.SEEDS))}; {ap.EPOCHS} epochs, batch 64, budget 1.3; "
        "mean±std over seeds (tiny-lm: validation loss, lower is better; the others: "
        "validation accuracy %); paired gaps: mean over seeds of the fixed shape's score "
        "minus the rule's at the same seed, ± its standard error (tiny-lm: in loss, "
        "positive is worse); the fixed shapes' probes are the same for cosine and wsd, so "
        "their peaks are equal; best of the three by mean: "
        + ", ".join(f"{name} {n}" for name, n in wins.items())
    )
    return "\n".join(lines) + "\n" + notes


def main() -> int:
    text = table(list(ap.ROWS))
    print(text)
    TABLE.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
