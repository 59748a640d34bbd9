"""``lrpilot fit`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): it trains, follows the
single-process learning-rate sequence for the same effective batch, writes one run
directory, and resumes from a checkpoint across the same world size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lrpilot.errors import ConfigError
from lrpilot.history import History
from lrpilot.train._loop import fit

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

CONFIG = {
    "task": "digits-cnn",
    "seed": 3,
    "epochs": 2,
    "batch_size": 16,
    "log_every": 1,
    "checkpoint_every": "epoch",  # the resume check below starts from the epoch-1 checkpoint
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine", "warmup": {"epochs": 1}},
    "lr_scaling": {"rule": "linear", "base_batch": 16},
    "noise_scale": True,
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def _torchrun(cwd: Path, port: int, *args: str) -> tuple[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        *TORCHRUN,
        "--master_port",
        str(port),
        "-m",
        "lrpilot.cli",
        "fit",
        *args,
        "--progress",
        "none",
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def _lrs(history: History) -> list[float]:
    return [r["lr"] for r in history.steps]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_match_lr_and_resume(tmp_path: Path):
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")

    # 1) an uninterrupted 2-process run with the default run directory
    _, err = _torchrun(tmp_path, _free_port(), str(cfg_path))
    assert "SyncBatchNorm is not available on CPU" in err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run directory, written by rank 0 only
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 32
    assert summary["lr_scale_factor"] == 2.0
    ddp = History.read_jsonl(run)
    steps = [r["step"] for r in ddp.steps]
    assert steps == list(range(1, summary["steps_run"] + 1))  # each step logged once
    assert summary["steps_run"] == 2 * 45  # ceil(ceil(1437 / 2) / 16) = ceil(1437 / 32)

    # it trains
    assert ddp.epochs[-1]["val_accuracy"] > 0.85
    assert ddp.epochs[-1]["train_loss"] < 0.5 * ddp.epochs[0]["train_loss"]
    noise = [r["noise_scale"] for r in ddp.steps if "noise_scale" in r]
    assert len(noise) == len(ddp.steps) and all(v > 0 for v in noise)

    # 2) the single-process run with the same effective batch follows the same LRs
    single_cfg = dict(CONFIG, batch_size=32, noise_scale=None)
    single = fit(single_cfg, out_dir=tmp_path / "single", progress="none")
    assert single.summary["lr_scale_factor"] == 2.0
    assert _lrs(ddp) == pytest.approx(_lrs(single.history), rel=1e-12, abs=0)
    # and against the schedule library itself: twice the configured schedule, step by step
    from lrpilot.schedules import from_config

    sched = from_config(
        {**CONFIG["schedule"], "lr": 0.05}, steps_per_epoch=45, total_steps=summary["steps_run"]
    )
    expected = [2.0 * sched(t) for t in range(summary["steps_run"])]
    assert _lrs(ddp) == pytest.approx(expected, rel=1e-12, abs=1e-15)

    # 3) resume across the same world size: a copy of the run set back to its epoch-1
    #    checkpoint (written by the 2-process run), resumed with 2 processes, must end
    #    bit-identical to the uninterrupted run, with the same step records
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    ckpts = out / "checkpoints"
    os.replace(ckpts / "previous.pt", ckpts / "latest.pt")
    (out / "summary.json").unlink()
    assert torch.load(ckpts / "latest.pt", weights_only=True)["step"] == 45
    _torchrun(tmp_path, _free_port(), "--resume", "--out", str(out))
    resumed = History.read_jsonl(out)
    assert [r["step"] for r in resumed.steps] == steps
    assert _lrs(resumed) == _lrs(ddp)
    assert json.loads((out / "summary.json").read_text())["steps_run"] == 90
    # a different number of processes is refused with a clear message (noise_scale is
    # dropped from the copy's config: in one process it would need accumulate >= 2)
    other = tmp_path / "one-process"
    shutil.copytree(out, other)
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["noise_scale"] = None
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="written by 2 process"):
        fit(other / "config.yaml", out_dir=other, resume=True, progress="none")
    final_a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["model"]
    final_b = torch.load(ckpts / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # checkpoints hold the unwrapped model: they load into a bare model of the task
    from lrpilot.tasks import get_task

    get_task(CONFIG["task"]).build_model().load_state_dict(final_a)
