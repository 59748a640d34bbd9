"""``lrpilot schedule show``: table, JSON, PNG, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrpilot import schedules as S
from lrpilot.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "schedules").glob("*.yaml"))


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


COSINE = "name: cosine\nlr: 0.1\nfinal_lr: 0.001\nwarmup: {steps: 10, start_lr: 0.0}\n"


def test_json_lists_every_step_with_exact_values(tmp_path, capsys):
    path = write(tmp_path, COSINE)
    assert main(["schedule", "show", path, "--total-steps", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = S.warmup(S.cosine(0.1, 40, 0.001), 10)
    assert out["steps"] == list(range(51))
    assert out["lr"] == [ref(t) for t in range(51)]
    assert "momentum" not in out


def test_table_shows_start_boundaries_and_end(tmp_path, capsys):
    path = write(
        tmp_path, "name: multistep\nunit: epochs\nlr: 0.1\ngamma: 0.5\nmilestones: [2, 4]\n"
    )
    assert main(["schedule", "show", path, "--steps-per-epoch", "10", "--total-steps", "60"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "│" in ln]
    cells = [[c.strip() for c in ln.strip("│ ").split("│")] for ln in lines]
    assert cells == [
        ["0", "0", "start", "0.1"],
        ["20", "2", "boundary", "0.05"],
        ["40", "4", "boundary", "0.025"],
        ["60", "6", "end", "0.025"],
    ]


def test_one_cycle_shows_momentum_and_png(tmp_path, capsys):
    path = write(tmp_path, "name: one_cycle\nmax_lr: 0.1\nsteps: 100\n")
    png = tmp_path / "plot.png"
    assert main(["schedule", "show", path, "--png", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["momentum"][0] == 0.95 and out["momentum"][29] == 0.85
    assert out["lr"][29] == 0.1 and len(out["steps"]) == 101
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_run_config_with_schedule_key(tmp_path, capsys):
    path = write(tmp_path, "task: digits-cnn\nschedule:\n  name: cosine\n  lr: 0.2\n  steps: 8\n")
    assert main(["schedule", "show", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lr"][0] == 0.2


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_render(example, capsys):
    assert (
        main(
            ["schedule", "show", str(example), "--steps-per-epoch", "100", "--total-steps", "4000"]
        )
        == 0
    )
    assert "start" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("yaml_text", "args", "pattern"),
    [
        ("name: cosine\nlr: 0.1\n", [], r"missing key 'steps'"),
        ("name: cosine\nlr: 0.1\nepochs: 3\n", [], r"needs steps_per_epoch"),
        ("name: cosine\nlr: -1\nsteps: 3\n", [], r"lr=-1 is out of range; allowed: \[0, inf\)"),
        ("name: cosin\nlr: 0.1\n", [], r"valid names: constant, cosine"),
        ("name: cosine\nlr: 0.1\nsteps: 5\nlrr: 1\n", [], r"unknown key 'lrr'"),
        ("name: [unclosed\n", [], r"invalid YAML"),
        ("- 1\n- 2\n", [], r"expected a mapping"),
        (
            "name: cosine\nlr: 0.1\nsteps: 5\n",
            ["--total-steps", "0"],
            r"--total-steps=0 is out of range",
        ),
        (
            "name: cosine\nlr: 0.1\nsteps: 5\n",
            ["--steps-per-epoch", "ten"],
            r"--steps-per-epoch='ten' is not an integer",
        ),
        ("name: constant\nlr: 0.1\n", [], r"no natural end; pass total_steps \(--total-steps N\)"),
        (
            "name: constant\nlr: 0.1\n",
            ["--total-steps", "2000000", "--json"],
            r"listing every step allows at most 1000000",
        ),
        (
            "name: cosine\nlr: 0.1\nsteps: 5\n",
            ["--png", "out.jpg"],
            r"--png='.*out.jpg' must end in .png",
        ),
        ("name: cosine\nlr: 0.1\nsteps: 5\n", ["--png", "missing/dir/out.png"], r"does not exist"),
    ],
)
def test_invalid_input_one_line_exit_2_nothing_written(tmp_path, capsys, yaml_text, args, pattern):
    path = write(tmp_path, yaml_text)
    args = [a.replace("out.jpg", str(tmp_path / "out.jpg")) for a in args]
    png = tmp_path / "never.png"
    if "--png" not in args:
        args += ["--png", str(png)]
    code = main(["schedule", "show", path, *args])
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lrpilot schedule: error: ")
    import re

    assert re.search(pattern, err), err
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_real_subprocess_exit_code_and_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("lrpilot")
    path = write(tmp_path, "name: cosine\nlr: 0.1\nepochs: 3\n")
    png = tmp_path / "x.png"
    proc = subprocess.run(
        [str(exe), "schedule", "show", path, "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "needs steps_per_epoch" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not png.exists()
