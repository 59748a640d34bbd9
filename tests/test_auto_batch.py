"""``batch_size: auto``: the decision as a pure function of recorded measurements, the
measurement (deterministic by seed), and one small run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import lrpilot
from lrpilot.autopilot import _batch as ab
from lrpilot.autopilot._batch import bounds, check_possible, choose_batch
from lrpilot.batch.memory import MemoryProbe
from lrpilot.batch.scaling import scale_lr
from lrpilot.errors import ConfigError

# measured on mnist1d-mlp's training part (3600 samples), seed 0, AdamW: the CPU memory
# probe (capped at 256, tried 2..256) and the noise probe (6 draws of 64 in micro-batches
# of 8): B_simple 303 +- 109
RECORDED = {"memory_limit": 256, "b_simple": 302.999, "stderr": 108.889, "n_fit": 3600}


def test_recorded_mnist1d_mlp_adamw() -> None:
    c = choose_batch(64, optimizer="adamw", **RECORDED)
    assert (c.batch, c.accumulate, c.effective) == (256, 1, 256)
    assert c.rule == "sqrt" and c.lr_factor == pytest.approx(2.0)
    # the rule is lrpilot.batch.scaling's: the same LR as scale_lr gives
    assert 0.01 * c.lr_factor == pytest.approx(scale_lr(0.01, 64, 256, "sqrt"))


def test_sgd_is_scaled_linearly_and_memory_splits_into_accumulation() -> None:
    rec = {**RECORDED, "memory_limit": 40}
    c = choose_batch(64, optimizer="sgd", **rec)
    assert (c.batch, c.accumulate, c.effective) == (32, 8, 256)
    assert c.rule == "linear" and c.lr_factor == pytest.approx(4.0)
    assert "8 micro-batches of 32" in c.reason


def test_uneven_memory_limit_evens_out_the_micro_batch() -> None:
    c = choose_batch(64, optimizer="adamw", **{**RECORDED, "memory_limit": 100})
    # at least ceil(256 / 100) = 3 micro-batches; 4 of 64 is the first exact split
    assert (c.batch, c.accumulate, c.effective) == (64, 4, 256)
    assert c.lr_factor == pytest.approx(math.sqrt(256 / 64))
    rec = {**RECORDED, "memory_limit": 10, "n_fit": 8 * 97}  # clamped to 97, a prime
    c = choose_batch(64, optimizer="adamw", **rec)
    # no exact split of 97 within 10 to 20 micro-batches: 10 of ceil(97 / 10) = 10
    assert (c.batch, c.accumulate, c.effective) == (10, 10, 100)
    assert "clamped to [16, 97]" in c.reason


@pytest.mark.parametrize(
    ("b_simple", "expected"),
    # nearest in log scale: the boundaries are sqrt(16 x 32) = 22.6 and sqrt(64 x 128) = 90.5
    [(5.0, 16), (22.5, 16), (22.7, 32), (90.4, 64), (90.6, 128), (1e6, 256)],
)
def test_nearest_power_of_two_clamped_to_a_factor_4_of_the_reference(b_simple, expected):
    c = choose_batch(64, optimizer="adamw", **{**RECORDED, "b_simple": b_simple})
    assert c.effective == expected


@pytest.mark.parametrize("bad", [math.nan, -3.0, 0.0, math.inf])
def test_unmeasurable_noise_keeps_the_reference_batch(bad: float) -> None:
    c = choose_batch(64, optimizer="sgd", **{**RECORDED, "b_simple": bad})
    assert c.effective == 64 and c.lr_factor == 1.0 and "not measurable" in c.reason
    json.dumps(c.to_dict(), allow_nan=False)  # autopilot.json is strict JSON


def test_bounds_and_the_impossible_case() -> None:
    assert bounds(64, 3600) == (16, 256)
    assert bounds(64, 800) == (16, 100)  # an epoch keeps at least 8 steps
    assert bounds(16, 10_000) == (8, 64)
    check_possible(64, 128)  # 128 // 8 = 16 = the lower bound: just possible
    with pytest.raises(ConfigError, match="batch_size=auto needs a training part of at least 128"):
        check_possible(64, 127)
    with pytest.raises(ConfigError, match="at least 64"):
        check_possible(8, 63)  # the noise probe's draw


def _fake_memory(limit: int):
    """A memory probe that reports ``limit`` (the real one forks a child per tried batch
    on CPU, ~25 s; its own tests are in tests/test_batch*.py)."""
    calls: list[dict] = []

    def probe(task, **kwargs) -> MemoryProbe:
        calls.append(kwargs)
        tried = [b for b in (2, 4, 8, 16, 32, 64, 128, 256) if b <= kwargs["max_batch"]]
        return MemoryProbe(
            batch_size=min(limit, kwargs["max_batch"]),
            device="cpu",
            method="recorded",
            budget_bytes=1,
            baseline_bytes=0,
            memory_bytes=0.0,
            fixed_bytes=None,
            per_sample_bytes=None,
            points=tuple((b, 0) for b in tried),
            capped=limit >= kwargs["max_batch"],
            seconds=0.0,
        )

    return probe, calls


def test_measurement_is_deterministic_by_seed_and_stored(tmp_path: Path, monkeypatch) -> None:
    from lrpilot.tasks import get_task

    probe, calls = _fake_memory(32)
    monkeypatch.setattr("lrpilot.batch.memory.probe_memory", probe)
    task = get_task("mnist1d-mlp")
    a = ab.measure_and_choose(task, "adamw", 64, seed=3, device="cpu", root=None)
    b = ab.measure_and_choose(task, "adamw", 64, seed=3, device="cpu", root=tmp_path)
    assert a.evidence["b_simple"] == b.evidence["b_simple"] and a.effective == b.effective

    def strip(c: ab.BatchChoice) -> dict:
        return {
            **c.to_dict(),
            "evidence": {k: v for k, v in c.evidence.items() if k != "noise_probe"},
        }

    assert strip(a) == strip(b)
    assert calls[0]["max_batch"] == bounds(64, len(task.train_set))[1]
    # cost: the noise probe's draws and each tried memory batch x its training steps
    tried = a.evidence["memory_probe"]["tried"]
    assert a.samples == ab.NOISE_MEASUREMENTS * ab.NOISE_BIG + ab.MEMORY_STEPS * sum(tried)
    # stored: a resume reads the decision back instead of measuring again
    monkeypatch.setattr("lrpilot.batch.memory.probe_memory", None)
    again = ab.measure_and_choose(task, "adamw", 64, seed=3, device="cpu", root=tmp_path)
    assert again == b


def test_batch_only_run_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """lr and schedule fixed, batch_size auto: the batch is chosen (accumulation where the
    recorded memory limit is below it), the fixed LR follows by the rule (lr_scaling in
    config.yaml), and the probes' samples are in compute_multiple."""
    probe, _ = _fake_memory(16)
    monkeypatch.setattr("lrpilot.batch.memory.probe_memory", probe)
    out = tmp_path / "run"
    cfg = {
        "task": "mnist1d-mlp",
        "epochs": 1,
        "device": "cpu",
        "batch_size": "auto",
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "cosine"},
    }
    result = lrpilot.fit(cfg, out, progress="none")
    info = json.loads((out / "autopilot.json").read_text())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    choice = info["batch"]
    assert info["mode"] == "batch" and info["free"] == ["batch_size"]
    assert info["fixed"] == {"lr": 0.05, "schedule": {"name": "cosine"}}
    assert saved["batch_size"] == choice["batch"] == 16
    assert saved["accumulate"] == choice["accumulate"] == choice["effective"] // 16
    assert saved["lr_scaling"] == {"rule": "linear", "base_batch": 64, "conservative": 0.0}
    assert saved["optimizer"]["lr"] == 0.05 and saved["schedule"] == {"name": "cosine"}
    # the first step trains at the scaled peak (cosine starts at its peak)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(0.05 * choice["effective"] / 64)
    decision = info["decisions"][0]
    assert decision["name"] == "batch_size" and decision["value"] == choice["effective"]
    assert decision["evidence"]["memory_limit"] == 16 and "b_simple" in decision["evidence"]
    n = result.summary["samples_seen"]
    assert n == 4000  # no decision split when nothing is scored
    assert result.summary["compute_multiple"] == pytest.approx((n + choice["samples"]) / 4000)


def test_cli_auto_with_batch_size_auto_counts_the_batch_probes(tmp_path, monkeypatch, capsys):
    """``lrpilot auto --batch-size auto``: the batch decision comes first, the LR search runs
    at the chosen batch, and compute_multiple adds the batch probes' samples."""
    from lrpilot.cli import main

    probe, _ = _fake_memory(64)
    monkeypatch.setattr("lrpilot.batch.memory.probe_memory", probe)
    out = tmp_path / "run"
    args = ["auto", "--task", "mnist1d-mlp", "--epochs", "1", "--batch-size", "auto"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    info = json.loads((out / "autopilot.json").read_text())
    assert payload["decisions"][0]["name"] == "batch_size"
    assert info["free"] == ["lr", "schedule", "batch_size"] and info["mode"] == "search"
    c = info["batch"]
    assert c["batch"] * c["accumulate"] == c["effective"] == payload["decisions"][0]["value"]
    assert c["batch"] <= 64  # the recorded memory limit
    assert "searched at batch" in payload["decisions"][0]["evidence"]["lr"]
    comp = info["compute"]
    spent = (
        comp["batch_samples"]
        + comp["finder_samples"]
        + comp["trunk_samples"]
        + comp["probe_samples"]
        + comp["tail_samples"]
    )
    assert comp["batch_samples"] == c["samples"] > 0
    assert payload["compute_multiple"] == pytest.approx(spent / comp["one_run_samples"], abs=1e-3)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["batch_size"], saved["accumulate"]) == (c["batch"], c["accumulate"])


def test_batch_probes_measure_the_model_the_config_builds(tmp_path: Path, monkeypatch) -> None:
    """``model:`` settings reach the batch probes: they measure the network the run trains,
    not the task's default one."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from lrpilot.tasks import Task

    def build(width: int = 8, dropout: float = 0.0) -> nn.Module:
        return nn.Sequential(nn.Linear(4, width), nn.Dropout(dropout), nn.Linear(width, 3))

    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(1024, 4, generator=gen), torch.randint(0, 3, (1024,)))
    task = Task("settings", build, data, data, nn.functional.cross_entropy)
    seen: dict = {}

    class Measured(Exception):
        pass

    def capture(probed, *args, **kwargs):
        seen["model"] = probed.build_model()
        raise Measured

    monkeypatch.setattr("lrpilot.autopilot._run.measure_and_choose", capture)
    cfg = {
        "epochs": 1,
        "device": "cpu",
        "batch_size": "auto",
        "model": {"width": 5, "dropout": 0.3},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine"},
    }
    with pytest.raises(Measured):
        lrpilot.fit(cfg, tmp_path / "run", progress="none", task=task)
    assert seen["model"][0].out_features == 5 and seen["model"][1].p == 0.3
