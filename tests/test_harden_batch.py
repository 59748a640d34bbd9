"""``lrpilot batch`` refuses implausible plans and only advises config that ``fit`` accepts
(issue 21: ``--nominal 1e12`` planned accumulate 250,000,000; ``noise_scale: true`` was
advised at accumulate 1, where fit refuses it)."""

from __future__ import annotations

import math

import pytest
import yaml

from lrpilot.batch import plan_accumulation, scale_lr
from lrpilot.batch.recommend import MAX_BATCH_RATIO, fit_config, ratio_warnings
from lrpilot.cli import main
from lrpilot.tasks import get_task
from lrpilot.train._config import parse_config

FAST = ["--max-batch", "64", "--noise-big", "64", "--noise-measurements", "2", "--budget", "4"]


@pytest.fixture(scope="module")
def digits():
    return get_task("digits-cnn")


def _no_probe(*args, **kwargs):
    raise AssertionError("a probe ran before the plausibility check")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--nominal", "1000000000000"), ("--nominal", "1438"), ("--processes", "100000")],
)
def test_implausible_plan_refused_before_any_probe(flag, value, capsys, monkeypatch):
    monkeypatch.setattr("lrpilot.batch.recommend.probe_memory", _no_probe)
    assert main(["batch", "--task", "digits-cnn", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag}={value} is out of range; allowed: [1, 1437]" in err  # digits: 1437 train
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_seed_out_of_range_refused_before_any_probe(seed, capsys, monkeypatch):
    monkeypatch.setattr("lrpilot.batch.recommend.probe_memory", _no_probe)
    assert main(["batch", "--task", "digits-cnn", "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert f"seed={seed} is out of range; allowed: [0, {2**63 - 1}]" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("base", "effective", "flagged"),
    [(64, 64 * 32, False), (64, 64 * 32 + 1, True), (2048, 64, False), (2049, 64, True)],
)
def test_ratio_warning_at_the_bound(base, effective, flagged):
    plan = plan_accumulation(effective, effective, lr=0.1, base_batch=base)
    assert plan.effective == effective
    warnings = ratio_warnings(plan)
    assert bool(warnings) is flagged
    if flagged:
        assert f"beyond {MAX_BATCH_RATIO}x" in warnings[0] and "lrpilot find" in warnings[0]


@pytest.mark.parametrize("max_per_device", [1, 7, 64, 500, 1437])
@pytest.mark.parametrize("nominal", [1, 3, 64, 100, 777, 1000, 1436, 1437])
def test_advised_config_is_accepted_by_fit(digits, max_per_device, nominal):
    plan = plan_accumulation(
        max_per_device, nominal, lr=0.1, base_batch=64, rule="linear", batchnorm=True
    )
    cfg = fit_config(plan, "sgd", None)
    assert ("noise_scale" in cfg) is (plan.accumulate >= 2)  # fit refuses it at accumulate 1
    fit = parse_config({"task": "digits-cnn", **cfg}, task=digits)
    assert fit.batch_size * fit.accumulate == plan.effective
    # fit's scaled LR (task LR 0.1 times the schedule factor) is the plan's, recomputed
    factor = scale_lr(1.0, 64, fit.batch_size * fit.accumulate, rule="linear")
    assert fit.optimizer.lr * factor == pytest.approx(plan.lr)
    assert (fit.noise_scale is not None) is ("noise_scale" in cfg)


def test_advised_config_with_processes_and_lr(digits, monkeypatch):
    plan = plan_accumulation(64, 128, 2, lr=0.05, base_batch=32, conservative=0.1)
    cfg = fit_config(plan, "sgd", 0.05, conservative=0.1)
    assert plan.accumulate == 1 and cfg["noise_scale"] is True  # two processes measure it
    monkeypatch.setenv("WORLD_SIZE", "2")
    fit = parse_config({"task": "digits-cnn", **cfg}, task=digits)
    assert fit.optimizer.lr == 0.05 and fit.lr_scaling["conservative"] == 0.1
    assert fit.noise_scale is not None


def test_cli_advice_at_accumulate_1_has_no_noise_scale(capsys, digits):
    assert main(["batch", "--task", "digits-cnn", *FAST]) == 0
    out = capsys.readouterr().out
    assert "recommendation: 64 per device x 1 process(es) x accumulate 1" in out
    assert "noise_scale: true" not in out and "re-measure it later" in out
    snippet = out.split("every key is one fit accepts):\n", 1)[1]
    cfg = yaml.safe_load(snippet)
    assert cfg == {"batch_size": 64}
    parse_config({"task": "digits-cnn", **cfg}, task=digits)


def test_cli_advice_with_accumulation_is_accepted_by_fit(capsys, digits):
    assert main(["batch", "--task", "digits-cnn", "--nominal", "1024", *FAST]) == 0
    out = capsys.readouterr().out
    cfg = yaml.safe_load(out.split("every key is one fit accepts):\n", 1)[1])
    assert cfg["accumulate"] == 16 and cfg["noise_scale"] is True
    fit = parse_config({"task": "digits-cnn", **cfg}, task=digits)
    assert fit.batch_size * fit.accumulate == 1024
    assert "! the effective batch" not in out  # 16x the base batch: within the bound
    assert math.isclose(scale_lr(0.1, 64, 1024), 1.6)
    assert "lr 1.6 (linear rule from batch 64)" in out
