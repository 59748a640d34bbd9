"""``lrpilot batch``: output, JSON shape, and bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import json

import pytest

from lrpilot.batch import plan_accumulation, scale_lr
from lrpilot.cli import main

FAST = ["--max-batch", "64", "--noise-big", "64", "--noise-measurements", "2"]


def test_json_recommendation(capsys):
    code = main(
        [
            "batch",
            "--task",
            "digits-cnn",
            "--nominal",
            "256",
            "--processes",
            "2",
            "--json",
            "--budget",
            "4",
            *FAST,
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    mem, plan = out["memory"], out["plan"]
    assert mem["batch_size"] == 64 and mem["capped"] and mem["method"] == "cpu-rss-fit"
    assert out["noise_scale"]["b_simple"] > 0
    # the plan is plan_accumulation's, with the task's SGD defaults (lr 0.1 at batch 64)
    ref = plan_accumulation(64, 256, 2, lr=0.1, base_batch=64, rule="linear", batchnorm=True)
    assert plan == ref.to_dict()
    assert plan["lr"] == pytest.approx(scale_lr(0.1, 64, 256))
    assert any("B_simple" in r for r in out["reasons"])


def test_text_output_has_reasons(capsys):
    assert main(["batch", "--task", "mnist1d-mlp", "--budget", "4", *FAST]) == 0
    out = capsys.readouterr().out
    assert "memory limit:" in out and "noise scale:" in out and "recommendation:" in out
    assert "sqrt rule" in out  # AdamW task: square-root rule by default
    assert "why:" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "digits-cnn", "--budget", "0"], "--budget=0.0"),
        (["--task", "digits-cnn", "--processes", "0"], "--processes=0"),
        (["--task", "digits-cnn", "--rule", "cube"], "valid: linear"),
        (["--task", "digits-cnn", "--device", "tpu"], "--device='tpu'"),
        (["--task", "digits-cnn", "--noise-small", "7"], "multiple of --noise-small"),
    ],
)
def test_bad_input_exits_2(args, needle, capsys):
    assert main(["batch", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_json_is_strict_with_a_single_noise_draw(capsys):
    args = ["batch", "--task", "mnist1d-mlp", "--json", "--budget", "4", *FAST[:4]]
    assert main([*args, "--noise-measurements", "1"]) == 0
    out = json.loads(capsys.readouterr().out)  # no NaN tokens
    assert out["noise_scale"]["stderr"] is None and out["noise_scale"]["measurements"] == 1
