"""``auto`` values in a ``lrpilot fit`` config: parsing, every contradiction (exit 2, one
line, nothing written), and ``lrpilot fit`` routed to the autopilot end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from lrpilot.autopilot import fit
from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.tasks import Task
from lrpilot.train._auto_config import any_auto, auto_request


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("raw", "free", "fixed"),
    [
        ({"optimizer": {"lr": "auto"}}, ("lr", "schedule"), {}),
        (
            {"optimizer": {"lr": "auto"}, "schedule": {"name": "cosine"}},
            ("lr",),
            {"schedule": {"name": "cosine"}},
        ),
        ({"schedule": "auto", "optimizer": {"lr": 0.01}}, ("schedule",), {"lr": 0.01}),
        ({"schedule": {"name": "auto"}}, ("schedule",), {}),
        ({"batch_size": "auto"}, ("batch_size",), {}),
        (
            {"batch_size": "auto", "optimizer": {"lr": "auto"}, "schedule": "auto"},
            ("lr", "schedule", "batch_size"),
            {},
        ),
        ({"batch_size": 32, "schedule": "auto"}, ("schedule",), {"batch_size": 32}),
    ],
)
def test_each_auto_key_is_free_and_the_rest_fixed(raw, free, fixed) -> None:
    raw = {"task": "mnist1d-mlp", **raw}
    assert any_auto(raw)
    req = auto_request(raw)
    assert req.free == free
    assert req.fixed() == fixed
    # the fixed part holds no "auto" and keeps everything else as written
    assert "auto" not in json.dumps(req.raw)
    assert req.raw["task"] == "mnist1d-mlp"


def test_fit_s_own_auto_values_stay_valid_next_to_autopilot_ones() -> None:
    from lrpilot.train._config import parse_config

    raw = {
        "task": "mnist1d-mlp",
        "optimizer": {"lr": "auto", "implementation": "auto", "no_decay": "auto"},
        "device": "auto",
        "checkpoint_every": "auto",
    }
    req = auto_request(raw)
    assert req.free == ("lr", "schedule")
    cfg = parse_config(req.raw)
    assert (cfg.device, cfg.checkpoint_every, cfg.optimizer.no_decay) == ("auto", "auto", "auto")


def test_a_config_without_auto_is_fit_as_before() -> None:
    assert not any_auto({"task": "t", "optimizer": {"lr": 0.1}, "schedule": {"name": "cosine"}})
    assert not any_auto({"task": "t", "optimizer": "auto"})  # not where auto is allowed


CONTRADICTIONS = [
    (
        {"schedule": {"name": "auto", "warmup": {"steps": 10}}},
        "schedule.warmup={'steps': 10} contradicts schedule: auto",
    ),
    (
        {"optimizer": {"lr": "auto"}, "schedule": {"name": "cosine", "lr": 0.1}},
        "schedule.lr=0.1 fixes the peak LR, which contradicts optimizer.lr: auto",
    ),
    (
        {"optimizer": {"lr": "auto"}, "schedule": {"name": "one_cycle", "max_lr": 0.1}},
        "schedule.max_lr=0.1 fixes the peak LR",
    ),
    (
        {
            "optimizer": {"lr": "auto"},
            "schedule": {"name": "join", "schedules": [], "boundaries": []},
        },
        "schedule.name='join' states its own LRs",
    ),
    ({"optimizer": {"lr": "auto"}, "plateau": {"patience": 2}}, "plateau contradicts an auto"),
    ({"batch_size": "auto", "accumulate": 4}, "accumulate=4 contradicts batch_size: auto"),
    (
        {"batch_size": "auto", "lr_scaling": {"base_batch": 64}},
        "lr_scaling contradicts auto values",
    ),
    ({"schedule": "auto", "grad_clip": "auto"}, "grad_clip"),
    ({"schedule": "auto", "epoch": 2}, "unknown config key 'epoch'"),
    ({"schedule": "auto", "optimizer": {"lr": "fast"}}, "optimizer.lr"),
    ({"optimizer": {"lr": "auto", "name": "lion"}}, "optimizer.name='lion'"),
    ({"schedule": "auto", "optimizer": {"lr": 0.01}, "epochs": 0}, "epochs=0"),
    (
        {"optimizer": {"lr": "auto"}, "schedule": {"name": "cosine", "warmup": {"stepz": 3}}},
        "warmup",
    ),
]


@pytest.mark.parametrize(("patch", "fragment"), CONTRADICTIONS)
def test_contradictions_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, capsys, patch: dict, fragment: str
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"task": "mnist1d-mlp", "epochs": 1, **patch}))
    out = tmp_path / "run"
    assert main(["fit", str(cfg), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrpilot fit: error:"), err
    assert fragment in err[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def _small_task(n: int) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    return Task(
        "small",
        lambda: torch.nn.Linear(4, 2),
        data,
        data,
        torch.nn.functional.cross_entropy,
        defaults={"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
    )


def test_batch_size_auto_on_a_too_small_training_set_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"batch_size=auto needs a training part of at least"):
        fit({"batch_size": "auto", "schedule": {"name": "constant"}}, out, task=_small_task(60))
    assert not out.exists()


@pytest.mark.parametrize(("value", "fragment"), [("0", "out of range"), ("big", "not valid")])
def test_cli_batch_size_flag_accepts_auto_or_an_integer(tmp_path, capsys, value, fragment):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        main(["auto", "--task", "mnist1d-mlp", "--batch-size", value, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "auto" in err[0]
    assert not out.exists()


# ------------------------------------------------------------------------ end to end
def _fit(tmp_path: Path, raw: dict, name: str = "run") -> tuple[Path, dict, dict]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / name
    assert main(["fit", str(cfg), "--out", str(out), "--progress", "none"]) == 0
    info = json.loads((out / "autopilot.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return out, info, summary


BASE = {"task": "mnist1d-mlp", "epochs": 1, "device": "cpu", "log_every": 1}


def test_fit_with_lr_auto_chooses_the_peak_and_the_schedule(tmp_path: Path) -> None:
    out, info, summary = _fit(tmp_path, {**BASE, "optimizer": {"lr": "auto"}, "grad_clip": 1.0})
    assert info["free"] == ["lr", "schedule"] and info["mode"] == "search"
    assert summary["status"] == "completed"
    comp = info["compute"]
    assert summary["compute_multiple"] == comp["compute_multiple"]
    spent = comp["trunk_samples"] + comp["probe_samples"] + comp["tail_samples"]
    assert comp["compute_multiple"] == pytest.approx(spent / comp["one_run_samples"], abs=1e-3)
    if summary["steps_run"] == summary["steps_planned"]:  # a guard rescue redoes steps
        assert comp["compute_multiple"] <= 1.3 + 1e-9
    decided = {d["name"]: d["value"] for d in info["decisions"]}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["grad_clip"] == 1.0  # a fixed value is kept as written
    assert saved["optimizer"]["lr"] == decided["peak_lr"]
    assert saved["schedule"] == info["schedule"]


def test_fit_with_lr_auto_keeps_a_fixed_schedule_from_step_0(tmp_path: Path) -> None:
    """Only the peak is chosen: the final run trains from step 0 under the user's schedule
    at that peak (the logged LRs are the schedule's, recomputed independently)."""
    from lrpilot.schedules import from_config

    schedule = {"name": "cosine", "warmup": {"steps": 10}}
    out, info, summary = _fit(tmp_path, {**BASE, "optimizer": {"lr": "auto"}, "schedule": schedule})
    assert info["free"] == ["lr"] and info["mode"] == "restart"
    assert info["fixed"]["schedule"] == schedule
    peak = next(d["value"] for d in info["decisions"] if d["name"] == "peak_lr")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["schedule"] == schedule and saved["optimizer"]["lr"] == peak
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("type") == "step"]
    total = summary["steps_planned"]
    # a new run: all the training data from step 0 (the decision split included)
    assert info["decision_split"]["trained_on_from_epoch"] == 0
    n_full, batch = info["decision_split"]["of"], info["batch_size"]
    assert total == info["epochs"] * -(-n_full // batch)
    ref = from_config({**schedule, "lr": peak}, total_steps=total)
    # a record is numbered by the steps done; its LR is the one that step trained at
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    assert steps[0]["lr"] == 0.0  # the warmup starts at 0: the run starts at step 0
    for r in steps:
        assert r["lr"] == pytest.approx(ref(r["step"] - 1), rel=1e-6, abs=1e-12)
    # the probes and the discarded trunk are paid for: total samples over one run
    comp = info["compute"]
    assert comp["tail_samples"] == summary["samples_seen"]
    spent = comp["trunk_samples"] + comp["probe_samples"] + comp["tail_samples"]
    assert comp["compute_multiple"] == pytest.approx(
        (spent + comp["finder_samples"]) / comp["one_run_samples"]
    )
    if summary["steps_run"] == summary["steps_planned"]:
        assert comp["compute_multiple"] <= 1.3 + 1e-9
    # a resume (without the config: autopilot/request.yaml holds it, auto values included)
    # finds every probe done and the run complete
    request = yaml.safe_load((out / "autopilot" / "request.yaml").read_text())
    assert request["optimizer"] == {"lr": "auto"} and request["schedule"] == schedule
    assert main(["fit", "--out", str(out), "--resume", "--progress", "none"]) == 0
    again = json.loads((out / "autopilot.json").read_text())
    assert again["decisions"] == info["decisions"] and again["compute"] == info["compute"]


def test_fit_with_schedule_auto_keeps_the_fixed_lr(tmp_path: Path) -> None:
    _, info, _ = _fit(tmp_path, {**BASE, "schedule": "auto", "optimizer": {"lr": 0.004}})
    assert info["free"] == ["schedule"] and info["fixed"]["lr"] == 0.004
    peak = next(d for d in info["decisions"] if d["name"] == "peak_lr")
    assert peak["value"] == 0.004 and peak["reason"] == "fixed by the user"
    assert info["candidates"] == []  # nothing searched: only the shape and warmup
    assert info["decision_split"]["trained_on_from_epoch"] == 0  # nothing to decide
