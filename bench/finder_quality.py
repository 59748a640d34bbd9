"""Finder quality: does training at ``find_lr``'s suggestion match a grid search?

For every task x schedule row (digits-cnn and mnist1d-cnn with SGD momentum 0.9, weight decay
5e-4; mnist1d-mlp with AdamW, weight decay 1e-2; 15 epochs, batch 64; one-cycle and
warmup+cosine) this prints:

* the grid-best peak learning rate (half-decade grid 1e-k, 3e-k, mean final test accuracy
  over 5 seeds, ``--seeds``; the grid is extended while the best point sits on an edge),
* the finder's suggestion (median and min..max over 5 finder seeds), its ratio to the
  grid-best LR (target: within 1.5x),
* the final test accuracy trained at the median suggestion (same seeds as the grid) versus
  the grid-best (target: within 0.5 point),
* how sure it says it is: for how many of the finder seeds with a suggestion the
  ``suggestion_interval`` holds the grid-best LR, and that interval's median width (high /
  low). The interval's spread term (``CALIBRATION_RATIOS``) was taken from these same rows,
  held-out ones included, so this column checks the per-sweep measurement part of it;
* the finder's compute as a fraction of one epoch (samples processed / training-set size;
  limit 0.5).

``--holdout`` adds rows that were never used to fit the fractions, as a check of how the
one formula generalises: digits-cnn and mnist1d-cnn with AdamW, mnist1d-mlp with SGD, and a
second set run blind after the rule was fixed (``bench/heldout_tasks.py``: digits-mlp and
synth-mlp-ln, a LayerNorm MLP on 8 noisy ``make_classification`` classes, each with SGD
and AdamW), and a third that changes only the training-set size (mnist1d-cnn-16k with SGD
and mnist1d-mlp-16k with AdamW: the calibration pairs on 16 000 MNIST-1D training samples
instead of 4 000, so the half-epoch sweep has 999 steps instead of 249). A finder seed whose
verdict is not "ok" (for example "noisy") gives no suggestion; a row without any is reported
as such. The rule (``lrpilot.finder.policy``) is ``f(schedule) * r **
kappa(optimizer) * lr_unstable`` with ``r = 8`` (training batch / probe batch), ``kappa = 1``
for SGD and ``1/2`` for AdamW.

Training is a lean loop over in-memory tensors (no DataLoader), one thread, with the
schedules of ``lrpilot.schedules.from_config`` attached to the optimizer, as ``lrpilot fit``
builds them: ``{"name": "one_cycle", "max_lr": peak}`` (PyTorch OneCycleLR shape: pct_start
0.3, div_factor 25, final_div_factor 1e4, cosine; momentum / Adam's beta1 cycled
0.95 -> 0.85 -> 0.95 as OneCycleLR and ``lrpilot fit`` do by default) and
``{"name": "cosine", "lr": peak, "warmup": {"epochs": 1}}`` (linear warmup from 0 over the
first epoch, then cosine to 0). Both step once per optimizer step.

Every training run is cached in ``bench/results/finder_quality_runs.json`` (keyed by task,
schedule, LR, seed and protocol) and every finder curve in ``finder_quality_curves.json``,
so reruns only train what is new (``--quick`` caches under the system's temp directory); a
full run also writes its table to
``finder_quality_table.txt``. ``--calibrate`` adds quarter-decade points around each best
LR and prints the fraction per schedule that the calibration rows prefer (the smallest
worst miss in units of the targets, see :func:`calibrate`), the per-task ratios, the
leave-one-task-out fits and the same fit without the optimizer term (``kappa = 1`` for all,
the earlier rule) for comparison. ``--quick`` uses 1 seed, 3 finder seeds and 5 epochs (a
smoke run, not the measurement).

Cost (2-core shared CPU, one thread): one 15-epoch run takes about 1-2 s (mnist1d-mlp,
mnist1d-cnn) and 2-4 s (digits-cnn); the full benchmark trains about 140 runs plus 15
finder sweeps (about 5 minutes on a loaded machine) when nothing is cached, ``--calibrate``
about 35 runs more; with the committed cache a rerun takes seconds. Re-training the
one-cycle rows after the switch to momentum cycling took 190 s for 126 runs (grid and
refinement, all six rows), and the runs at the new suggestions about 2 minutes more.
Going from 3 to 5 seeds (``--holdout --calibrate``: two more seeds for every grid,
refinement and suggestion point of the twelve rows) took 255 s.

    .venv/bin/python bench/finder_quality.py [--quick] [--tasks digits-cnn,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)

RESULTS = Path(__file__).resolve().parent / "results" / "finder_quality_runs.json"
# Cache versions per schedule; bump when the training loop or a schedule changes. "v1" runs
# used torch's OneCycleLR (cycle_momentum=False), whose LR sequence is identical (checked,
# difference 0.0) to lrpilot.schedules.one_cycle; "v3" one-cycle runs also cycle momentum
# (SGD momentum / Adam beta1, 0.95 -> 0.85 -> 0.95, PyTorch's default); cosine changed to
# lrpilot's warmup (LR 0 at step 0, peak at step W) in "v2".
PROTOCOL = {"one_cycle": "v3", "cosine": "v2"}
FINDER_PROTOCOL = "f2"  # bump when the sweep (not the decision) changes

_SGD_GRID = [0.01, 0.03, 0.1, 0.3, 1.0]
_ADAM_GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
# Rows: the three calibration rows of the issue, and held-out rows (other task/optimizer
# pairs, never used to fit the fractions; ``--holdout``) as a check of generalisation.
TASK_SETUPS = {
    "digits-cnn": {"task": "digits-cnn", "optimizer": "sgd", "grid": _SGD_GRID, "calib": True},
    "mnist1d-cnn": {"task": "mnist1d-cnn", "optimizer": "sgd", "grid": _SGD_GRID, "calib": True},
    "mnist1d-mlp": {
        "task": "mnist1d-mlp",
        "optimizer": "adamw",
        "grid": _ADAM_GRID,
        "calib": True,
    },
    "digits-cnn/adamw": {
        "task": "digits-cnn",
        "optimizer": "adamw",
        "grid": _ADAM_GRID,
        "calib": False,
    },
    "mnist1d-cnn/adamw": {
        "task": "mnist1d-cnn",
        "optimizer": "adamw",
        "grid": _ADAM_GRID,
        "calib": False,
    },
    "mnist1d-mlp/sgd": {
        "task": "mnist1d-mlp",
        "optimizer": "sgd",
        "grid": _SGD_GRID,
        "calib": False,
    },
    # a second held-out set, added after the rule was fixed and run blind
    # (``bench/heldout_tasks.py``)
    "digits-mlp": {"task": "heldout_tasks:digits_mlp", "optimizer": "sgd", "grid": _SGD_GRID},
    "digits-mlp/adamw": {
        "task": "heldout_tasks:digits_mlp",
        "optimizer": "adamw",
        "grid": _ADAM_GRID,
    },
    "synth-mlp-ln": {
        "task": "heldout_tasks:synth_mlp_ln",
        "optimizer": "sgd",
        "grid": _SGD_GRID,
    },
    "synth-mlp-ln/adamw": {
        "task": "heldout_tasks:synth_mlp_ln",
        "optimizer": "adamw",
        "grid": _ADAM_GRID,
    },
    # a third held-out set: the calibration pairs on 4x the training data (longer sweeps)
    "mnist1d-cnn-16k": {
        "task": "heldout_tasks:mnist1d_cnn_16k",
        "optimizer": "sgd",
        "grid": _SGD_GRID,
    },
    "mnist1d-mlp-16k": {
        "task": "heldout_tasks:mnist1d_mlp_16k",
        "optimizer": "adamw",
        "grid": _ADAM_GRID,
    },
}
for _row in TASK_SETUPS.values():
    _row.setdefault("calib", False)
FAMILY = {"sgd": "sgd", "adamw": "adam"}  # bench optimizer -> lrpilot.finder family


def family(row: str) -> str:
    return FAMILY[TASK_SETUPS[row]["optimizer"]]


CALIBRATION_ROWS = [name for name, row in TASK_SETUPS.items() if row["calib"]]
HOLDOUT_ROWS = [name for name, row in TASK_SETUPS.items() if not row["calib"]]
SCHEDULES = ("one_cycle", "cosine")
BATCH = 64


#: the benchmark's optimizer settings over the registry's defaults (lrpilot.optim)
BENCH_OPTIMIZER = {"sgd": {"momentum": 0.9, "weight_decay": 5e-4}, "adamw": {"weight_decay": 1e-2}}


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The registry's optimizer with PyTorch's default kernel (as the tables were measured)."""
    from lrpilot.optim import create_optimizer

    return create_optimizer(name, params, lr=lr, **BENCH_OPTIMIZER[name])


def make_scheduler(schedule: str, optimizer, total_steps: int, steps_per_epoch: int):
    """``lrpilot.schedules`` (the same schedules ``lrpilot fit`` builds from a config, the
    ones ``lrpilot.finder.schedule_config`` gives for a suggestion), attached to the
    optimizer; the peak is the optimizer's current LR."""
    from lrpilot.finder.policy import schedule_config
    from lrpilot.schedules import attach, from_config, momentum_from_config

    cfg = schedule_config(schedule, optimizer.param_groups[0]["lr"])
    fn = from_config(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    # one_cycle also cycles momentum (SGD momentum / Adam beta1) 0.95 -> 0.85 -> 0.95, as
    # PyTorch's OneCycleLR and ``lrpilot fit`` do by default; cosine leaves it alone.
    mom = momentum_from_config(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    return attach(optimizer, fn, momentum=mom)


def task_tensors(row: str):
    from lrpilot.tasks import get_task

    task = get_task(TASK_SETUPS[row]["task"])
    x, y = task.train_set.tensors
    xv, yv = task.val_set.tensors
    return task, x, y, xv, yv


def train_once(task_name: str, schedule: str, lr: float, seed: int, epochs: int) -> float:
    """Train from scratch; return the final test (validation-set) accuracy in percent (for a
    task without an ``accuracy`` metric: minus the final test loss, so higher is better)."""
    task, x, y, xv, yv = task_tensors(task_name)
    torch.manual_seed(seed)
    model = task.build_model()
    opt = make_optimizer(TASK_SETUPS[task_name]["optimizer"], model.parameters(), lr)
    n = len(x)
    steps_per_epoch = math.ceil(n / BATCH)
    sched = make_scheduler(schedule, opt, epochs * steps_per_epoch, steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            loss = task.loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if not math.isfinite(loss.item()):
                # diverged: chance level (10 classes), or minus the loss of a uniform
                # prediction for a task scored by its loss
                return 100.0 / 10 if "accuracy" in task.metrics else -math.log(n_out(model, x))
    model.eval()
    with torch.no_grad():
        if "accuracy" not in task.metrics:  # e.g. a language model: minus the test loss
            return -float(task.loss_fn(model(xv), yv))
        acc = (model(xv).argmax(-1) == yv).float().mean().item()
    return 100.0 * acc


def n_out(model, x) -> int:
    """Number of classes the model predicts (its output's last dimension)."""
    with torch.no_grad():
        return int(model(x[:1]).shape[-1])


class RunCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, float] = {}
        if path.is_file():
            self.data = json.loads(path.read_text())

    @staticmethod
    def key(task: str, schedule: str, lr: float, seed: int, epochs: int) -> str:
        return f"{PROTOCOL[schedule]}|{task}|{schedule}|{lr:.6g}|{seed}|{epochs}|b{BATCH}"

    def get(self, *args) -> float | None:
        return self.data.get(self.key(*args))

    def put(self, value: float, *args) -> None:
        self.data[self.key(*args)] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=0, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def cached_acc(cache: RunCache, task, schedule, lr, seed, epochs, progress=None) -> float:
    value = cache.get(task, schedule, lr, seed, epochs)
    if value is None:
        if progress is not None:
            progress(f"train {task} {schedule} lr={lr:.3g} seed={seed}")
        value = train_once(task, schedule, lr, seed, epochs)
        cache.put(value, task, schedule, lr, seed, epochs)
    return value


def grid_search(cache, task, schedule, seeds, epochs, progress=None):
    """Mean accuracy per grid LR; extends the half-decade grid while the best is on an edge."""
    grid = list(TASK_SETUPS[task]["grid"])
    means: dict[float, float] = {}
    for _ in range(6):
        for lr in grid:
            if lr not in means:
                accs = [cached_acc(cache, task, schedule, lr, s, epochs, progress) for s in seeds]
                means[lr] = statistics.fmean(accs)
        best = max(means, key=means.get)
        lrs = sorted(means)
        if best == lrs[0]:
            grid = [_half_decade_below(lrs[0]), *lrs]
        elif best == lrs[-1] and lrs[-1] < 10:
            grid = [*lrs, _half_decade_above(lrs[-1])]
        else:
            break
    return means


def refine(cache, task, schedule, seeds, epochs, means, progress=None) -> dict[float, float]:
    """The grid plus quarter-decade points on both sides of its best LR (calibration only)."""
    fine = dict(means)
    best = max(means, key=means.get)
    for lr in (best * 10**-0.25, best * 10**0.25):
        lr = float(f"{lr:.3g}")
        accs = [cached_acc(cache, task, schedule, lr, s, epochs, progress) for s in seeds]
        fine[lr] = statistics.fmean(accs)
    return fine


def _half_decade_below(lr: float) -> float:
    """1e-k -> 3e-(k+1), 3e-k -> 1e-k."""
    return float(f"{lr * (0.3 if f'{lr:.0e}'.startswith('1') else 1 / 3):.0e}")


def _half_decade_above(lr: float) -> float:
    """1e-k -> 3e-k, 3e-k -> 1e-(k-1)."""
    return float(f"{lr * (3 if f'{lr:.0e}'.startswith('1') else 10 / 3):.0e}")


CURVES = RESULTS.with_name("finder_quality_curves.json")
TABLE = RESULTS.with_name("finder_quality_table.txt")
#: training seeds per grid point and per suggestion. 5, not the issue's minimum of 3: the
#: 3-seed means of mnist1d-mlp scatter by about 1 point between neighbouring LRs, twice the
#: 0.5-point target (the 3-seed table is kept as ``finder_quality_table_3seeds.txt``)
DEFAULT_SEEDS = 5
FINDER_SEEDS = (0, 1, 2, 3, 4)


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors (a lean stand-in for a DataLoader)."""

    def __init__(self, x, y, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        perm = torch.randperm(len(self.x), generator=self.generator)
        for i in range(0, len(perm) - self.batch_size + 1, self.batch_size):
            idx = perm[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def finder_curve(
    curves: dict,
    task_name: str,
    seed: int,
    progress=None,
    probe_batch: int | None = None,
    max_steps: int | None = None,
) -> dict:
    """Raw finder curve for one seed (cached: the decision is re-run on it, not the sweep);
    ``probe_batch`` other than the protocol's for ``bench/finder_probe_batch.py``;
    ``max_steps`` caps the sweep (the sweep-length test in ``finder_rule_research.md``)."""
    from lrpilot.finder import find_lr
    from lrpilot.finder.protocol import probe_plan

    task, x, y, _, _ = task_tensors(task_name)
    plan = probe_plan(len(x), BATCH, probe_batch=probe_batch)
    if max_steps is not None:  # a shorter sweep than the protocol's (research only)
        plan = dataclasses.replace(plan, steps=min(plan.steps, max_steps))
    key = f"{FINDER_PROTOCOL}|{task_name}|{seed}|b{plan.batch_size}|s{plan.steps}|{plan.start_lr:g}-{plan.end_lr:g}"
    if key not in curves:
        if progress is not None:
            progress(f"finder {task_name} seed={seed}")
        torch.manual_seed(1000 + seed)
        model = task.build_model()
        opt = make_optimizer(TASK_SETUPS[task_name]["optimizer"], model.parameters(), 1e-3)
        res = find_lr(
            model,
            opt,
            task.loss_fn,
            TensorBatches(x, y, plan.batch_size, seed),
            start_lr=plan.start_lr,
            end_lr=plan.end_lr,
            steps=plan.steps,
        )
        curves[key] = {
            "lrs": res.lrs,
            "losses": [v if math.isfinite(v) else None for v in res.losses],
            "initial_loss": res.initial_loss,
            "samples": res.samples,
            "train_size": len(x),
        }
        _atomic_json(CURVES, curves)
    return curves[key]


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def analysis_of(curve: dict):  # type: ignore[no-untyped-def]
    """``lrpilot.finder.decision.analyze_curve`` of a recorded curve."""
    from lrpilot.finder.decision import analyze_curve

    losses = [math.nan if v is None else v for v in curve["losses"]]
    return analyze_curve(curve["lrs"], losses, curve["initial_loss"])


def interp_acc(means: dict[float, float], lr: float) -> float:
    """Grid accuracy linearly interpolated in log10(lr) (edge values outside the grid)."""
    xs = sorted(means)
    lx = math.log10(lr)
    if lx <= math.log10(xs[0]):
        return means[xs[0]]
    if lx >= math.log10(xs[-1]):
        return means[xs[-1]]
    for a, b in itertools.pairwise(xs):
        if math.log10(a) <= lx <= math.log10(b):
            t = (lx - math.log10(a)) / (math.log10(b) - math.log10(a))
            return means[a] + t * (means[b] - means[a])
    raise AssertionError("unreachable")


def target_miss(fine: dict, half: dict, lr: float) -> float:
    """How badly ``lr`` misses the two targets, in units of the targets (<= 1: both met):
    ``max(shortfall / 0.5, |ln(lr / grid-best LR)| / ln 1.5)``, with the shortfall against
    the half-decade grid-best accuracy of the accuracy interpolated on the refined grid."""
    best_lr = max(half, key=half.get)
    shortfall = half[best_lr] - interp_acc(fine, lr)
    return max(shortfall / 0.5, abs(math.log(lr / best_lr)) / math.log(1.5), 0.0)


def calibrate(
    fine: dict, half: dict, unstable: dict, transfer: dict
) -> dict[str, tuple[float, float]]:
    """Per schedule: the fraction ``f`` minimising the worst :func:`target_miss` of the
    suggestion ``f * transfer[task] * median lr_unstable`` over the tasks (``transfer`` =
    ``r ** kappa``); ties (within 0.02) go to the geometric middle of the best plateau.
    Returns ``{schedule: (f, worst miss)}``."""
    out = {}
    cands = [10 ** (k / 200) for k in range(-600, 201)]
    for schedule in SCHEDULES:
        scores = [
            max(
                target_miss(fine[(t, schedule)], half[(t, schedule)], c * transfer[t] * unstable[t])
                for t in unstable
            )
            for c in cands
        ]
        low = min(scores)
        plateau = [c for c, sc in zip(cands, scores, strict=True) if sc <= low + 0.02]
        c_mid = 10 ** statistics.fmean(math.log10(c) for c in plateau)
        out[schedule] = (c_mid, low)
    return out


def _progress_note(progress, label: str):  # type: ignore[no-untyped-def]
    """A ``note(msg)`` callback that shows ``msg`` on a new indeterminate bar and advances it."""
    bar = progress.add_task(label, total=None)

    def note(msg: str) -> None:
        progress.update(bar, description=msg)
        progress.advance(bar)

    return note


def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from lrpilot.finder.policy import (
        OPTIMIZER_FAMILIES,
        SCHEDULE_FRACTIONS,
        suggest_peak_lr,
        suggestion_interval,
    )
    from lrpilot.finder.protocol import probe_plan

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 finder seeds, 5 epochs")
    parser.add_argument(
        "--tasks", default=",".join(CALIBRATION_ROWS), help="rows to run (comma-separated)"
    )
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="add the held-out rows: " + ", ".join(HOLDOUT_ROWS),
    )
    parser.add_argument(
        "--calibrate", action="store_true", help="also print the fractions the data prefers"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"training seeds per grid point and per suggestion (>= 3; default {DEFAULT_SEEDS}; "
        "--quick uses 1)",
    )
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.holdout:
        tasks += [t for t in HOLDOUT_ROWS if t not in tasks]
    for t in tasks:
        if t not in TASK_SETUPS:
            parser.error(f"unknown task {t!r}; valid: {', '.join(TASK_SETUPS)}")
    if args.quick and args.seeds is not None:
        parser.error("--seeds with --quick: the smoke run always uses 1 seed")
    n_seeds = DEFAULT_SEEDS if args.seeds is None else args.seeds
    if n_seeds < 3 and not args.quick:
        parser.error(f"--seeds {n_seeds}: the grid needs at least 3 seeds (allowed: >= 3)")
    seeds = [0] if args.quick else list(range(n_seeds))
    finder_seeds = FINDER_SEEDS[:3] if args.quick else FINDER_SEEDS
    epochs = 5 if args.quick else 15
    console = Console(width=max(Console().width, 235), record=True)
    # --quick runs (5 epochs) are cached outside the repository.
    cache = RunCache(
        Path(tempfile.gettempdir()) / "lrpilot_finder_quality_quick.json" if args.quick else RESULTS
    )
    # Drop results of older protocol versions (they are never read again).
    cache.data = {
        k: v for k, v in cache.data.items() if k.split("|")[0] == PROTOCOL.get(k.split("|")[2])
    }
    curves = json.loads(CURVES.read_text()) if CURVES.is_file() else {}
    curves = {k: v for k, v in curves.items() if k.startswith(FINDER_PROTOCOL + "|")}
    if not args.quick:
        _atomic_json(RESULTS, cache.data)
        _atomic_json(CURVES, curves)
    t0 = time.time()

    with Progress(console=console, transient=True) as progress:
        note = _progress_note(progress, "benchmark")

        grids = {
            (t, s): grid_search(cache, t, s, seeds, epochs, note) for t in tasks for s in SCHEDULES
        }
        analyses = {
            t: [analysis_of(finder_curve(curves, t, fs, note)) for fs in finder_seeds]
            for t in tasks
        }
        verdicts = {
            t: [(a.verdict, a.lr_unstable if a.verdict == "ok" else None) for a in analyses[t]]
            for t in tasks
        }
        per_seed = {t: [v for _, v in verdicts[t]] for t in tasks}
        samples = {
            t: [finder_curve(curves, t, fs)["samples"] for fs in finder_seeds] for t in tasks
        }
        batch_ratio = {
            t: BATCH / probe_plan(len(task_tensors(t)[1]), BATCH).batch_size for t in tasks
        }
        unstable = {
            t: statistics.median(v for v in per_seed[t] if v is not None)
            for t in tasks
            if any(v is not None for v in per_seed[t])
        }
        rows = []
        for t in tasks:
            n_train = len(task_tensors(t)[1])
            for s in SCHEDULES:
                means = grids[(t, s)]
                best_lr = max(means, key=means.get)
                suggestions = [
                    suggest_peak_lr(v, s, family(t), batch_ratio[t]) for v in per_seed[t]
                ]
                valid = [v for v in suggestions if v is not None]
                med = statistics.median(valid) if valid else None
                acc_med = (
                    statistics.fmean(
                        cached_acc(cache, t, s, float(f"{med:.4g}"), sd, epochs, note)
                        for sd in seeds
                    )
                    if med is not None
                    else float("nan")
                )
                intervals = [
                    suggestion_interval(a.interval, s, family(t), batch_ratio[t])
                    for a in analyses[t]
                    if a.verdict == "ok"
                ]
                acc_each = [
                    cached_acc(cache, t, s, float(f"{v:.4g}"), fs, epochs, note)
                    for v, fs in zip(suggestions, finder_seeds, strict=True)
                    if v is not None
                ]
                rows.append(
                    {
                        "task": t,
                        "role": "calibration" if TASK_SETUPS[t]["calib"] else "held-out",
                        "schedule": s,
                        "grid_lr": best_lr,
                        "grid_acc": means[best_lr],
                        "sugg_med": med,
                        "sugg_min": min(valid) if valid else None,
                        "sugg_max": max(valid) if valid else None,
                        "n_ok": len(valid),
                        "verdicts": ", ".join(
                            f"{n} {v}"
                            for v, n in sorted(
                                Counter(v for v, _ in verdicts[t] if v != "ok").items()
                            )
                        ),
                        "acc_med": acc_med,
                        "acc_each_mean": statistics.fmean(acc_each) if acc_each else float("nan"),
                        "acc_each_min": min(acc_each) if acc_each else float("nan"),
                        "compute": max(samples[t]) / n_train,
                        "covered": sum(lo <= best_lr <= hi for lo, hi in intervals),
                        "width": statistics.median(hi / lo for lo, hi in intervals)
                        if intervals
                        else None,
                    }
                )

    table = Table(
        title=("QUICK SMOKE RUN, not the measurement: " if args.quick else "")
        + f"finder quality ({epochs} epochs, batch {BATCH}, grid seeds {len(seeds)}, finder seeds {len(finder_seeds)})"
    )
    for col in (
        "task",
        "role",
        "schedule",
        "grid-best LR",
        "grid acc",
        "suggestion median",
        "min..max",
        "ratio",
        "acc @median",
        "Δ acc",
        "acc/seed mean/min",
        "best in interval",
        "finder epochs",
        "targets",
    ):
        table.add_column(col)
    for r in rows:
        if r["sugg_med"] is None:
            table.add_row(
                r["task"],
                r["role"],
                r["schedule"],
                f"{r['grid_lr']:.3g}",
                f"{r['grid_acc']:.2f}",
                "none",
                f"0/{len(finder_seeds)} ok: {r['verdicts']}",
                "",
                "",
                "",
                "",
                "",
                f"{r['compute']:.2f}",
                "MISS (no suggestion)",
            )
            continue
        ratio = r["sugg_med"] / r["grid_lr"]
        delta = r["acc_med"] - r["grid_acc"]
        ok_acc = delta >= -0.5
        ok_lr = 1 / 1.5 <= ratio <= 1.5
        ok_c = r["compute"] <= 0.5
        verdict = (
            "ok"
            if ok_acc and ok_lr and ok_c
            else "MISS "
            + ",".join(n for n, ok in (("acc", ok_acc), ("lr", ok_lr), ("compute", ok_c)) if not ok)
        )
        table.add_row(
            r["task"],
            r["role"],
            r["schedule"],
            f"{r['grid_lr']:.3g}",
            f"{r['grid_acc']:.2f}",
            f"{r['sugg_med']:.3g}",
            f"{r['sugg_min']:.3g}..{r['sugg_max']:.3g} ({r['n_ok']}/{len(finder_seeds)}"
            + (f"; {r['verdicts']}" if r["verdicts"] else "")
            + ")",
            f"{ratio:.2f}x",
            f"{r['acc_med']:.2f}",
            f"{delta:+.2f}",
            f"{r['acc_each_mean']:.2f}/{r['acc_each_min']:.2f}",
            f"{r['covered']}/{r['n_ok']} ({r['width']:.1f}x)",
            f"{r['compute']:.2f}",
            verdict,
        )
    console.print(table)
    console.print(
        "rule: suggestion = f(schedule) * r ** kappa(optimizer) * lr_unstable; f: "
        + ", ".join(f"{k}={v:g}" for k, v in SCHEDULE_FRACTIONS.items())
        + "; kappa: "
        + ", ".join(f"{k}={v:g}" for k, v in OPTIMIZER_FAMILIES.items())
        + "; r (training / probe batch): "
        + ", ".join(sorted({f"{v:g}" for v in batch_ratio.values()}))
        + "; lr_unstable median per task: "
        + ", ".join(f"{t}={v:.3g}" for t, v in unstable.items())
    )
    if args.calibrate and unstable:
        with Progress(console=console, transient=True) as progress:
            note2 = _progress_note(progress, "calibration grid")

            fine = {
                key: refine(cache, key[0], key[1], seeds, epochs, means, note2)
                for key, means in grids.items()
            }
        console.print(
            "calibration grid (quarter-decade points around the best): "
            + "; ".join(
                f"{t} {s}: " + ", ".join(f"{lr:.3g}:{acc:.1f}" for lr, acc in sorted(m.items()))
                for (t, s), m in fine.items()
            )
        )
        calib_unstable = {t: v for t, v in unstable.items() if TASK_SETUPS[t]["calib"]}
        transfer = {
            t: batch_ratio[t] ** OPTIMIZER_FAMILIES[family(t)] for t in unstable
        }  # r ** kappa
        plain = dict.fromkeys(unstable, 1.0)  # the earlier rule: c * lr_unstable for all
        for s in SCHEDULES:
            ratios = {
                t: max(fine[(t, s)], key=fine[(t, s)].get) / (transfer[t] * unstable[t])
                for t in calib_unstable
            }
            console.print(
                f"{s}: best LR (calibration grid) / (r ** kappa * median lr_unstable): "
                + ", ".join(f"{t}={r:.3g}" for t, r in ratios.items())
                + f"  -> range {min(ratios.values()):.3g}..{max(ratios.values()):.3g}"
            )
        for label, tr in (("rule", transfer), ("without the optimizer term", plain)):
            fit = calibrate(fine, grids, calib_unstable, tr)
            console.print(
                f"calibration, {label} (smallest worst target miss over the calibration "
                "rows, 1 = at a target's edge): "
                + ", ".join(f"{s}: f={c:.4g} (worst miss {w:.2f})" for s, (c, w) in fit.items())
            )
            held_miss = {
                s: max(
                    (
                        target_miss(fine[(t, s)], grids[(t, s)], c * tr[t] * unstable[t])
                        for t in unstable
                        if t not in calib_unstable
                    ),
                    default=float("nan"),
                )
                for s, (c, _) in fit.items()
            }
            console.print(
                "  worst miss of that fit on the held-out rows: "
                + ", ".join(f"{s}: {v:.2f}" for s, v in held_miss.items())
            )
            if len(calib_unstable) > 2:
                for held in calib_unstable:
                    rest = {t: v for t, v in calib_unstable.items() if t != held}
                    fit_rest = calibrate(fine, grids, rest, tr)
                    parts = [
                        f"{s}: f={c:.4g}, miss "
                        f"{target_miss(fine[(held, s)], grids[(held, s)], c * tr[held] * unstable[held]):.2f}"
                        for s, (c, _) in fit_rest.items()
                    ]
                    console.print(f"  leave-one-out, {held} left out: " + "; ".join(parts))
    if not args.quick and all(t in tasks for t in CALIBRATION_ROWS):
        # the last full measurement (one file per seed count)
        table = (
            TABLE
            if len(seeds) == DEFAULT_SEEDS
            else TABLE.with_name(f"{TABLE.stem}_{len(seeds)}seeds.txt")
        )
        table.write_text(console.export_text(styles=False))
    console.print(f"wall time {time.time() - t0:.0f} s; run cache: {cache.path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
