"""Autopilot panel: ``lrpilot auto`` against a grid search, a calibrated default and peers.

Rows (15 epochs, batch 64; SGD: momentum 0.9, weight decay 5e-4; AdamW: weight decay 1e-2):
digits-cnn/SGD, mnist1d-cnn/SGD, mnist1d-mlp/AdamW (the finder's calibration rows),
mnist1d-cnn/AdamW, mnist1d-mlp/SGD, digits-mlp/SGD, synth-mlp-ln/AdamW (the finder's
held-out rows), and three kinds no rule of lrpilot was fitted on (``bench/heldout_tasks.py``):
digits-cnn-nobn/SGD (no normalization), gru-mnist1d/AdamW (recurrent), tiny-lm/AdamW (a
byte-level causal transformer on Python standard-library source; scored by validation
loss).

Columns, each mean ± std over seeds 0-4 with its compute multiple (samples through forward
and backward / (epochs x training-set size)):

* grid oracle: the best (schedule, LR) of the half-decade grid of one-cycle and
  warmup+cosine (the recorded rows: ``finder_quality_runs.json``, 5 seeds, plus the
  quarter-decade points around each best; the new rows: ``autopilot_panel_grid*.json``,
  half-decade only), trained by ``finder_quality.train_once`` at seeds 0-4 on every row (the
  new rows' grids ran seeds 0-2 until the fifteenth session); its cost is the grid's runs;
* oracle, seed held out: per seed, the grid point with the best mean over the other seeds;
* default: AdamW 1e-3 / SGD 0.1, one epoch of warmup then cosine (``lrpilot fit``);
* lrpilot find: today's finder rule (``finder_quality.finder_curve``, the run's seed), the
  one-cycle suggestion trained with ``lrpilot fit``; a sweep with no suggestion leaves the
  user at the default;
* torch-lr-finder + one-cycle: its range test (100 steps of batch 64 to LR 10), the
  steepest-slope suggestion, ``lrpilot fit`` with one-cycle;
* Prodigy + cosine, Schedule-Free (SGD or AdamW at the library's default LR, 5% warmup),
  D-Adaptation + cosine: their optimizers injected into lrpilot's training engine
  (``Engine(optimizer_factory=...)``), no guard;
* lrpilot auto: ``lrpilot.auto(..., budget=1.3)`` (the method's version is
  ``METHOD_VERSION["auto"]``; every version's runs stay in the cache under their key, and
  ``bench/results/autopilot_research.md`` compares them);
* auto - oracle: the mean of auto's score minus the oracle point's score at the same seed,
  with the standard error of that mean (:func:`paired_gap`): how far the gap is from the
  target's 0.5 point in units of its own noise.

Stages: ``grid`` (the new rows' grids), ``run --methods ... --rows ...`` (cached in
``results/autopilot_panel_runs*.json``, one file per method so methods run in parallel
processes), ``table`` (prints the table and writes ``results/autopilot_panel_table.md``).
Cost on the shared 2-core CPU (one thread per process, 3-6 processes at once): 30-120 s per
15-epoch run, about 4 hours of CPU for the whole panel.

    OMP_NUM_THREADS=1 python bench/autopilot_panel.py run --methods auto --rows mnist1d-cnn/sgd
    python bench/autopilot_panel.py table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import finder_quality as fq  # noqa: E402

RESULTS = BENCH / "results"
GRID_CACHE = RESULTS / "autopilot_panel_grid.json"
EPOCHS = 15
#: the methods' seeds (the table of record)
SEEDS = (0, 1, 2, 3, 4)
#: the new rows' grid seeds (0-2 until the fifteenth session; now the table's seeds, so that
#: the oracle and every method are means over the same seeds)
NEW_GRID_SEEDS = SEEDS

#: the rows of the panel: name -> task spec, optimizer, and where its grid lives
ROWS: dict[str, dict] = {
    "digits-cnn/sgd": {"row": "digits-cnn"},
    "mnist1d-cnn/sgd": {"row": "mnist1d-cnn"},
    "mnist1d-mlp/adamw": {"row": "mnist1d-mlp"},
    "mnist1d-cnn/adamw": {"row": "mnist1d-cnn/adamw"},
    "mnist1d-mlp/sgd": {"row": "mnist1d-mlp/sgd"},
    "digits-mlp/sgd": {"row": "digits-mlp"},
    "synth-mlp-ln/adamw": {"row": "synth-mlp-ln/adamw"},
    # new held-out kinds (bench/heldout_tasks.py), kept out of every fit
    "digits-cnn-nobn/sgd": {"row": "digits-cnn-nobn", "new": True},
    "gru-mnist1d/adamw": {"row": "gru-mnist1d", "new": True},
    "tiny-lm/adamw": {"row": "tiny-lm", "new": True},
}
NEW_SETUPS = {
    "digits-cnn-nobn": {
        "task": "heldout_tasks:digits_cnn_nobn",
        "optimizer": "sgd",
        "grid": fq._SGD_GRID,
        "calib": False,
    },
    "gru-mnist1d": {
        "task": "heldout_tasks:gru_mnist1d",
        "optimizer": "adamw",
        "grid": fq._ADAM_GRID,
        "calib": False,
    },
    "tiny-lm": {
        "task": "heldout_tasks:tiny_lm",
        "optimizer": "adamw",
        "grid": fq._ADAM_GRID,
        "calib": False,
    },
}
fq.TASK_SETUPS.update(NEW_SETUPS)


class _ReadOnly(fq.RunCache):
    """A run cache that never trains: a missing run reads as nan (the table stage)."""

    def get(self, *args) -> float | None:
        value = super().get(*args)
        return math.nan if value is None else value

    def put(self, value: float, *args) -> None:
        raise AssertionError("the table stage never trains")


def grid_of(row: str, note=None, train: bool = True) -> dict[tuple[str, float], list[float]]:
    """Per (schedule, LR): the scores of each seed on the half-decade grid (extended while
    the best is on an edge), for the recorded rows plus the quarter-decade points around
    each schedule's best."""
    name = ROWS[row]["row"]
    new = ROWS[row].get("new", False)
    # the LM's grid has its own file (it ran in a process of its own beside the others)
    path = GRID_CACHE.with_name("autopilot_panel_grid_lm.json") if name == "tiny-lm" else GRID_CACHE
    cache = (fq.RunCache if train else _ReadOnly)(path if new else fq.RESULTS)
    seeds = list(NEW_GRID_SEEDS) if new else list(range(fq.DEFAULT_SEEDS))
    out = {}
    for schedule in fq.SCHEDULES:
        means = fq.grid_search(cache, name, schedule, seeds, EPOCHS, note)
        # the new rows: the protocol's half-decade grid (a quarter-decade refinement costs
        # 12 runs more per row than this shared CPU allows); the recorded rows keep theirs
        fine = means if new else fq.refine(cache, name, schedule, seeds, EPOCHS, means, note)
        for lr in fine:
            out[(schedule, lr)] = [cache.get(name, schedule, lr, s, EPOCHS) for s in seeds]
    return out


RUNS_CACHE = RESULTS / "autopilot_panel_runs.json"
#: bump when a method's protocol changes (cached results of older versions are ignored)
METHOD_VERSION = {
    "default": "d1",
    "finder": "f1",
    "oracle_fit": "o1",
    # a15 (of record): a14, and the first sweep alone decides whether there is a prior
    # (the later ones only refine its suggestion; no panel run's branch differs from a14);
    # a14: a13 with the sweeps' floor at 0 (they may take the guard's reserve):
    # at budget 1.3 every 15-epoch plan here takes three sweeps (tiny-lm: one);
    # a13: a12, and a budget beyond the longest plan buys three finder sweeps
    # in their own data orders (their median is the prior); at budget 1.3 every plan
    # affords one, so a13 repeats a12 bit for bit on this panel;
    # a12: a11 with anchored_peak's "decisively worse" a gap above half the
    # better candidate's progress from the start, not a loss ratio above 1.5 (the ratio
    # fired near the loss floor: 0.12 against 0.08 from 2.3);
    # a11: a10 with the blend's probe bias half a decade for Adam (a quarter
    # for SGD, as before: SGD runs and Adam runs without a finder suggestion are a10's);
    # a10: a9, and the final run's guard replays only what the budget left
    # (guard.max_replay; snapshot_every sized for two rescues); without a finder suggestion
    # the first round spans 1.5 decades at any size (4 candidates: a9's ladder);
    # a9: a8b, and the one-cycle shape cycles the momentum (SGD momentum /
    # Adam beta1 0.95 -> 0.85 -> 0.95, as the grid's OneCycleLR) from step 0, probes
    # included; a9f: the same cycle from the decision on only (the probes step under the
    # optimizer's own momentum, as in a8b); a8b: a8 with 3 candidates around a finder suggestion (4 without one), holds back to
    # 6-8%; a8: a7m, and the final run trains on the decision split too from the first
    # epoch boundary after the decision (the plan's holds shrink to pay for it); a7m: the a7
    # method on main after autofeat's merge (fit's prepare seam, the guard's spike-scale
    # floor); a7: the same method before that rebase
    # a17 (measured, not adopted; its runs stay in the cache): the shape rule picked
    # warmup-stable-decay, probes held at the peak with only the horizon's part of the
    # probe bias (bench/autopilot_shapes.py). a18, the code now: a15's one-cycle rule,
    # and probes held at the peak (a fixed wsd or cosine, a late decision's cosine) take
    # only the horizon's part of the bias. Every panel decision is one-cycle, whose probes
    # hold below the peak and take the whole bias as in a15: a18's panel runs are a15's
    # (checked: bench/autopilot_panel.py run --methods auto_a18_check)
    "auto": "a15",
    "auto_a18_check": "a18",
    "auto_progress_tie": "a2",
    "auto_rec": "a1",
    # the schedule shape fixed by the user (cosine, or warmup-stable-decay with its linear
    # decay over the last 20%): the shape rule's alternatives. a16: the probes, held at the
    # peak itself for these shapes, take no probe bias (probe_bias(held_at_peak=True));
    # a15: the one-cycle bias applied to them too (picks about 2x lower); a17: at the
    # peak, Adam keeps the horizon's quarter decade of its half (SGD: a16's runs)
    "auto_cosine": "a17",
    "auto_wsd": "a17",
    "lr_finder": "l1",
    "prodigy": "p1",
    "schedulefree": "s1",
    "dadapt": "da1",
}


def setup(row: str) -> dict:
    return fq.TASK_SETUPS[ROWS[row]["row"]]


def optimizer_config(row: str, lr: float) -> dict:
    """The optimizer of the grid (``finder_quality.make_optimizer``) as a fit config."""
    if setup(row)["optimizer"] == "sgd":
        return {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}
    return {"name": "adamw", "lr": lr, "weight_decay": 1e-2}


def schedule_config(schedule: str, peak: float) -> dict:
    """The grid's schedules (``finder_quality.make_scheduler``) as fit configs."""
    if schedule == "one_cycle":
        return {"name": "one_cycle", "max_lr": peak}
    return {"name": "cosine", "lr": peak, "warmup": {"epochs": 1}}


def score_of(row: str, summary: dict) -> float:
    """Final validation accuracy in percent, or minus the final validation loss (tasks
    without an accuracy metric), as the grid scores runs: higher is better."""
    final = summary.get("final") or {}
    if "val_accuracy" in final:
        return 100.0 * final["val_accuracy"]
    loss = final.get("val_loss", math.nan)
    return -loss if math.isfinite(loss) else -math.inf


def fit_score(row: str, seed: int, optimizer: dict, schedule: dict) -> dict:
    """One ``lrpilot fit`` run of the row's task (15 epochs, batch 64), in a temporary run
    directory; a run the guard aborts scores as diverged."""
    from lrpilot import TrainingAborted, fit

    config = {
        "task": setup(row)["task"],
        "epochs": EPOCHS,
        "batch_size": fq.BATCH,
        "seed": seed,
        "optimizer": optimizer,
        "schedule": schedule,
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = fit(config, Path(tmp) / "run", progress="none")
        except TrainingAborted as exc:
            return {"score": _diverged_score(row), "note": f"aborted: {exc}"[:200]}
    out = {"score": score_of(row, result.summary), "rescues": result.summary["guard"]["rescues"]}
    if not math.isfinite(out["score"]):
        out["score"] = _diverged_score(row)
    return out


def _diverged_score(row: str) -> float:
    """The grid's score of a diverged run: 10 (chance, 10 classes) or minus ln(128)."""
    return -math.log(128) if loss_scored(row) else 10.0


class Runs:
    """The panel's cache of method runs: ``method|row|seed`` -> result dict, one JSON file
    per method (``autopilot_panel_runs_<method>.json``; the first methods share
    ``autopilot_panel_runs.json``), so methods can run in parallel processes."""

    SHARED = ("default", "finder", "oracle_fit")

    def path(self, method: str) -> Path:
        if method in self.SHARED:
            return RUNS_CACHE
        return RUNS_CACHE.with_name(f"autopilot_panel_runs_{method}.json")

    def _load(self, method: str) -> dict:
        path = self.path(method)
        return json.loads(path.read_text()) if path.is_file() else {}

    def key(self, method: str, row: str, seed: int, version: str | None = None) -> str:
        version = version or METHOD_VERSION[method]
        return f"{version}|{method}|{row}|{seed}|e{EPOCHS}|b{fq.BATCH}"

    def get(self, method: str, row: str, seed: int, version: str | None = None) -> dict | None:
        """A cached run (``version``: an earlier version's, default the current one)."""
        return self._load(method).get(self.key(method, row, seed, version))

    def put(self, method: str, row: str, seed: int, value: dict) -> None:
        """Add one run (processes running the same method share the file: :func:`locked_put`)."""
        locked_put(self.path(method), self.key(method, row, seed), value)


def locked_put(path: Path, key: str, value: dict | float, indent: int | None = None) -> None:
    """Add ``key: value`` to the JSON cache ``path`` under an exclusive lock (processes
    share the file): re-read, add, write to a temporary file of this process, rename.
    ``indent``: ``json.dumps``'s (0 writes ``finder_quality.RunCache``'s format)."""
    import fcntl

    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {}  # others may have added
        data[key] = value
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=indent, sort_keys=True))
        os.replace(tmp, path)


def run_default(row: str, seed: int) -> dict:
    """The calibrated default: SGD 0.1 / AdamW 1e-3, warmup (1 epoch) + cosine."""
    lr = 0.1 if setup(row)["optimizer"] == "sgd" else 1e-3
    out = fit_score(row, seed, optimizer_config(row, lr), schedule_config("cosine", lr))
    return {**out, "compute": 1.0, "lr": lr, "schedule": "cosine"}


def run_finder(row: str, seed: int) -> dict:
    """Today's ``lrpilot find`` rule (half-epoch sweep at batch 8, seed = the run's seed,
    the one-cycle suggestion) and ``lrpilot fit`` with one-cycle at the suggestion. A sweep
    without a suggestion (``noisy``...) leaves the user at the calibrated default."""
    from lrpilot.finder.policy import suggest_peak_lr
    from lrpilot.finder.protocol import probe_plan

    curves = json.loads(fq.CURVES.read_text()) if fq.CURVES.is_file() else {}
    name = ROWS[row]["row"]
    curve = fq.finder_curve(curves, name, seed)
    analysis = fq.analysis_of(curve)
    n_train = curve["train_size"]
    ratio = fq.BATCH / probe_plan(n_train, fq.BATCH).batch_size
    compute = 1.0 + curve["samples"] / (EPOCHS * n_train)
    if analysis.verdict != "ok":
        out = run_default(row, seed)
        return {**out, "compute": compute, "verdict": analysis.verdict, "fallback": "default"}
    lr = suggest_peak_lr(analysis.lr_unstable, "one_cycle", fq.family(name), ratio)
    out = fit_score(row, seed, optimizer_config(row, lr), schedule_config("one_cycle", lr))
    return {**out, "compute": compute, "lr": lr, "verdict": "ok", "schedule": "one_cycle"}


def run_oracle_fit(row: str, seed: int) -> dict:
    """The grid's best (schedule, LR) trained with ``lrpilot fit``: how far fit's runs are
    from the grid's lean loop (a check of the comparison, not a method)."""
    grid = grid_of(row)
    sched, lr = max(grid, key=lambda k: statistics.fmean(grid[k]))
    out = fit_score(row, seed, optimizer_config(row, lr), schedule_config(sched, lr))
    return {**out, "compute": 1.0, "lr": lr, "schedule": sched}


def run_auto(row: str, seed: int, shape: str | None = None) -> dict:
    """``lrpilot.auto`` with the row's optimizer settings, 15 epochs, batch 64, budget 1.3;
    ``shape``: a schedule shape fixed by the user (``auto_cosine``, ``auto_wsd``: what the
    autopilot gives when that shape is taken instead of its rule's choice)."""
    import lrpilot
    from lrpilot import TrainingAborted

    opt = optimizer_config(row, 1.0)
    opt.pop("lr")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = lrpilot.auto(
                setup(row)["task"],
                optimizer=opt,
                epochs=EPOCHS,
                batch_size=fq.BATCH,
                budget=1.3,
                seed=seed,
                schedule=shape,
                out_dir=Path(tmp) / "run",
                progress="none",
            )
        except TrainingAborted as exc:  # the final run's guard gave up: a failed run
            info = json.loads((Path(tmp) / "run" / "autopilot.json").read_text())
            return {
                "score": _diverged_score(row),
                "compute": math.nan,
                "lr": next(d["value"] for d in info["decisions"] if d["name"] == "peak_lr"),
                "note": f"aborted: {exc}"[:300],
            }
        info = json.loads((Path(tmp) / "run" / "autopilot.json").read_text())
    ap = result.summary["autopilot"]
    score = score_of(row, result.summary)
    probes = [
        {
            k: c[k]
            for k in ("name", "lr", "round", "score", "hold", "cooldown", "diverged", "samples")
        }
        | {"losses": [None if v is None else round(v, 4) for v in c["losses"]]}
        for c in info["candidates"]
    ]
    return {
        "score": score if math.isfinite(score) else _diverged_score(row),
        "compute": ap["compute_multiple"],
        "lr": ap["decisions"].get("peak_lr"),
        "schedule": ap["decisions"].get("schedule"),
        "decisions": ap["decisions"],
        "rescues": result.summary["guard"]["rescues"],
        "probes": probes,
        "prior": info["prior"],
    }


def _peer_engine(row: str, seed: int, factory, schedule: dict):  # type: ignore[no-untyped-def]
    """The training engine of ``lrpilot fit`` with a peer's optimizer injected
    (``Engine(optimizer_factory=...)``) and ``schedule`` driving its param groups' lr."""
    from lrpilot.tasks import get_task
    from lrpilot.train import Engine, parse_config

    task = get_task(setup(row)["task"])
    cfg = parse_config(
        {
            "task": setup(row)["task"],
            "epochs": EPOCHS,
            "batch_size": fq.BATCH,
            "seed": seed,
            "optimizer": optimizer_config(row, 1.0),
            "schedule": schedule,
        },
        task=task,
    )
    return Engine(cfg, task, optimizer_factory=factory)


def _peer_run(row: str, seed: int, factory, schedule: dict, schedule_free: bool = False) -> dict:
    """Train all steps on the engine (no guard: the peers run as published), evaluate.
    Schedule-Free evaluates at its averaged weights (``optimizer.eval()``), with
    BatchNorm statistics recomputed at those weights on 50 training batches, as its
    documentation says."""
    import torch

    engine = _peer_engine(row, seed, factory, schedule)
    if schedule_free:
        engine.optimizer.train()
    outs = engine.run_steps(engine.total_steps)
    if schedule_free:
        engine.optimizer.eval()
        if any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in engine.model.modules()
        ):
            x, _ = engine.task.train_set.tensors
            engine.model.train()
            with torch.no_grad():
                for i in range(50):
                    engine.model(x[(i * fq.BATCH) % len(x) :][: fq.BATCH])
    metrics = engine.evaluate()
    if "val_accuracy" in metrics:
        score = 100.0 * metrics["val_accuracy"]
    else:
        score = -metrics["val_loss"]
    if not math.isfinite(score) or not all(math.isfinite(o.loss) for o in outs[-5:]):
        score = _diverged_score(row)
    return {"score": score, "compute": 1.0}


def _wd(row: str) -> float:
    return 5e-4 if setup(row)["optimizer"] == "sgd" else 1e-2


def run_prodigy(row: str, seed: int) -> dict:
    """Prodigy (lr 1, the task's weight decay) with cosine to 0 over the run."""
    from prodigyopt import Prodigy

    out = _peer_run(
        row,
        seed,
        lambda groups: Prodigy(groups, lr=1.0, weight_decay=_wd(row)),
        {"name": "cosine", "lr": 1.0},
    )
    return {**out, "schedule": "cosine"}


def run_dadapt(row: str, seed: int) -> dict:
    """D-Adaptation (SGD rows: DAdaptSGD with momentum 0.9; AdamW rows: DAdaptAdam,
    decoupled weight decay), lr 1, cosine to 0."""
    import dadaptation

    if setup(row)["optimizer"] == "sgd":

        def factory(groups):  # type: ignore[no-untyped-def]
            return dadaptation.DAdaptSGD(groups, lr=1.0, momentum=0.9, weight_decay=_wd(row))
    else:

        def factory(groups):  # type: ignore[no-untyped-def]
            return dadaptation.DAdaptAdam(groups, lr=1.0, weight_decay=_wd(row), decouple=True)

    out = _peer_run(row, seed, factory, {"name": "cosine", "lr": 1.0})
    return {**out, "schedule": "cosine"}


def run_schedulefree(row: str, seed: int) -> dict:
    """Schedule-Free SGD (momentum 0.9) or AdamW at the library's default LR (1.0 / 0.0025)
    with its own linear warmup over 5% of the steps; the engine's schedule is constant."""
    import schedulefree

    from lrpilot.tasks import get_task

    n = len(get_task(setup(row)["task"]).train_set)
    warm = round(0.05 * EPOCHS * math.ceil(n / fq.BATCH))
    if setup(row)["optimizer"] == "sgd":
        lr = 1.0

        def factory(groups):  # type: ignore[no-untyped-def]
            return schedulefree.SGDScheduleFree(
                groups, lr=lr, momentum=0.9, weight_decay=_wd(row), warmup_steps=warm
            )
    else:
        lr = 0.0025

        def factory(groups):  # type: ignore[no-untyped-def]
            return schedulefree.AdamWScheduleFree(
                groups, lr=lr, weight_decay=_wd(row), warmup_steps=warm
            )

    out = _peer_run(row, seed, factory, {"name": "constant", "lr": lr}, schedule_free=True)
    return {**out, "lr": lr, "schedule": "schedule-free"}


def run_lr_finder(row: str, seed: int) -> dict:
    """torch-lr-finder's range test (batch 64, 100 steps to LR 10, its own loop as the
    library ships it), its steepest-slope suggestion (``plot(suggest_lr=True)``: skip 10
    at the start, 5 at the end), then ``lrpilot fit`` with one-cycle at that peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torch.utils.data import DataLoader
    from torch_lr_finder import LRFinder

    from lrpilot.tasks import get_task

    task = get_task(setup(row)["task"])
    torch.manual_seed(seed)
    model = task.build_model()
    opt = fq.make_optimizer(setup(row)["optimizer"], model.parameters(), 1e-7)
    loader = DataLoader(
        task.train_set,
        batch_size=fq.BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    finder = LRFinder(model, opt, task.loss_fn, device="cpu")
    finder.range_test(loader, end_lr=10, num_iter=100)
    fig, ax = plt.subplots()
    try:
        _, lr = finder.plot(ax=ax, suggest_lr=True)
    finally:
        plt.close(fig)
    n = len(task.train_set)
    compute = 1.0 + 100 * fq.BATCH / (EPOCHS * n)
    if lr is None or not math.isfinite(lr) or lr <= 0:
        return {"score": _diverged_score(row), "compute": compute, "lr": None}
    out = fit_score(row, seed, optimizer_config(row, lr), schedule_config("one_cycle", lr))
    return {**out, "compute": compute, "lr": lr, "schedule": "one_cycle"}


METHODS = {
    "default": run_default,
    "finder": run_finder,
    "oracle_fit": run_oracle_fit,
    "auto": run_auto,
    "auto_rec": run_auto,
    "auto_a18_check": run_auto,
    "auto_cosine": lambda row, seed: run_auto(row, seed, "cosine"),
    "auto_wsd": lambda row, seed: run_auto(row, seed, "wsd"),
    "lr_finder": run_lr_finder,
    "prodigy": run_prodigy,
    "schedulefree": run_schedulefree,
    "dadapt": run_dadapt,
}


def run_method(runs: Runs, method: str, row: str, seed: int) -> dict:
    got = runs.get(method, row, seed)
    if got is None:
        print(f"run {method} {row} seed={seed}", flush=True)
        got = METHODS[method](row, seed)
        runs.put(method, row, seed, got)
    return got


COLUMNS = (
    ("oracle", "grid oracle"),
    ("oracle_held_out", "oracle, seed held out"),
    ("default", "default"),
    ("finder", "lrpilot find"),
    ("lr_finder", "torch-lr-finder+1cycle"),
    ("prodigy", "Prodigy+cos"),
    ("schedulefree", "Schedule-Free"),
    ("dadapt", "D-Adapt+cos"),
    ("auto", "lrpilot auto"),
)
#: the columns computed from the grid itself, not from runs of a method
GRID_COLUMNS = ("oracle", "oracle_held_out")
PEERS = ("lr_finder", "prodigy", "schedulefree", "dadapt")


def loss_scored(row: str) -> bool:
    """Whether ``row`` is scored by minus its validation loss (the LM row), not accuracy."""
    return setup(row)["task"] == "heldout_tasks:tiny_lm"


def gap_text(row: str, method: list[float], reference: list[float]) -> str:
    """:func:`paired_gap` as a table cell: accuracy points (2 decimals); the LM row in
    validation loss (3 decimals), so a positive gap is worse there."""
    mean, se = paired_gap(method, reference)
    return f"{0.0 - mean:+.3f} ± {se:.3f}" if loss_scored(row) else f"{mean:+.2f} ± {se:.2f}"


def _fmt(row: str, vals: list[float]) -> str:
    """Accuracy rows: percent; the LM row: validation loss (the score is minus it)."""
    lm = loss_scored(row)
    xs = [-v for v in vals] if lm else vals
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{3 if lm else 1}f}±{sd:.{3 if lm else 1}f}"


def collect(rows: list[str]) -> dict:
    """Per row and column: the per-seed scores, the mean compute, extra notes."""
    runs = Runs()
    out: dict = {}
    for row in rows:
        grid = grid_of(row, train=False)
        grid = {k: v for k, v in grid.items() if all(math.isfinite(x) for x in v)}
        if not grid:
            continue
        best = max(grid, key=lambda k: statistics.fmean(grid[k]))
        n_seeds = len(grid[best])
        partial = ROWS[row].get("new", False) and len(grid) < 10
        cells = {
            "oracle": {
                "scores": grid[best],
                "compute": f"x{len(grid) * n_seeds} runs" + (", PARTIAL grid" if partial else ""),
                "note": f"{best[0]} {best[1]:.3g}",
                "partial": partial,
            }
        }
        cells["oracle_held_out"] = {
            "scores": held_out_oracle(grid),
            "compute": "the same grid",
        }
        for method, _ in (c for c in COLUMNS if c[0] not in GRID_COLUMNS):
            got = [runs.get(method, row, s) for s in SEEDS]
            got = [g for g in got if g is not None]
            if not got:
                continue
            finite = [g["compute"] for g in got if math.isfinite(g["compute"])]
            cells[method] = {
                "scores": [g["score"] for g in got],
                "compute": statistics.fmean(finite) if finite else math.nan,
                "aborted": sum("aborted" in g.get("note", "") for g in got),
                "lr": [g.get("lr") for g in got],
                "extra": [
                    {k: v for k, v in g.items() if k in ("verdict", "schedule", "rescues")}
                    for g in got
                ],
            }
        out[row] = cells
    return out


def held_out_oracle(grid: dict[tuple[str, float], list[float]]) -> list[float]:
    """The grid oracle without its selection bias: for each seed, the score at that seed of
    the (schedule, LR) with the best mean over the *other* seeds (leave one seed out). The
    plain oracle is the best of 14-16 noisy means, so it is optimistic by about the spread
    of its near-ties; this column says by how much.

    >>> held_out_oracle({("a", 1.0): [1.0, 0.0, 0.0], ("b", 2.0): [0.0, 0.5, 0.5]})
    [0.0, 0.0, 0.0]
    """
    seeds = len(next(iter(grid.values())))
    out = []
    for s in range(seeds):
        best = max(grid, key=lambda k: statistics.fmean(grid[k][:s] + grid[k][s + 1 :]))
        out.append(grid[best][s])
    return out


def paired_gap(method: list[float], oracle: list[float]) -> tuple[float, float]:
    """``(mean, se)`` of ``method[s] - oracle[s]``, two lists of scores at the same seeds in
    the same order: a seed fixes the initialisation and the data order of both runs, so
    pairing removes part of the seed-to-seed spread.

    ``se = stdev(d) / sqrt(n)`` (nan below two pairs).

    >>> paired_gap([1.0, 2.0, 3.0], [1.5, 2.5, 3.0])
    (-0.3333333333333333, 0.16666666666666666)
    """
    d = [m - o for m, o in zip(method, oracle, strict=True)]
    if not d:
        return math.nan, math.nan
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se


def _gap_cell(row: str, cells: dict) -> str:
    """The auto - oracle column: accuracy points (the LM row: its validation loss, so a
    positive gap is worse there)."""
    # pairs by position: only when both hold every seed of the table, in its order
    if "auto" not in cells or len(cells["auto"]["scores"]) != len(SEEDS):
        return "-"
    if len(cells["oracle"]["scores"]) != len(SEEDS):
        return "-"
    return gap_text(row, cells["auto"]["scores"], cells["oracle"]["scores"])


def targets(row: str, cells: dict) -> str:
    """The issue's targets for the auto column: >= oracle - 0.5 point (the LM row: loss
    within 1% of the oracle's), >= every peer's mean, compute <= 1.3."""
    if "auto" not in cells or len(cells["auto"]["scores"]) < len(SEEDS):
        return "auto not run (all seeds)"
    if cells["oracle"].get("partial"):
        return "grid incomplete"
    auto = statistics.fmean(cells["auto"]["scores"])
    oracle = statistics.fmean(cells["oracle"]["scores"])
    lm = loss_scored(row)
    tol = 0.01 * abs(oracle) if lm else 0.5
    miss = []
    if auto < oracle - tol:
        miss.append(f"oracle by {oracle - auto:.3g}")
    for p in PEERS:
        if p in cells and auto < statistics.fmean(cells[p]["scores"]):
            miss.append(p)
    if not cells["auto"]["compute"] <= 1.3 + 1e-9:
        miss.append("compute")
    return "ok" if not miss else "MISS " + ", ".join(miss)


def print_table(rows: list[str]) -> str:
    data = collect(rows)
    head = ["row"] + [name for _, name in COLUMNS]
    head += ["auto - oracle (paired by seed, ± se)", "auto: LR / shape", "targets"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row, cells in data.items():
        line = [row]
        for method, _ in COLUMNS:
            c = cells.get(method)
            if c is None:
                line.append("-")
                continue
            comp = c["compute"] if isinstance(c["compute"], str) else f"{c['compute']:.2f}x"
            n = len(c["scores"])
            extra = (f", n={n}" if n != len(SEEDS) and method != "oracle" else "") + (
                f", {c['aborted']} aborted" if c.get("aborted") else ""
            )
            extra = extra if method != "oracle_held_out" else ""
            line.append(f"{_fmt(row, c['scores'])} ({comp}{extra})")
        line.append(_gap_cell(row, cells))
        a = cells.get("auto")
        line.append(
            "-"
            if a is None
            else ", ".join(
                f"{lr:.3g}/{e.get('schedule', '?')}"
                for lr, e in zip(a["lr"], a["extra"], strict=True)
                if lr is not None
            )
        )
        line.append(targets(row, cells))
        lines.append(" | ".join(line))
    text = "\n".join(lines)
    notes = (
        f"\n{EPOCHS} epochs, batch {fq.BATCH}, seeds {list(SEEDS)} (every column, the grids "
        "included); "
        "cells: mean±std over seeds (compute multiple of one run); accuracy in % (tiny-lm: "
        "validation loss, nats/byte, lower is better); oracle: best (schedule, LR) of the "
        "half-decade grid (+ quarter-decade refinement on the recorded rows), its cost in runs; "
        "oracle, seed held out: per seed, the grid point with the best mean over the other "
        "seeds, scored at that seed (the plain oracle's selection bias is the difference; "
        "the targets are against the plain oracle); auto - oracle: the mean over seeds of "
        "auto's score minus the oracle point's at the same seed, ± its standard error "
        "(tiny-lm: in validation loss, positive is worse)"
    )
    return text + notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["grid", "run", "table"])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="run: seeds (default: the table's)"
    )
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if args.stage == "table":
        text = print_table(rows)
        print(text)
        (RESULTS / "autopilot_panel_table.md").write_text(text + "\n")
        return 0
    if args.stage == "run":
        runs = Runs()
        for row in rows:
            for method in args.methods.split(","):
                for seed in (int(x) for x in args.seeds.split(",") if x):
                    run_method(runs, method, row, seed)
        return 0
    for row in rows:
        grid = grid_of(row, note=lambda msg: print(msg, flush=True))
        best = max(grid, key=lambda k: statistics.fmean(grid[k]))
        vals = grid[best]
        print(
            f"{row}: best {best[0]} lr={best[1]:.3g} {statistics.fmean(vals):.3f} "
            f"± {statistics.stdev(vals):.3f} ({len(grid)} points x {len(vals)} seeds)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
