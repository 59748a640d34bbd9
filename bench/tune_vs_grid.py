"""Search versus grid: the compute ``lrpilot tune`` needs to reach the grid oracle.

Rows: mnist1d-cnn with SGD (momentum 0.9, weight decay 5e-4) and mnist1d-mlp with AdamW
(weight decay 1e-2), batch 64, 15 epochs, as in ``bench/finder_quality.py``, whose cache
``bench/results/finder_quality_runs.json`` holds the grid (mean final validation accuracy
over 5 seeds per point; points missing from the cache are trained).

**Framing** (``--framing``; the issue's oracle is "best schedule x LR"):

* ``both`` (default, the issue's framing): the grid is that benchmark's half-decade LR grid
  for *both* schedules it measures, one-cycle (``{name: one_cycle}``, OneCycleLR's shape,
  momentum cycled) and warm-up + cosine (``{name: cosine, warmup: {epochs: 1}}``); the
  **oracle** is its best (schedule, LR) point; the **grid's compute** is its number of
  (schedule, LR) points in full runs (one seed each; the 5-seed oracle itself cost five times
  that). The search space is the same: ``optimizer.lr`` log-uniform over the grid's LR range
  and ``schedule`` a choice between exactly those two schedule configs.
* ``one_cycle`` (the previous session's framing): LR only, one-cycle fixed; the grid and
  the oracle are the one-cycle grid's (5 points), the space ``optimizer.lr`` alone.

The **target** is the oracle's accuracy minus 0.5 point.

Methods (each search a real ``lrpilot tune`` study maximising ``val_accuracy``, one worker,
``--trials`` trials, the repeat's seed as both the sampler seed and the training seed):

* ``tpe+median``: TPE sampler, median pruner, ``--prune-warmup 4 --prune-startup 2`` (no
  trial pruned before 4 of its 15 epochs, just before one-cycle's peak at 4.5; pruning once
  2 trials completed);
* ``random+median``: random sampler, the same median pruner;
* ``tpe+hyperband``: TPE sampler, Hyperband, ``--prune-warmup 4`` (``min_resource`` 4
  epochs, reduction factor 3: rungs at 4 and 12 epochs);
* ``tpe3+median`` (extra): as ``tpe+median`` with ``--sampler-startup 3``: Optuna's TPE
  draws its first 10 trials at random (the random sampler's draws, same seed), so in a
  15-trial study the default TPE differs from ``random+median`` in its last 5 trials only;
* ``ar+tpe3+median``, ``ar+seed+tpe3+median``, ``ar+tpe3+hyperband`` (extra): what a user
  of lrpilot's own LR search runs, ``optimizer.lr: auto_range`` (the log range
  ``[lo / 3, hi * 3]`` around ``lrpilot find``'s suggestion interval for the base config,
  one-cycle) with the same schedule choice, ``--sampler-startup 3``, and the median
  pruner as ``tpe+median`` or Hyperband as ``tpe+hyperband``; ``+seed`` adds
  ``--seed-trial finder`` (the first trial is the base config, one-cycle, at the finder's
  suggested LR). The finder sweep is charged to the study: its ``compute`` in the tune
  summary (samples seen / (15 epochs x training-set size)) is counted before trial 0;
* ``auto``: the autopilot alone, ``lrpilot auto --task T --optimizer O --epochs 15
  --batch-size 64 --seed S`` (it chooses LR, warm-up and schedule shape itself, holding 10%
  of the training set out for its decisions); its compute is its own
  ``compute_multiple`` (probes and the final run);
* ``finder+1run`` (extra, not in the default set): ``lrpilot find`` and one full one-cycle
  ``lrpilot fit`` at its suggestion (the stand-in used before ``lrpilot auto`` existed).

**Compute to target**: trials are taken in order, summing each one's compute (epochs
trained / 15, pruned trials included); the first completed trial whose final validation
accuracy reaches the target stops the count. A study that never reaches it is a miss
(reported with its best accuracy and total compute) and counts as infinite in the median.
Note the asymmetry, stated rather than corrected: a trial's accuracy is one seed, the oracle
a 5-seed mean; and the grid was trained by ``finder_quality``'s lean loop, the trials by
``lrpilot fit`` (same model, data, optimizer and schedule configs; other batch order).
Target of the issue: TPE with pruning reaches it at no more than 1/3 of the grid's compute.

Cost: one 15-epoch trial is about 2-4 s of training on one core (the data set is built once
per study); a 15-trial study with pruning about 1-2 minutes on an idle core.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tune_vs_grid.py [--framing both|one_cycle]
        [--rows mnist1d-mlp] [--methods tpe+median,auto] [--trials 15] [--repeats 3]
        [--out bench/results/tune_vs_grid.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import finder_quality as fq  # noqa: E402  (the grid, its cache and its task rows)

ROWS = {
    "mnist1d-cnn": {"optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}},
    "mnist1d-mlp": {"optimizer": {"name": "adamw", "weight_decay": 1e-2}},
}
PRUNE_WARMUP = 4  # epochs before any pruning (both pruners)
PRUNE_STARTUP = 2  # completed trials before the median pruner prunes
SEARCHES = {
    "tpe+median": (
        "tpe",
        "median",
        ["--prune-warmup", str(PRUNE_WARMUP), "--prune-startup", str(PRUNE_STARTUP)],
    ),
    "random+median": (
        "random",
        "median",
        ["--prune-warmup", str(PRUNE_WARMUP), "--prune-startup", str(PRUNE_STARTUP)],
    ),
    "tpe+hyperband": ("tpe", "hyperband", ["--prune-warmup", str(PRUNE_WARMUP)]),
    # extra: TPE modelling after 3 random trials instead of Optuna's 10 (with 15 trials
    # the default TPE is the random sampler for 10 of them)
    "tpe3+median": (
        "tpe",
        "median",
        [
            "--sampler-startup",
            "3",
            "--prune-warmup",
            str(PRUNE_WARMUP),
            "--prune-startup",
            str(PRUNE_STARTUP),
        ],
    ),
}
#: what a user of ``optimizer.lr: auto_range`` runs: the LR range centred on the finder's
#: interval (the sweep charged to the study), TPE modelling after 3 trials; ``+seed``: the
#: finder's point queued as the first trial (``--seed-trial finder``)
AUTO_RANGE = {
    "ar+tpe3+median": "tpe3+median",
    "ar+seed+tpe3+median": "tpe3+median",
    "ar+tpe3+hyperband": "tpe+hyperband",
}
for _name, _like in AUTO_RANGE.items():
    _sampler, _pruner, _extra = SEARCHES[_like]
    if "--sampler-startup" not in _extra:
        _extra = ["--sampler-startup", "3", *_extra]
    if "+seed" in _name:
        _extra = [*_extra, "--seed-trial", "finder"]
    SEARCHES[_name] = (_sampler, _pruner, _extra)
METHODS = (*SEARCHES, "auto", "finder+1run")
DEFAULT_METHODS = ("tpe+median", "random+median", "tpe+hyperband", "auto")
FRAMINGS = {"both": ("one_cycle", "cosine"), "one_cycle": ("one_cycle",)}
#: the schedule configs of finder_quality's grid (lrpilot.finder.policy.schedule_config
#: without the peak, which ``optimizer.lr`` fills)
SCHEDULE_CONFIGS = {
    "one_cycle": {"name": "one_cycle"},
    "cosine": {"name": "cosine", "warmup": {"epochs": 1}},
}
EPOCHS = 15
MARGIN = 0.5  # accuracy points below the oracle


def grid(row: str, framing: str) -> dict[tuple[str, float], float]:
    """``{(schedule, LR): mean accuracy over 5 seeds}`` of the framing's grid."""
    cache = fq.RunCache(fq.RESULTS)
    out = {}
    for schedule in FRAMINGS[framing]:
        means = fq.grid_search(cache, row, schedule, list(range(5)), EPOCHS)
        out.update({(schedule, lr): acc for lr, acc in means.items()})
    return out


def grid_oracle(row: str, framing: str) -> tuple[tuple[str, float], float, int]:
    """``((schedule, LR) of the best point, its mean accuracy, number of grid points)``."""
    means = grid(row, framing)
    best = max(means, key=means.get)
    return best, means[best], len(means)


def grid_one_seed(row: str, framing: str, repeats: int) -> str:
    """The grid at one seed (what its cost buys): per seed, the best point's accuracy."""
    cache = fq.RunCache(fq.RESULTS)
    cells = []
    for seed in range(repeats):
        accs = [cache.get(row, sched, lr, seed, EPOCHS) for sched, lr in grid(row, framing)]
        cells.append(f"s{seed} {max(a for a in accs if a is not None):.1f}")
    return ", ".join(cells)


def base_config(row: str, seed: int) -> dict:
    return {
        "task": fq.TASK_SETUPS[row]["task"],
        "seed": seed,
        "epochs": EPOCHS,
        "batch_size": fq.BATCH,
        "device": "cpu",
        "schedule": dict(SCHEDULE_CONFIGS["one_cycle"]),
        **ROWS[row],
    }


def search_space(row: str, framing: str, method: str = "") -> dict:
    lrs = [lr for _, lr in grid(row, framing)]
    space: dict = {"optimizer.lr": {"log_uniform": [min(lrs), max(lrs)]}}
    if method in AUTO_RANGE:
        space["optimizer.lr"] = "auto_range"
    if framing == "both":
        space["schedule"] = {"choice": [SCHEDULE_CONFIGS[s] for s in FRAMINGS[framing]]}
    return space


def lrpilot(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lrpilot.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip()[-500:]}")
    return proc


def compute_to_target(trials: list[dict], target: float) -> tuple[float | None, float, float]:
    """``(compute to target or None, total compute, best accuracy in percent)``.

    >>> t = [{"number": 0, "state": "complete", "value": 0.5, "compute": 1.0},
    ...      {"number": 1, "state": "pruned", "value": 0.2, "compute": 0.25},
    ...      {"number": 2, "state": "complete", "value": 0.7, "compute": 1.0}]
    >>> compute_to_target(t, 60.0)
    (2.25, 2.25, 70.0)
    >>> compute_to_target(t, 80.0)
    (None, 2.25, 70.0)
    """
    spent, best, reached = 0.0, float("nan"), None
    for t in sorted(trials, key=lambda t: t["number"]):
        spent += t["compute"]
        if t["state"] == "complete" and t["value"] is not None:
            acc = 100.0 * t["value"]
            best = acc if not best >= acc else best
            if reached is None and acc >= target:
                reached = spent
    return reached, spent, best


def run_search(row: str, framing: str, method: str, seed: int, trials: int, work: Path) -> dict:
    sampler, pruner, extra = SEARCHES[method]
    config, space = work / "base.yaml", work / "space.yaml"
    config.write_text(json.dumps(base_config(row, seed)))
    space.write_text(json.dumps(search_space(row, framing, method)))
    out = work / f"{row}-{method}-{seed}"
    args = ["tune", str(config), "--space", str(space), "--trials", str(trials)]
    args += ["--out", str(out), "--metric", "val_accuracy", "--sampler", sampler]
    args += ["--pruner", pruner, *extra, "--seed", str(seed), "--json"]
    summary = json.loads(lrpilot(*args).stdout)
    trials = [
        {k: t[k] for k in ("number", "state", "value", "compute", "params")}
        for t in summary["trials"]
    ]
    finder = summary.get("finder")
    if finder:  # auto_range's sweep, charged before the first trial
        trials.insert(
            0,
            {
                "number": -1,
                "state": "finder",
                "value": None,
                "compute": finder["compute"],
                "params": {k: finder[k] for k in ("interval", "suggestion", "epochs_of_compute")},
            },
        )
    return {
        "command": "lrpilot " + " ".join([*args[:1], "BASE", "--space", "SPACE", *args[4:]]),
        "space": search_space(row, framing, method),
        "resolved_space": summary["space"],
        "finder": finder,
        "trials": trials,
    }


def run_auto(row: str, seed: int, work: Path) -> dict:
    cfg = base_config(row, seed)
    out = work / f"{row}-auto-{seed}"
    args = ["auto", "--task", cfg["task"], "--optimizer", cfg["optimizer"]["name"]]
    args += ["--epochs", str(EPOCHS), "--batch-size", str(fq.BATCH), "--seed", str(seed)]
    args += ["--out", str(out), "--json"]
    result = json.loads(lrpilot(*args).stdout)
    final = result["summary"]["final"]
    decisions = result.get("decisions")
    return {
        "command": "lrpilot " + " ".join([*args[:-3], "--json"]),
        "decisions": decisions,
        "trials": [
            {
                "number": 0,
                "state": "complete",
                "value": final.get("val_accuracy"),
                "compute": float(result["compute_multiple"]),
                "params": {"decisions": decisions},
            }
        ],
    }


def run_finder(row: str, seed: int, work: Path) -> dict:
    cfg = base_config(row, seed)
    found = json.loads(
        lrpilot(
            "find",
            "--task",
            cfg["task"],
            "--optimizer",
            cfg["optimizer"]["name"],
            "--schedule",
            "one_cycle",
            "--seed",
            str(seed),
            "--json",
        ).stdout
    )
    if found.get("suggestion") is None:
        return {"trials": [], "note": f"finder verdict {found.get('verdict')}"}
    config = work / "finder.yaml"
    config.write_text(json.dumps(cfg))
    out = work / f"{row}-finder-{seed}"
    summary = json.loads(
        lrpilot(
            "fit",
            str(config),
            "--out",
            str(out),
            "--progress",
            "none",
            "--json",
            "--set",
            f"optimizer.lr={found['suggestion']}",
        ).stdout
    )
    acc = summary["final"].get("val_accuracy")
    finder_compute = found["epochs_of_compute"] / EPOCHS
    return {
        "trials": [
            {
                "number": 0,
                "state": "complete",
                "value": acc,
                "compute": summary["epochs_run"] / EPOCHS + finder_compute,
                "params": {"optimizer.lr": found["suggestion"]},
            }
        ],
    }


def result_key(framing: str, row: str, method: str, seed: int, trials: int) -> str:
    """Keys of the json; the framing-free autopilot and finder runs are shared by both."""
    if method in ("auto", "finder+1run"):
        return f"{row}|{method}|{seed}"
    return f"{framing}|{row}|{method}|{seed}|{trials}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framing", choices=tuple(FRAMINGS), default="both")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..R-1 (>= 3)")
    parser.add_argument("--seeds", default=None, help="run only these seeds (e.g. 2), table all")
    parser.add_argument("--out", default=str(HERE / "results" / "tune_vs_grid.json"))
    parser.add_argument("--table-only", action="store_true", help="print the table, run nothing")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    methods = [m for m in args.methods.split(",") if m]
    for r in rows:
        if r not in ROWS:
            parser.error(f"unknown row {r!r}; valid: {', '.join(ROWS)}")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
    if args.repeats < 3:
        parser.error(f"--repeats {args.repeats}: at least 3 (allowed: >= 3)")
    if args.trials < 1:
        parser.error(f"--trials {args.trials}: allowed >= 1")
    seeds = list(range(args.repeats))
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="tune-vs-grid-") as tmp:
        for row in rows if not args.table_only else []:
            for method in methods:
                for seed in seeds:
                    key = result_key(args.framing, row, method, seed, args.trials)
                    # several bench processes may share the json: re-read before each check
                    results = json.loads(out.read_text()) if out.exists() else {}
                    if key in results:
                        continue
                    t0 = time.time()
                    work = Path(tmp)
                    if method == "finder+1run":
                        res = run_finder(row, seed, work)
                    elif method == "auto":
                        res = run_auto(row, seed, work)
                    else:
                        res = run_search(row, args.framing, method, seed, args.trials, work)
                    res["wall_s"] = time.time() - t0
                    res["machine"] = machine()
                    results = json.loads(out.read_text()) if out.exists() else {}
                    results[key] = res
                    out.parent.mkdir(parents=True, exist_ok=True)
                    tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
                    tmp_out.write_text(json.dumps(results, indent=1))
                    os.replace(tmp_out, out)
                    print(f"{key}: {res['wall_s']:.0f} s", file=sys.stderr, flush=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    print(table(results, args.framing, rows, methods, args.repeats, args.trials))
    return 0


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.node()}"
    )


def table(
    results: dict, framing: str, rows: list[str], methods: list[str], repeats: int, trials: int
) -> str:
    w = max(14, *(len(m) for m in methods))
    lines = [
        f"framing {framing!r}: grid = {' + '.join(FRAMINGS[framing])} half-decade LR grid "
        f"(5 seeds per point for the oracle; cost = its points, 1 seed each); "
        f"target = oracle - {MARGIN} point; {trials} trials per study; seeds 0..{repeats - 1}",
        f"{'row':<12} {'method':<{w}} {'oracle':>7} {'target':>7} {'grid':>5} "
        f"{'compute to target per seed (miss: best acc / total compute)':<62} {'median':>7} "
        f"{'/grid':>6} {'<=1/3':>5}",
    ]
    for row in rows:
        (sched, lr), oracle, n_grid = grid_oracle(row, framing)
        target = oracle - MARGIN
        for method in methods:
            cells, needed = [], []
            for seed in range(repeats):
                res = results.get(result_key(framing, row, method, seed, trials))
                if res is None:
                    cells.append(f"s{seed}: not run")
                    continue
                reached, spent, best = compute_to_target(res["trials"], target)
                if reached is None:
                    cells.append(f"s{seed}: miss ({best:.1f}/{spent:.2f})")
                    needed.append(float("inf"))
                else:
                    cells.append(f"s{seed}: {reached:.2f} ({best:.1f}/{spent:.2f})")
                    needed.append(reached)
            med = statistics.median(needed) if needed else float("nan")
            ratio = med / n_grid
            met = "yes" if ratio <= 1 / 3 else ("no" if needed else "-")
            lines.append(
                f"{row:<12} {method:<{w}} {oracle:7.2f} {target:7.2f} {n_grid:5d} "
                f"{'; '.join(cells):<62} {med:7.2f} {ratio:6.2f} {met:>5}"
            )
        lines.append(
            f"{'':<12} (oracle: {sched} at LR {lr:g}; grid cost {n_grid} full runs; the grid "
            f"itself at one seed, best point per seed: {grid_one_seed(row, framing, repeats)})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
