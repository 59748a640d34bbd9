"""Atomic writes keep the mode an ordinary file would get (0666 & ~umask), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from lrpilot._atomic_io import atomic_write_bytes, default_file_mode
from lrpilot.train._checkpoint import CheckpointManager


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_file_mode(directory: Path) -> int:
    """The independent reference: the mode open(..., 'w') gives under the current umask."""
    reference = directory / "reference.txt"
    reference.write_text("x")
    return _mode(reference)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_uses_the_umask_mode(tmp_path: Path, umask, mask: int) -> None:
    umask(mask)
    target = tmp_path / "summary.json"
    atomic_write_bytes(b"{}", target)
    assert _mode(target) == _plain_file_mode(tmp_path) == 0o666 & ~mask
    assert default_file_mode() == 0o666 & ~mask


def test_checkpoints_use_the_umask_mode(tmp_path: Path, umask) -> None:
    umask(0o022)
    manager = CheckpointManager(tmp_path / "checkpoints")
    manager.save({"step": 1, "w": torch.zeros(1)})
    manager.save({"step": 2, "w": torch.ones(1)})  # rotated: previous.pt keeps its mode
    assert _mode(manager.latest_path) == 0o644
    assert _mode(manager.previous_path) == 0o644
