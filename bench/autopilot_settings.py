"""Autopilot away from the panel's protocol: other epochs, batch sizes and tasks.

The panel (``autopilot_panel.py``) runs every row at 15 epochs and batch 64, where the
method's constants were chosen. Here each setting changes the run length and the batch
(63 to 2,820 steps in all), on built-in tasks and on the held-out kinds of
``heldout_tasks.py``; none of these settings was looked at while the method was made.

Settings (optimizers as on the panel: SGD momentum 0.9, weight decay 5e-4; AdamW weight
decay 1e-2):

* A: mnist1d-cnn / SGD, 4 epochs, batch 256 (63 steps)
* B: mnist1d-mlp / AdamW, 5 epochs, batch 128
* C: digits-cnn / SGD, 8 epochs, batch 32
* D: gru-mnist1d / AdamW, 6 epochs, batch 128
* E: tiny-lm / AdamW, 5 epochs, batch 32 (validation loss, lower is better)
* F: digits-cnn-nobn / SGD, 30 epochs, batch 128
* G: synth-mlp-ln / AdamW, 3 epochs, batch 256
* H: mnist1d-cnn / AdamW, 10 epochs, batch 512
* I: friedman-mlp / AdamW, 10 epochs, batch 64 (regression: validation MSE, lower is better)
* J: friedman-mlp / SGD, 20 epochs, batch 32
* K: deep-mlp-digits / AdamW, 10 epochs, batch 64 (a 9-layer plain ReLU MLP)
* L: transformer-mnist1d / AdamW, 8 epochs, batch 64 (attention)
* M: diabetes-bn / AdamW, 20 epochs, batch 32 (350 samples; validation Huber loss)
* N: lstm-lm / AdamW, 10 epochs, batch 32 (a recurrent LM; validation loss)

K-N were added in the thirteenth session, four kinds no autopilot constant was chosen on.

Columns: the grid (one-cycle and warmup (1 epoch) + cosine at half-decade peaks, SGD
0.01-3.16, AdamW 3e-4-0.1; its best (schedule, LR) by mean), the calibrated default (SGD 0.1
/ AdamW 1e-3, warmup + cosine) and ``lrpilot auto`` (budget 1.3), each at seeds 0 and 1, by
``lrpilot fit`` / ``lrpilot.auto`` on this machine's CPU (one thread per process). Cost:
about 40 minutes of CPU for the grids, 2 minutes for the auto runs.

    OMP_NUM_THREADS=1 python bench/autopilot_settings.py run --settings ABCDEFGH --methods grid,default,auto
    python bench/autopilot_settings.py table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

# the panel's import sets one thread per process (OMP_NUM_THREADS before torch loads)
import autopilot_panel as P  # noqa: E402

CACHE = P.RESULTS / "autopilot_settings_runs.json"
TABLE = P.RESULTS / "autopilot_settings_table.md"
SEEDS = (0, 1)
#: the autopilot's version (the panel's ``METHOD_VERSION["auto"]``): its runs are cached
#: under it; the grid and the default do not change with it
AUTO_VERSION = "a18"  # the code now; the panel's "auto" key keeps a15 (the same runs there)
#: the version before it, shown beside it (a15: the one-cycle shape rule)
PREVIOUS_VERSION = "a15"

SETTINGS: dict[str, dict] = {
    "A": {"task": "mnist1d-cnn", "opt": "sgd", "epochs": 4, "batch": 256},
    "B": {"task": "mnist1d-mlp", "opt": "adamw", "epochs": 5, "batch": 128},
    "C": {"task": "digits-cnn", "opt": "sgd", "epochs": 8, "batch": 32},
    "D": {"task": "heldout_tasks:gru_mnist1d", "opt": "adamw", "epochs": 6, "batch": 128},
    "E": {"task": "heldout_tasks:tiny_lm", "opt": "adamw", "epochs": 5, "batch": 32},
    "F": {"task": "heldout_tasks:digits_cnn_nobn", "opt": "sgd", "epochs": 30, "batch": 128},
    "G": {"task": "heldout_tasks:synth_mlp_ln", "opt": "adamw", "epochs": 3, "batch": 256},
    "H": {"task": "mnist1d-cnn", "opt": "adamw", "epochs": 10, "batch": 512},
    "I": {"task": "heldout_tasks:friedman_mlp", "opt": "adamw", "epochs": 10, "batch": 64},
    "J": {"task": "heldout_tasks:friedman_mlp", "opt": "sgd", "epochs": 20, "batch": 32},
    "K": {"task": "heldout_tasks:deep_mlp_digits", "opt": "adamw", "epochs": 10, "batch": 64},
    "L": {"task": "heldout_tasks:transformer_mnist1d", "opt": "adamw", "epochs": 8, "batch": 64},
    "M": {"task": "heldout_tasks:diabetes_bn", "opt": "adamw", "epochs": 20, "batch": 32},
    "N": {"task": "heldout_tasks:lstm_lm", "opt": "adamw", "epochs": 10, "batch": 32},
}
#: settings scored by a validation loss (lower is better): the table prints the loss
LOSS_SCORED = ("tiny_lm", "friedman_mlp", "diabetes_bn", "lstm_lm")
GRID_LRS = {
    "sgd": (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16),
    "adamw": (0.0003, 0.001, 0.00316, 0.01, 0.0316, 0.1),
}
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
SHAPES = ("one_cycle", "cosine")


def optimizer_config(kind: str, lr: float | None = None) -> dict:
    out: dict = (
        {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}
        if kind == "sgd"
        else {"name": "adamw", "weight_decay": 1e-2}
    )
    return out if lr is None else {**out, "lr": lr}


def _loss_scored(setting: dict) -> bool:
    return any(name in setting["task"] for name in LOSS_SCORED)


def _failed(setting: dict) -> float:
    return -99.0 if _loss_scored(setting) else 10.0


def _score(setting: dict, summary: dict) -> float:
    """The panel's score (accuracy in %, or minus the validation loss: higher is better);
    a run that ended non-finite scores as failed (:func:`_failed`)."""
    score = P.score_of(setting["task"], summary)
    return score if math.isfinite(score) else _failed(setting)


def run_fit(setting: dict, seed: int, lr: float, shape: str) -> dict:
    from lrpilot import TrainingAborted, fit

    schedule = (
        {"name": "one_cycle", "max_lr": lr}
        if shape == "one_cycle"
        else {"name": "cosine", "lr": lr, "warmup": {"epochs": 1}}
    )
    config = {
        "task": setting["task"],
        "epochs": setting["epochs"],
        "batch_size": setting["batch"],
        "seed": seed,
        "optimizer": optimizer_config(setting["opt"], lr),
        "schedule": schedule,
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = fit(config, Path(tmp) / "r", progress="none")
        except TrainingAborted:
            return {"score": _failed(setting), "aborted": True}
    return {"score": _score(setting, result.summary), "rescues": result.summary["guard"]["rescues"]}


def run_auto(setting: dict, seed: int) -> dict:
    import lrpilot
    from lrpilot import TrainingAborted

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r"
        try:
            result = lrpilot.auto(
                setting["task"], optimizer=optimizer_config(setting["opt"]),
                epochs=setting["epochs"], batch_size=setting["batch"], budget=1.3, seed=seed,
                out_dir=out, progress="none",
            )  # fmt: skip
        except TrainingAborted as exc:
            return {"score": _failed(setting), "aborted": str(exc)[:200]}
        info = json.loads((out / "autopilot.json").read_text())
    ap = result.summary["autopilot"]
    return {
        "score": _score(setting, result.summary),
        "compute": ap["compute_multiple"],
        "lr": ap["decisions"].get("peak_lr"),
        "rescues": result.summary["guard"]["rescues"],
        "prior": info["prior"].get("verdict"),
        "candidates": {c["name"]: [c["lr"], c["score"]] for c in info["candidates"]},
    }


def jobs(sid: str, methods: list[str]) -> list[tuple[str, object]]:
    s = SETTINGS[sid]
    out: list[tuple[str, object]] = []
    if "grid" in methods:
        for shape in SHAPES:
            for lr in GRID_LRS[s["opt"]]:
                name = f"{shape}@{lr:g}"
                out.append((name, lambda seed, lr=lr, shape=shape: run_fit(s, seed, lr, shape)))
    if "default" in methods:
        out.append(("default", lambda seed: run_fit(s, seed, DEFAULT_LR[s["opt"]], "cosine")))
    if "auto" in methods:
        out.append((f"auto-{AUTO_VERSION}", lambda seed: run_auto(s, seed)))
    return out


def load() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {}


def put(key: str, value: dict) -> None:
    P.locked_put(CACHE, key, value)


def run(settings: str, methods: list[str], seeds: tuple[int, ...]) -> None:
    for sid in settings:
        for name, fn in jobs(sid, methods):
            for seed in seeds:
                key = f"{sid}|{name}|{seed}"
                if key in load():
                    continue
                print(f"run {key}", flush=True)
                put(key, fn(seed))  # type: ignore[operator]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def table() -> str:
    data = load()
    lines = [
        f"setting | grid best (schedule@LR) | default | auto {PREVIOUS_VERSION} | lrpilot auto "
        "| auto - grid best (loss: share of the best loss; negative: worse) "
        "| auto: LR per seed | auto: compute",
        "--- | --- | --- | --- | --- | --- | --- | ---",
    ]
    for sid, s in SETTINGS.items():
        cells: dict[str, list[float]] = {}
        for key, value in data.items():
            k_sid, name, _seed = key.split("|")
            if k_sid == sid:
                cells.setdefault(name, []).append(value["score"])
        grid = {n: v for n, v in cells.items() if "@" in n and len(v) == len(SEEDS)}
        auto_key = f"auto-{AUTO_VERSION}"
        if not grid or auto_key not in cells:
            continue
        best = max(grid, key=lambda n: _mean(grid[n]))
        autos = [data[f"{sid}|{auto_key}|{seed}"] for seed in SEEDS]
        fmt = (lambda v: f"{-v:.3f}") if _loss_scored(s) else (lambda v: f"{v:.1f}")
        gap = _mean(cells[auto_key]) - _mean(grid[best])
        # a loss: the gap as a share of the grid's best loss (negative: auto's is higher)
        shortfall = f"{gap / -_mean(grid[best]):+.1%}" if _loss_scored(s) else f"{gap:+.2f}"
        lrs = ", ".join(f"{a['lr']:.3g}" if a.get("lr") else "-" for a in autos)
        lines.append(
            f"{sid}: {s['task'].split(':')[-1]}/{s['opt']}, {s['epochs']} epochs x batch "
            f"{s['batch']} | {fmt(_mean(grid[best]))} ({best}) | "
            f"{fmt(_mean(cells.get('default', [math.nan])))} | "
            f"{fmt(_mean(cells.get(f'auto-{PREVIOUS_VERSION}', [math.nan])))} | "
            f"{fmt(_mean(cells[auto_key]))} | "
            f"{shortfall} | {lrs} | {max(a.get('compute', math.nan) for a in autos):.3f}"
        )
    lines.append(
        f"seeds {list(SEEDS)} (each cell a mean); accuracy in % (tiny-lm, lstm-lm: validation "
        "loss, nats/byte; friedman-mlp: validation MSE; diabetes-bn: validation Huber loss; "
        "lower is better); grid: one-cycle and warmup+cosine at half-decade peaks, "
        f"{len(SHAPES) * 6} runs per seed; auto: version {AUTO_VERSION}, budget 1.3, "
        "compute: the largest multiple of the seeds"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("run", "table"))
    parser.add_argument("--settings", default="".join(SETTINGS))
    parser.add_argument("--methods", default="grid,default,auto")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    args = parser.parse_args(argv)
    if args.stage == "run":
        bad = sorted(set(args.settings) - set(SETTINGS))
        if bad:
            parser.error(f"unknown settings {bad}; valid: {', '.join(SETTINGS)}")
        seeds = tuple(int(x) for x in args.seeds.split(","))
        run(args.settings, args.methods.split(","), seeds)
        return 0
    text = table()
    print(text)
    TABLE.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
