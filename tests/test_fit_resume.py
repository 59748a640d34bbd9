"""Exact resume: a real SIGKILL of ``python -m lrpilot.cli fit`` at a random moment, then
``--resume``, must end with weights bit-identical to a run never interrupted.

The task is a small CNN with BatchNorm and Dropout on synthetic data (so buffers and the global torch
RNG both matter), defined here and loaded by the CLI as ``test_fit_resume:tiny_task``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.history import History
from lrpilot.tasks import Task, accuracy
from lrpilot.train import fit
from lrpilot.train._checkpoint import CheckpointManager

HERE = Path(__file__).resolve().parent


def tiny_task() -> Task:
    """768 random 8x8 "images" labelled by a fixed random teacher (no dataset import)."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(960, 1, 8, 8, generator=gen)
    teacher = torch.randn(64, 10, generator=gen)
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    train_set = TensorDataset(x[:768], y[:768])
    val_set = TensorDataset(x[768:], y[768:])

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Flatten(),
            nn.Linear(8 * 8 * 8, 10),
        )

    return Task(
        name="tiny-teacher",
        build_model=build,
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults={"epochs": 6, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
    )


CONFIG = {
    "task": "test_fit_resume:tiny_task",
    "seed": 3,
    "epochs": 6,
    "batch_size": 32,
    "accumulate": 2,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    # two calm epochs, then an LR far too high: the divergence guard rescues (rewinds to
    # its snapshot, halves the schedule), so its state and snapshots must resume exactly
    "schedule": {"name": "piecewise", "unit": "epochs", "boundaries": [2], "values": [0.05, 5.0]},
    "early_stopping": {"patience": 10},
    "checkpoint_every": 3,
    "log_every": 1,
    "device": "cpu",
}


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lrpilot.cli", "fit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _steps(history: History) -> list[int]:
    return [r["step"] for r in history.steps]


def _kill_at_random_moment(
    args: list[str], env: dict, run_dir: Path, rng: random.Random, max_delay: float
) -> bool:
    """Start ``lrpilot fit``, SIGKILL it a random ``0..max_delay`` seconds after a checkpoint
    exists; return whether it was killed before finishing."""
    proc = _cli(args, env)
    latest = run_dir / "checkpoints" / "latest.pt"

    def mtime() -> int | None:
        try:
            return latest.stat().st_mtime_ns
        except FileNotFoundError:  # not yet written, or mid-rotation
            return None

    start = mtime()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if mtime() not in (None, start):
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, max_delay))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL and not (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    reference = fit(CONFIG, tmp_path / "reference", progress="none")
    # the kill delay scales with how long a (warm) run takes on this machine: a fast machine
    # finishes the whole run within a fixed half second after its first checkpoint
    started = time.perf_counter()
    fit(CONFIG, tmp_path / "timing", progress="none")
    max_delay = 0.8 * (time.perf_counter() - started)
    ref_state = reference.model.state_dict()
    total = reference.summary["steps_run"]
    assert reference.summary["guard"]["rescues"] >= 1  # the rescue path is exercised

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    run_dir = tmp_path / "killed"
    env = _env()
    rng = random.Random()
    fresh = [str(config_path), "--out", str(run_dir), "--progress", "none"]
    manager = CheckpointManager(run_dir / "checkpoints")

    def newest_step() -> int:
        # a kill between the two renames of a rotation leaves only previous.pt
        ckpt, _ = manager.newest_valid()
        return -1 if ckpt is None else int(ckpt["step"])

    for attempt in range(6):
        if run_dir.exists():
            shutil.rmtree(run_dir)
        killed = _kill_at_random_moment(fresh, env, run_dir, rng, max_delay / 2**attempt)
        if killed and 0 <= newest_step() < total:
            break  # killed in the middle of the run (not after its last checkpoint)
    else:
        pytest.fail("the run always finished before the kill; cannot test")
    killed_at = [newest_step()]
    # a second kill, this time of a resumed run (it may also have finished by then)
    _kill_at_random_moment([*fresh, "--resume"], env, run_dir, rng, max_delay)
    killed_at.append(newest_step())
    # read before the last resume, which writes it too (a kill between the last checkpoint
    # and the summary leaves a run that the resume finishes: "finishing the run")
    finished = (run_dir / "summary.json").exists()

    resumed = _cli([*fresh[:3], "--resume", "--progress", "plain"], env)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    if killed_at[-1] == total and finished:
        # the resumed run finished before the second kill: a third resume trains nothing
        assert "is already complete" in out, (killed_at, out)
    else:
        assert f"resuming from step {killed_at[-1]}" in out, (killed_at, out)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_run"] == total
    assert summary["guard"]["actions"] == reference.summary["guard"]["actions"]
    final = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    # the final checkpoint holds the last weights; best.pt (restored at the end) the best
    ref_final = torch.load(tmp_path / "reference" / "checkpoints" / "latest.pt", weights_only=True)
    for key, value in ref_final["model"].items():
        assert torch.equal(value, final["model"][key]), key
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    for key, value in ref_state.items():
        assert torch.equal(value, best["model"][key]), key
    # metrics.jsonl has every step exactly once and matches the reference record for record
    history = History.read_jsonl(run_dir)
    assert _steps(history) == list(range(1, total + 1))
    ref_history = History.read_jsonl(tmp_path / "reference")
    assert [r["train_loss"] for r in history.steps] == [r["train_loss"] for r in ref_history.steps]
    assert [r["lr"] for r in history.steps] == [r["lr"] for r in ref_history.steps]
    assert history.events == ref_history.events
    assert [e["epoch"] for e in history.epochs] == list(range(CONFIG["epochs"]))
