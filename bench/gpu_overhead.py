"""GPU loop overhead: ``lrpilot.fit`` against a bare loop written as a performance-aware
user writes it (issue 16).

The bare loop keeps the data on the GPU, draws each epoch's order with ``torch.randperm``
on the GPU, indexes batches there, uses the fused optimizer kernel
(``torch.optim.SGD(..., fused=True)``), accumulates the epoch's loss on the device and
reads it once per epoch (no per-step ``.item()``), and evaluates once per epoch.
``lrpilot.fit`` runs the same model, initialisation, data (an in-memory ``TensorDataset``
that it moves to the GPU once), batch size, SGD settings and constant LR, with its
defaults: divergence guard, metrics every 10 steps with the gradient norm, TensorBoard,
checkpoints (every 60 s and at the end), validation, summary and diagnosis.

Two models:

* ``cnn``: 4 conv layers (64-128-256 channels) on 3x32x32 inputs, batch 256: a step of a
  few milliseconds, where the GPU's work dominates;
* ``mlp``: 40-100-100-10 on 40 features, batch 64 (the size of ``mnist1d-mlp``): a step of
  a few kernels, bound by the CPU's launch overhead, where every host sync shows.

Each variant runs ``--repeats`` times, interleaved (bare, lrpilot, bare, ...) after one
warm-up call each (CUDA context, cuDNN autotuning). Reported: samples/s of the training
steps (the bare loop's clock around its epochs' training part after a synchronize;
lrpilot's ``train_time_s`` from ``summary.json``), samples/s of the whole call (wall
clock, model build to return), best-of repeats, and the ratio lrpilot / bare. Target: a
training-step ratio >= 0.97 on both models. This measures; it asserts nothing.

Run: ``python3 bench/gpu_overhead.py [--repeats 3] [--device cuda]`` (about a minute on an
H200). Seeds: model init ``torch.manual_seed(0)``, data ``seed 1``, order ``seed 0``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

import lrpilot
from lrpilot import Task


@dataclass(frozen=True)
class Setup:
    name: str
    samples: int
    val: int
    batch: int
    epochs: int
    shape: tuple[int, ...]


SETUPS = {
    "cnn": Setup("cnn", 8192, 1024, 256, 4, (3, 32, 32)),
    "mlp": Setup("mlp", 16384, 1024, 64, 4, (40,)),
}
LR, MOMENTUM = 0.01, 0.9  # low enough that the guard never rescues


def build(name: str) -> nn.Module:
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(256, 10),
        )
    return nn.Sequential(
        nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def make_task(setup: Setup) -> Task:
    gen = torch.Generator().manual_seed(1)
    n = setup.samples + setup.val
    x = torch.randn(n, *setup.shape, generator=gen)
    w = torch.randn(x[0].numel(), 10, generator=gen)
    y = (x.flatten(1) @ w).argmax(1)  # a learnable labelling
    model_factory = {"cnn": lambda: build("cnn"), "mlp": lambda: build("mlp")}[setup.name]
    return Task(
        name=f"gpu-overhead-{setup.name}",
        build_model=model_factory,
        train_set=TensorDataset(x[: setup.samples], y[: setup.samples]),
        val_set=TensorDataset(x[setup.samples :], y[setup.samples :]),
        loss_fn=nn.functional.cross_entropy,  # no metrics: both loops compute the val loss only
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(task: Task, setup: Setup, device: torch.device) -> tuple[float, float]:
    """(seconds in the training steps, seconds of the whole call)."""
    t_call = time.perf_counter()
    torch.manual_seed(0)
    model = task.build_model().to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, **fused)
    x, y = (t.to(device) for t in task.train_set.tensors)
    xv, yv = (t.to(device) for t in task.val_set.tensors)
    gen = torch.Generator(device=device).manual_seed(0)
    train_s = 0.0
    for _epoch in range(setup.epochs):
        sync(device)
        t0 = time.perf_counter()
        model.train()
        total = torch.zeros((), device=device)
        order = torch.randperm(len(x), device=device, generator=gen)
        for idx in order.split(setup.batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        sync(device)
        train_s += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            val_loss = sum(
                nn.functional.cross_entropy(model(xb), yb, reduction="sum")
                for xb, yb in zip(xv.split(1024), yv.split(1024), strict=True)
            )
        _ = float(total) / len(x), float(val_loss) / len(xv)  # one read per epoch
    sync(device)
    return train_s, time.perf_counter() - t_call


def with_lrpilot(task: Task, setup: Setup, device: torch.device) -> tuple[float, float]:
    config = {
        "epochs": setup.epochs,
        "batch_size": setup.batch,
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": 0.0},
        "device": str(device),
    }
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = lrpilot.fit(config, f"{out}/run", task=task, progress="none")
        sync(device)
        wall = time.perf_counter() - t0
    train_s = result.summary.get("train_time_s") or wall
    return float(train_s), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the samples")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, repeats {args.repeats}")
    rows = []
    for key in args.models.split(","):
        base = SETUPS[key]
        setup = Setup(
            base.name,
            max(base.batch, int(base.samples * args.scale)),
            base.val,
            base.batch,
            base.epochs,
            base.shape,
        )
        task = make_task(setup)
        samples = setup.samples * setup.epochs
        bare(task, setup, device)  # warm-up: context, cuDNN autotuning, allocator
        with_lrpilot(task, setup, device)
        times: dict[str, list[tuple[float, float]]] = {"bare": [], "lrpilot": []}
        for _ in range(args.repeats):
            times["bare"].append(bare(task, setup, device))
            times["lrpilot"].append(with_lrpilot(task, setup, device))
        best = {k: (min(t for t, _ in v), min(w for _, w in v)) for k, v in times.items()}
        steps = setup.epochs * -(-setup.samples // setup.batch)
        rows.append((key, setup, samples, steps, best))
    print()
    print(
        f"{'model':5} {'batch':>5} {'steps':>6} {'ms/step bare':>12} {'bare samples/s':>15} "
        f"{'lrpilot samples/s':>18} {'ratio (steps)':>13} {'ratio (call)':>12}"
    )
    for key, setup, samples, steps, best in rows:
        b_train, b_wall = best["bare"]
        l_train, l_wall = best["lrpilot"]
        print(
            f"{key:5} {setup.batch:5d} {steps:6d} {1000 * b_train / steps:12.3f} "
            f"{samples / b_train:15.0f} {samples / l_train:18.0f} {b_train / l_train:13.3f} "
            f"{b_wall / l_wall:12.3f}"
        )
    print(
        "ratio = lrpilot samples/s / bare samples/s (best of repeats); target >= 0.97 "
        "on the training steps. 'call' includes set-up, validation, checkpoints, summary."
    )


if __name__ == "__main__":
    main()
