"""Extending a finished run is refused in one line that says why and names the supported
way (issue 21); resuming it unchanged says it is complete (tests/test_fit.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lrpilot.cli import main
from lrpilot.train import fit

FAST = {"task": "mnist1d-mlp", "epochs": 1, "batch_size": 128, "log_every": 1, "device": "cpu"}


def test_resume_with_more_epochs_is_refused_naming_the_way(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    fit(FAST, run, progress="none")
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(FAST))
    args = ["fit", str(path), "--out", str(run), "--resume", "--set", "epochs=3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "changed: epochs: 1 -> 3" in err and "a run cannot be extended" in err
    assert "start a new run with the new epochs (another --out)" in err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == files  # nothing written
    # another changed key: the plain refusal, without the extension note
    assert main(["fit", str(path), "--out", str(run), "--resume", "--set", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "changed: seed: 0 -> 3" in err and "extended" not in err
