"""One writer per run directory (issue 21), with real ``lrpilot fit`` processes: a second
``fit`` (fresh or ``--resume``) on the same ``--out`` is refused with exit 2 naming the
holder's PID and writes nothing; a SIGKILLed holder leaves no stale lock.

The task (``test_harden_lock:slow_task``) sleeps in its loss so the first process is still
training while the others start."""

from __future__ import annotations

import json
import os
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

from lrpilot.errors import ConfigError
from lrpilot.history import History
from lrpilot.tasks import Task
from lrpilot.train._rundir import RunLock

HERE = Path(__file__).resolve().parent


def slow_task() -> Task:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(320, 8, generator=gen)
    y = (x.sum(1) > 0).long()

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return nn.functional.cross_entropy(out, target)

    return Task(
        name="slow",
        build_model=lambda: nn.Linear(8, 2),
        train_set=TensorDataset(x[:256], y[:256]),
        val_set=TensorDataset(x[256:], y[256:]),
        loss_fn=loss,
        defaults={"epochs": 4, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
    )


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "lrpilot.cli", "fit", *args, "--progress", "none"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _listing(run_dir: Path) -> dict:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in run_dir.rglob("*")
        if p.is_file()
    }


def test_lock_refuses_a_second_holder_and_is_released() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with RunLock(d), pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
            RunLock(d).acquire()
        RunLock(d).acquire().release()  # released: free again


@pytest.mark.slow
def test_second_fit_on_the_same_out_is_refused_and_a_killed_holder_leaves_no_lock(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "test_harden_lock:slow_task", "device": "cpu"}))
    run_dir = tmp_path / "run"
    holder = _cli(str(config), "--out", str(run_dir), "--set", "checkpoint_every=5")
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoints" / "latest.pt").exists():
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        holder.send_signal(signal.SIGSTOP)  # holds the lock, writes nothing meanwhile
        before = _listing(run_dir)
        for extra in ([str(config)], ["--resume"]):
            second = _cli(*extra, "--out", str(run_dir))
            out, err = second.communicate(timeout=60)
            assert second.returncode == 2, (extra, out, err)
            assert f"is in use by process {holder.pid} " in err, err
            assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
            assert _listing(run_dir) == before  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    # the kernel dropped the dead holder's lock: the run resumes and completes
    resumed = _cli("--resume", "--out", str(run_dir))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, (out, err)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_run"] == 4 * 32
    steps = [r["step"] for r in History.read_jsonl(run_dir).steps]
    assert steps == sorted(set(steps))  # no interleaved or repeated records
