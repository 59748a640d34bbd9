"""Checkpoints: atomic writes, safe loading, fallback, RNG capture, and resume in process."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.train import fit
from lrpilot.train._checkpoint import CheckpointManager, atomic_save, load_checkpoint
from lrpilot.train._rng import capture_rng, restore_rng


def test_atomic_save_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        atomic_save({"a": lambda: 0}, path)  # lambdas cannot be pickled
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["x.pt"]


def test_rotation_keeps_latest_and_previous(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        manager.save({"step": step})
    assert load_checkpoint(manager.latest_path)["step"] == 3
    assert load_checkpoint(manager.previous_path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "previous.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign", "version"])
def test_damaged_latest_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save({"step": 4, "w": torch.arange(1000.0)})
    manager.save({"step": 8, "w": torch.arange(1000.0) * 2})
    data = manager.latest_path.read_bytes()
    if damage == "truncate":
        manager.latest_path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        manager.latest_path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "empty":
        manager.latest_path.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"step": 99}, manager.latest_path)
    else:
        torch.save({"step": 99, "lrpilot_checkpoint_version": 999}, manager.latest_path)
    ckpt, notes = manager.newest_valid()
    assert ckpt is not None and ckpt["step"] == 4
    assert len(notes) == 1 and "latest.pt" in notes[0] and "falling back" in notes[0]
    with pytest.raises(ConfigError, match=r"latest\.pt"):
        load_checkpoint(manager.latest_path)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo should-not-run",))


def test_loading_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"lrpilot_checkpoint_version": 1, "x": _Evil()}, path)
    with pytest.raises(ConfigError, match="corrupted"):
        load_checkpoint(path)


def test_rng_capture_restore_roundtrip(tmp_path: Path) -> None:
    state = capture_rng()
    atomic_save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(5)  # move on
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


CONFIG = {
    "task": "mnist1d-mlp",
    "epochs": 3,
    "batch_size": 128,
    "schedule": {"name": "cosine", "warmup": {"epochs": 1}},
    "checkpoint_every": 10,
    "log_every": 5,
    "device": "cpu",
}


def test_resume_after_corrupted_latest_matches_uninterrupted(tmp_path: Path, capsys) -> None:
    reference = fit(CONFIG, tmp_path / "ref", progress="none")
    run = fit(CONFIG, tmp_path / "run", progress="none")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    previous_step = load_checkpoint(latest.with_name("previous.pt"))["step"]
    latest.write_bytes(latest.read_bytes()[:100])  # torn write
    (tmp_path / "run" / "summary.json").unlink()
    resumed = fit(CONFIG, tmp_path / "run", resume=True, progress="plain")
    out = capsys.readouterr().out
    assert "truncated or corrupted" in out and "falling back" in out
    assert f"resuming from step {previous_step}" in out
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["step"] for r in resumed.history.steps] == [r["step"] for r in run.history.steps]
    assert resumed.summary["steps_run"] == reference.summary["steps_run"]


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    fit({**CONFIG, "epochs": 2}, tmp_path / "run", progress="none")
    with pytest.raises(ConfigError, match="epochs: 2 -> 3"):
        fit(CONFIG, tmp_path / "run", resume=True, progress="none")


def test_resume_without_checkpoint_starts_over(tmp_path: Path, capsys) -> None:
    config = {**CONFIG, "epochs": 1, "schedule": {"name": "cosine"}}
    reference = fit(config, tmp_path / "ref", progress="none")
    fit(config, tmp_path / "run", progress="none")
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        path.unlink()
    resumed = fit(config, tmp_path / "run", resume=True, progress="plain")
    assert "starting again from step 0" in capsys.readouterr().out
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])
    assert len(resumed.history.steps) == len(reference.history.steps)
