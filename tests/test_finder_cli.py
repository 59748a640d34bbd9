"""``lrpilot find``: exit codes, --json fields, PNG output (on a tiny task)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.cli import main
from lrpilot.finder.policy import SCHEDULE_FRACTIONS
from lrpilot.tasks import Task, accuracy


def tiny_task() -> Task:
    """A 2-class problem small enough for a sub-second finder run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    return Task(
        name="tiny",
        build_model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        train_set=TensorDataset(x[:512], y[:512]),
        val_set=TensorDataset(x[512:], y[512:]),
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults={
            "epochs": 2,
            "batch_size": 32,
            # momentum named: `lrpilot find` probes what `lrpilot fit` trains (SGD defaults: 0)
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        },
    )


TASK = f"{__name__}:tiny_task"


def test_json_fields(capsys):
    assert main(["find", "--task", TASK, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "lrs",
        "losses",
        "smoothed",
        "slope",
        "lr_unstable",
        "unstable_interval",
        "suggestion",
        "suggestion_interval",
        "confidence",
        "verdict",
        "message",
        "schedule",
        "samples",
        "skipped_steps",
        "optimizer_steps",
        "epochs_of_compute",
        "probe_batch_size",
        "optimizer_family",
        "batch_ratio",
    ):
        assert key in out, key
    assert len(out["lrs"]) == len(out["losses"]) == len(out["smoothed"])
    assert out["schedule"] == "one_cycle" and out["optimizer"] == "sgd"
    assert out["batch_size"] == 32 and out["probe_batch_size"] == 4
    assert out["samples"] <= 256  # at most half an epoch of the 512 training samples
    assert out["epochs_of_compute"] == pytest.approx(out["samples"] / 512)
    assert out["verdict"] == "ok", out["message"]  # the tiny task has a clear instability
    # SGD: the instability point is carried linearly from the probe batch 4 to the batch 32.
    assert out["optimizer_family"] == "sgd" and out["batch_ratio"] == 8
    assert out["suggestion"] == pytest.approx(
        SCHEDULE_FRACTIONS["one_cycle"] * 8 * out["lr_unstable"], rel=1e-12
    )
    lo, hi = out["suggestion_interval"]
    assert lo <= out["suggestion"] <= hi


def test_json_adamw_uses_square_root_transfer_and_actual_batch_ratio(capsys):
    # batch 12 -> probe batch 1 (12 // 8): the ratio is 12, not the nominal 8.
    argv = ["find", "--task", TASK, "--optimizer", "adamw", "--batch-size", "12", "--json"]
    assert main([*argv, "--schedule", "cosine"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optimizer_family"] == "adam" and out["probe_batch_size"] == 1
    assert out["batch_ratio"] == 12
    if out["verdict"] == "ok":
        assert out["suggestion"] == pytest.approx(
            SCHEDULE_FRACTIONS["cosine"] * 12**0.5 * out["lr_unstable"], rel=1e-12
        )
    else:
        assert out["suggestion"] is None


def test_probe_batch_and_budget_set_the_sweep_and_the_batch_ratio(capsys):
    # probe batch 16 of the training batch 32: ratio 2; budget 1 epoch: 512 // 16 - 1 steps
    argv = ["find", "--task", TASK, "--probe-batch", "16", "--budget-epochs", "1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["probe_batch_size"] == 16 and out["batch_ratio"] == 2
    assert out["optimizer_steps"] <= 512 // 16 - 1
    assert 256 < out["samples"] <= 512  # more than the default half epoch, at most one
    assert out["epochs_of_compute"] == pytest.approx(out["samples"] / 512)
    assert out["verdict"] == "ok", out["message"]
    assert out["suggestion"] == pytest.approx(
        SCHEDULE_FRACTIONS["one_cycle"] * 2 * out["lr_unstable"], rel=1e-12
    )


def test_noisy_sweep_prints_the_flags_that_lower_the_noise(capsys):
    # probe batch 16: half an epoch (256 samples) would be 15 steps, so the default budget is
    # raised to the 20 steps of 21 * 16 = 336 samples (0.66 epoch); still too few to see the
    # fall above the noise
    assert main(["find", "--task", TASK, "--probe-batch", "16"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert "note: half an epoch of 512 samples is too few for a sweep of 20 steps" in out
    assert "uses 336 samples (0.66 epochs)" in out
    assert "verdict noisy" in out
    # twice the probe batch and twice the budget (rounded up to 0.1 epoch)
    assert "hint: --probe-batch 32 lowers the noise (add --budget-epochs 1.4 " in out


def test_small_training_set_raises_the_default_budget_not_an_explicit_one(capsys):
    assert main(["find", "--task", TASK, "--probe-batch", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_raised"] is True
    assert out["optimizer_steps"] <= 20 and out["samples"] <= 336
    assert main(["find", "--task", TASK, "--json"]) == 0  # probe batch 4: 63 steps
    assert json.loads(capsys.readouterr().out)["budget_raised"] is False
    code = main(["find", "--task", TASK, "--probe-batch", "16", "--budget-epochs", "0.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--budget-epochs=0.5 gives 256 samples = 15 steps of batch 16" in err
    assert "need at least 20 steps: --budget-epochs >= 0.7" in err


def test_png_written_and_text_output(tmp_path, capsys):
    missing = tmp_path / "sub" / "finder.png"  # refused before the sweep; nothing created
    assert main(["find", "--task", TASK, "--png", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.parent.exists()
    png = tmp_path / "finder.png"
    code = main(
        ["find", "--task", TASK, "--optimizer", "adamw", "--schedule", "cosine", "--png", str(png)]
    )
    assert code == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(png.parent.glob("*.tmp*"))
    assert "tiny" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--task", "no-such-task"], "no-such-task"),
        (["--task", TASK, "--batch-size", "0"], "--batch-size=0"),
        (["--task", TASK, "--batch-size", "100000"], "larger than the training set"),
        (["--task", TASK, "--schedule", "step"], "one_cycle"),
        (["--task", TASK, "--png", "plot.jpg"], ".png"),
        (["--task", TASK, "--seed", "-1"], "--seed=-1"),
        (["--task", TASK, "--probe-batch", "0"], "--probe-batch=0"),
        (["--task", TASK, "--probe-batch", "33"], "[1, 32]"),
        (["--task", TASK, "--budget-epochs", "0"], "--budget-epochs=0"),
        (["--task", TASK, "--budget-epochs", "11"], "(0, 10]"),
        (
            ["--task", TASK, "--probe-batch", "32", "--budget-epochs", "0.1"],
            "need at least 20 steps: --budget-epochs >= 1.4",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["find", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_unknown_optimizer_exits_2_listing_the_registry(capsys):
    assert main(["find", "--task", TASK, "--optimizer", "lion"]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'lion'; valid: adam, adamw, sgd" in err and err.count("\n") == 1
