"""Optimizer step time by implementation: PyTorch's for-loop, foreach and fused kernels.

``lrpilot fit`` builds its optimizer with ``optimizer.implementation: auto``, which picks
the fused kernel where it applies (:func:`lrpilot.train._builders.resolve_implementation`).
This benchmark is the measurement behind that default: for the built-in tasks' models and
a 4M-parameter MLP, with each task's optimizer settings and with SGD (momentum 0.9,
weight decay 5e-4), AdamW and Adam, it times ``optimizer.step()`` alone (gradients fixed,
random) for each implementation, and reports how far the fused weights drift from the
for-loop's over the same steps (the same update rule; the order of floating-point
operations differs).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/optimizer_step.py [--steps 200]
[--repeats 5]`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

from lrpilot.tasks import get_task
from lrpilot.train._builders import build_optimizer
from lrpilot.train._config import parse_config

IMPLEMENTATIONS = ("for-loop", "foreach", "fused")
OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "adamw": {"name": "adamw", "lr": 1e-3},
    "adam": {"name": "adam", "lr": 1e-3},
}


def models() -> dict[str, nn.Module]:
    out = {name: get_task(name).build_model() for name in ("mnist1d-cnn", "mnist1d-mlp")}
    out["digits-cnn"] = get_task("digits-cnn").build_model()
    out["mlp 1024-2048-1024"] = nn.Sequential(
        nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024)
    )
    return out


def time_steps(
    model: nn.Module, optimizer: dict, implementation: str, steps: int, seed: int
) -> tuple[float, list[torch.Tensor]]:
    """Median seconds of one ``optimizer.step()`` over ``steps`` steps (the first tenth
    left out: state allocation), and the weights after them."""
    torch.manual_seed(seed)
    params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    cfg = parse_config({"task": "mnist1d-cnn", "optimizer": optimizer})
    opt = build_optimizer(cfg, [{"params": params}], implementation)
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=gen) * 0.01 for p in params]
    times = []
    for _ in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[steps // 10 :]), [p.detach() for p in params]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.steps < 10 or args.repeats < 1:
        parser.error("--steps must be >= 10 and --repeats >= 1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(
        f"optimizer.step() alone, median us over {args.steps} steps, best of "
        f"{args.repeats} interleaved repeats; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"torch {torch.__version__}"
    )
    header = f"{'model':<20}{'params':>9}{'optimizer':>10}"
    header += "".join(f"{name:>10}" for name in IMPLEMENTATIONS)
    print(header + f"{'fused speed-up':>16}{'max |fused - for-loop|':>24}")
    from rich.progress import track

    rows = [(m, name, opt) for m in models().items() for name, opt in OPTIMIZERS.items()]
    for (label, model), opt_name, opt in track(rows, description="models", transient=True):
        best = dict.fromkeys(IMPLEMENTATIONS, float("inf"))
        weights: dict[str, list[torch.Tensor]] = {}
        for _ in range(args.repeats):
            for impl in IMPLEMENTATIONS:
                seconds, weights[impl] = time_steps(model, opt, impl, args.steps, seed=0)
                best[impl] = min(best[impl], seconds)
        drift = max(
            float((a - b).abs().max())
            for a, b in zip(weights["fused"], weights["for-loop"], strict=True)
        )
        n_params = sum(p.numel() for p in model.parameters())
        cells = "".join(f"{best[impl] * 1e6:>10.1f}" for impl in IMPLEMENTATIONS)
        print(
            f"{label:<20}{n_params:>9}{opt_name:>10}{cells}"
            f"{best['for-loop'] / best['fused']:>15.2f}x{drift:>24.2e}"
        )
    print(
        "for-loop: PyTorch's default on CPU (what a hand-written loop gets); foreach and fused: "
        "the multi-tensor and single-kernel implementations of the same update. fused "
        "speed-up: for-loop time / fused time. max |fused - for-loop|: the largest weight "
        f"difference after {args.steps} steps from the same start and gradients. SGD: "
        "momentum 0.9, weight decay 5e-4; AdamW: weight decay 1e-2; Adam: none."
    )


if __name__ == "__main__":
    main()
