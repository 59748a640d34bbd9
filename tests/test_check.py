"""lrpilot check: each warning with a config that triggers it and one that does not; exit codes."""

from __future__ import annotations

import pytest
import yaml

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.recommend._check import check_config, no_decay_supported, usual_range


def _rules(raw, **kw) -> set[str]:
    return {f.rule for f in check_config(raw, **kw)}


def test_batchnorm_with_small_per_device_batch():
    assert "batch.bn_min" in _rules({"task": "digits-cnn", "batch_size": 2})
    assert "batch.bn_min" not in _rules({"task": "digits-cnn", "batch_size": 4})
    # no BatchNorm in the MLP: a batch of 2 is not a BatchNorm problem
    assert "batch.bn_min" not in _rules({"task": "mnist1d-mlp", "batch_size": 2})


def test_usual_range_follows_the_optimizer_scaling_rule():
    assert usual_range("sgd", 100) == (0.008, 0.02)
    lo, hi = usual_range("sgd", 512)  # linear from 128
    assert (lo, hi) == pytest.approx((0.008 * 4, 0.02 * 4))
    lo, hi = usual_range("adamw", 8)  # square root from 32
    assert (lo, hi) == pytest.approx((3e-4 * 0.5, 1e-3 * 0.5))


@pytest.mark.parametrize(
    ("lr", "flagged"), [(5.0, True), (0.1, False), (0.0008, False), (0.0007, True)]
)
def test_lr_outside_the_usual_range_by_more_than_10x(lr, flagged):
    # SGD at batch 64: usual 0.008-0.02, flagged outside 0.0008-0.2
    raw = {"task": "mnist1d-cnn", "optimizer": {"lr": lr}}
    found = [f for f in check_config(raw) if f.rule == "check.lr_factor"]
    assert bool(found) is flagged
    if found:
        assert "0.008-0.02" in found[0].message and found[0].key == "optimizer.lr"


def test_lr_check_uses_the_schedule_peak_and_lr_scaling():
    # one-cycle peaks at max_lr = 3.0 although optimizer.lr is in range
    raw = {"task": "mnist1d-cnn", "schedule": {"name": "one_cycle", "max_lr": 3.0}}
    assert "check.lr_factor" in _rules(raw)
    # lr_scaling multiplies 0.1 by 64/4 = 16 -> 1.6 at batch 64 (> 0.2)
    raw = {"task": "mnist1d-cnn", "lr_scaling": {"rule": "linear", "base_batch": 4}}
    assert "check.lr_factor" in _rules(raw)


def test_large_batch_without_warmup():
    base = {"task": "mnist1d-cnn", "batch_size": 256, "lr_scaling": {"base_batch": 64}}
    assert "warmup.large_batch" in _rules(base)  # constant LR
    short = dict(base, schedule={"name": "cosine", "warmup": {"epochs": 1}})
    found = [f for f in check_config(short) if f.rule == "warmup.large_batch"]
    assert found and "warms up for 1 epochs" in found[0].message
    ok = dict(base, schedule={"name": "cosine", "warmup": {"epochs": 3}})
    assert "warmup.large_batch" not in _rules(ok)
    # one-cycle's own 30% warm-up of 15 epochs is 4.5 epochs
    assert "warmup.large_batch" not in _rules(dict(base, schedule={"name": "one_cycle"}))
    # the same batch as 64 per process on 4 GPUs counts as large
    assert "warmup.large_batch" in _rules({"task": "mnist1d-cnn"}, gpus=4)
    assert "warmup.large_batch" not in _rules({"task": "mnist1d-cnn", "batch_size": 128})


def test_batch_changed_without_lr_scaling():
    raw = {"task": "mnist1d-cnn", "batch_size": 256}
    found = [f for f in check_config(raw) if f.rule == "scaling.sgd"]
    assert found and "0.36" in found[0].message  # 0.1 * 4 * 0.9
    scaled = dict(raw, lr_scaling={"rule": "linear", "base_batch": 64})
    assert "scaling.sgd" not in _rules(scaled)
    by_hand = dict(raw, optimizer={"lr": 0.4})  # linear by hand
    assert "scaling.sgd" not in _rules(by_hand)
    by_hand_sqrt = dict(raw, optimizer={"lr": 0.2})  # square root by hand
    assert "scaling.sgd" not in _rules(by_hand_sqrt)
    assert "scaling.sgd" not in _rules({"task": "mnist1d-cnn", "batch_size": 64})
    assert "scaling.adamw" in _rules({"task": "mnist1d-mlp", "batch_size": 256})


def test_schedule_ending_before_or_long_after_the_run():
    # mnist1d-cnn: 4000 samples, batch 64 -> 63 steps per epoch, 15 epochs = 945 steps
    def length_findings(schedule):
        raw = {"task": "mnist1d-cnn", "schedule": schedule}
        return [f for f in check_config(raw) if f.rule == "check.schedule_tolerance"]

    early = length_findings({"name": "cosine", "steps": 300})
    assert early and "ends at step 300 of 945" in early[0].message
    late = length_findings({"name": "cosine", "epochs": 30})
    assert late and "after the run's 945 steps" in late[0].message
    assert not length_findings({"name": "cosine"})
    assert not length_findings({"name": "cosine", "steps": 900})  # within 10%
    milestone_late = {"name": "multistep", "unit": "epochs", "milestones": [10, 20], "gamma": 0.1}
    assert length_findings(milestone_late)
    milestones_in = {"name": "multistep", "unit": "epochs", "milestones": [10, 13], "gamma": 0.1}
    assert not length_findings(milestones_in)  # ending early is what a multistep does


def test_weight_decay_on_norm_and_bias():
    found = [f for f in check_config({"task": "digits-cnn"}) if f.rule == "weight_decay.no_decay"]
    # digits-cnn: 2 conv biases, 2 BN weights, 2 BN biases, 1 linear bias
    assert found and "7 bias/normalisation" in found[0].message
    raw = {"task": "digits-cnn", "optimizer": {"weight_decay": 0.0}}
    assert "weight_decay.no_decay" not in _rules(raw)
    if no_decay_supported():
        raw = {"task": "digits-cnn", "optimizer": {"no_decay": "auto"}}
        assert "weight_decay.no_decay" not in _rules(raw)


def test_unparsable_config_raises():
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        check_config({"task": "mnist1d-mlp", "epoch": 3})


# ------------------------------------------------------------------------------- CLI
def _write(tmp_path, raw, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_exit_codes(tmp_path, capsys):
    clean = _write(tmp_path, {"task": "mnist1d-mlp", "optimizer": {"weight_decay": 0.0}})
    assert main(["check", clean]) == 0
    assert "no warnings" in capsys.readouterr().out
    bad = _write(tmp_path, {"task": "digits-cnn", "batch_size": 2})
    assert main(["check", bad]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "batch.bn_min" in ln)
    assert line.startswith("warning: batch_size=2") and "fix:" in line and "Group Norm" in line
    assert main(["check", clean, "--set", "batch_size=2", "--set", "task=digits-cnn"]) == 1
    capsys.readouterr()
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\n")
    assert main(["check", str(broken)]) == 2
    unknown = _write(tmp_path, {"task": "mnist1d-mlp", "epoch": 3})
    assert main(["check", unknown]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'epoch'" in err and "Traceback" not in err
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2


def test_cli_json(tmp_path, capsys):
    import json

    bad = _write(tmp_path, {"task": "digits-cnn", "batch_size": 2})
    assert main(["check", bad, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {"key", "value", "rule", "message", "fix"} <= set(data[0])
    assert "batch.bn_min" in {d["rule"] for d in data}


@pytest.mark.parametrize(
    "schedule",
    [
        {
            "name": "join",
            "schedules": [
                {"name": "linear", "start_lr": 0.001, "end_lr": 0.1, "steps": 50},
                {"name": "cosine", "lr": 0.1},
            ],
            "boundaries": [50],
        },
        {"name": "step_decay", "lr": 0.1, "every": 2, "gamma": 0.5, "unit": "epochs"},
        {"name": "cosine_restarts", "lr": 0.1, "period": 3, "unit": "epochs"},
        {"name": "inverse_sqrt", "lr": 0.1, "warmup": 100},
        {"name": "wsd", "lr": 0.1, "warmup": 50, "decay_fraction": 0.2},
    ],
)
def test_other_schedule_families_check_clean(schedule):
    """Schedules that span the run (or have no end) raise no length or LR warning."""
    raw = {"task": "digits-cnn", "schedule": schedule, "optimizer": {"weight_decay": 0.0}}
    assert check_config(raw) == []
