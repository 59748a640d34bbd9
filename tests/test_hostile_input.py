"""Hostile input to every command (issue 21): each case exits 2 with one line on stderr,
no traceback, and writes nothing. The cases cover the classes the audit found: YAML alias
bombs, huge numbers, deep nesting, devices and FIFOs as configs, duplicate keys, syntax
errors and rejected tags, task specs that name something other than a Task factory,
out-of-range values, missing output directories, and malformed logs for ``diagnose``.

Every case runs in-process. A regression to the slow behaviour (an alias bomb took 60 s
and 1.35 GB) trips the per-test timeout instead of a timed assertion.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.train import parse_config
from lrpilot.train._sources import load_yaml

TASK = "mnist1d-mlp"
BOMB = "\n".join(
    ["task: mnist1d-mlp", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)
FACTORIES = """
from lrpilot.tasks import get_task

def boom():
    raise RuntimeError("the data server\\nis down")

def leave():
    raise SystemExit(0)

def wrong():
    return 3

def needs(path):
    return get_task("mnist1d-mlp")

def annotated() -> int:
    raise AssertionError("never called")
"""

# (name, config text or None for a non-file, extra argv, text the message must hold)
FIT_CASES = [
    ("alias_bomb", BOMB, [], "alias bomb"),
    ("digits_2mb", "task: mnist1d-mlp\nseed: " + "9" * 2_000_000, [], "at most 65536"),
    ("digits_60k", "task: mnist1d-mlp\nseed: " + "9" * 60_000, [], "seed: a value of 60000"),
    ("int_5000", "task: mnist1d-mlp\nseed: " + "9" * 5000, [], "seed: a value of 5000"),
    ("int_80", "task: mnist1d-mlp\nseed: " + "9" * 80, [], "seed: a number of 80"),
    ("seed_2_70", "task: mnist1d-mlp\nseed: 1180591620717411303424\n", [], "seed=1180591"),
    ("seed_expr", "task: mnist1d-mlp\nseed: 2**70\n", [], "seed must be an integer"),
    ("nest_400", "task: mnist1d-mlp\nx: " + "[" * 400 + "]" * 400, [], "nested deeper"),
    ("duplicate", "task: mnist1d-mlp\nepochs: 1\nepochs: 2\n", [], ":3: duplicate key 'epochs'"),
    ("syntax", "task: mnist1d-mlp\noptimizer: {lr: 0.1\n", [], "invalid YAML"),
    ("tag", "task: !!python/object/apply:os.system ['true']\n", [], "invalid YAML"),
    ("task_colon", "task: ':'\n", [], "task ':': expected 'module:function'"),
    ("task_system", "task: os:system\n", [], "system is a built-in function"),
    ("task_exit", "task: sys:exit\n", [], "exit is a built-in function"),
    ("task_module", "task: os:path\n", [], "is a module"),
    ("task_number", "task: math:pi\n", [], "pi is a float, not callable"),
    ("task_bad_name", "task: 'a b:c'\n", [], "neither a module name nor a .py file"),
    ("task_raises", "task: FACT:boom\n", [], "boom() raised RuntimeError: the data server is"),
    ("task_exits", "task: FACT:leave\n", [], "leave() raised SystemExit: 0"),
    ("task_wrong", "task: FACT:wrong\n", [], "wrong() returned int, expected lrpilot.Task"),
    ("task_args", "task: FACT:needs\n", [], "needs() has required parameters (path)"),
    ("task_annot", "task: FACT:annotated\n", [], "annotated to return 'int'"),
    ("accumulate", "task: digits-cnn\naccumulate: 1000000\n", [], "allowed: [1, 23]"),
    ("list", "- task\n", [], "expected a mapping"),
    ("dev_zero", None, ["/dev/zero"], "not a regular file"),
    ("directory", None, ["DIR"], "is a directory"),
    ("fifo", None, ["FIFO"], "not a regular file"),
    ("set_expr", "task: mnist1d-mlp\n", ["--set", "seed=2**70"], "seed must be an integer"),
    ("set_digits", "task: mnist1d-mlp\n", ["--set", "seed=" + "9" * 5000], "seed"),
    ("set_dup", "task: mnist1d-mlp\n", ["--set", "optimizer={lr: 1, lr: 2}"], "duplicate key"),
    ("task_flag", None, ["--task", ":"], "task ':': expected"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def files_under(path: Path) -> set[str]:
    return {
        str(p.relative_to(path))
        for p in path.rglob("*")
        if "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    }


def check_refused(code: int, err: str, needle: str, before: set[str], tmp_path: Path, cmd: str):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"lrpilot {cmd}: error: "), err
    assert "Traceback" not in err
    assert needle in err, err
    assert files_under(tmp_path) == before  # nothing written (no run directory, no PNG)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "text", "extra", "needle"), FIT_CASES, ids=[c[0] for c in FIT_CASES]
)
def test_fit_refuses(name, text, extra, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    factories = tmp_path / "factories.py"
    factories.write_text(FACTORIES)
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")
    argv = ["fit"]
    if text is not None:
        config = tmp_path / "config.yaml"
        config.write_text(text.replace("FACT:", f"{factories}:"))
        argv.append(str(config))
    argv += [
        {"DIR": str(tmp_path / "adir"), "FIFO": str(tmp_path / "fifo.yaml")}.get(a, a)
        for a in extra
    ]
    argv += ["--out", str(tmp_path / "run"), "--progress", "none"]
    if "--task" in extra:
        argv += ["--set", "epochs=1"]
    before = files_under(tmp_path)
    code, err = run_cli(argv, capsys)
    check_refused(code, err, needle, before, tmp_path, "fit")


NO_DIR_PNG = "/nonexistent-lrpilot-dir/x.png"
METRICS_OK = '{"type": "step", "step": 1, "epoch": 0, "lr": 0.1, "train_loss": 2.0}\n'
# (name, file name, file bytes or None, argv after the command, text the message must hold)
OTHER_CASES = [
    ("find", "find_png", None, None, ["--task", TASK, "--png", NO_DIR_PNG], "does not exist"),
    ("find", "find_seed_expr", None, None, ["--task", TASK, "--seed", "2**70"], "--seed='2**70'"),
    ("find", "find_seed_big", None, None, ["--task", TASK, "--seed", str(2**70)], "--seed=1180"),
    ("find", "find_seed_5000", None, None, ["--task", TASK, "--seed", "9" * 5000], "out of range"),
    ("find", "find_task_exit", None, None, ["--task", "sys:exit"], "built-in function"),
    (
        "diagnose",
        "diag_png",
        "metrics.jsonl",
        METRICS_OK.encode(),
        ["--png", NO_DIR_PNG],
        "does not exist",
    ),
    (
        "diagnose",
        "diag_nul",
        "metrics.jsonl",
        METRICS_OK.encode() + b"\x00\x00\n" + METRICS_OK.encode(),
        [],
        ":2: a NUL byte",
    ),
    ("diagnose", "diag_nul_only", "metrics.jsonl", b"\x00" * 64, [], ":1: a NUL byte"),
    (
        "diagnose",
        "diag_str_loss",
        "metrics.jsonl",
        METRICS_OK.replace("2.0", '"abc"').encode(),
        [],
        ":1: train_loss='abc' is not a number",
    ),
    (
        "diagnose",
        "diag_str_step",
        "metrics.jsonl",
        METRICS_OK.replace('"step": 1', '"step": "x"').encode(),
        [],
        "step='x'",
    ),
    (
        "diagnose",
        "diag_big_int",
        "metrics.jsonl",
        METRICS_OK.replace('"step": 1', '"step": ' + "9" * 5000).encode() + METRICS_OK.encode(),
        [],
        ":1: not valid JSON",
    ),
    (
        "diagnose",
        "diag_ragged",
        "log.csv",
        b"epoch,loss,val_loss\n0,2.0,2.1\n1,1.0,1.5,7\n",
        [],
        "log.csv:3: 4 cells, but the header has 3",
    ),
    (
        "diagnose",
        "diag_short",
        "log.csv",
        b"epoch,loss,val_loss\n0,2.0\n",
        [],
        "log.csv:2: 2 cells",
    ),
    (
        "diagnose",
        "diag_csv_nul",
        "log.csv",
        b"epoch,loss\n0,2.0\n1,\x001.0\n",
        [],
        "log.csv:3: a NUL byte",
    ),
    (
        "diagnose",
        "diag_csv_str",
        "log.csv",
        b"epoch,loss\n0,abc\n",
        [],
        "log.csv:2: 'abc' is not a number",
    ),
    (
        "schedule",
        "sched_bomb",
        "s.yaml",
        BOMB.replace("task: mnist1d-mlp", "name: cosine").encode(),
        [],
        "alias bomb",
    ),
    (
        "schedule",
        "sched_dup",
        "s.yaml",
        b"name: cosine\nlr: 0.1\nlr: 0.2\n",
        [],
        "s.yaml:3: duplicate key 'lr'",
    ),
    ("schedule", "sched_tag", "s.yaml", b"name: !!python/name:os.system\n", [], "invalid YAML"),
    ("schedule", "sched_syntax", "s.yaml", b"name: [cosine\nlr: 1\n", [], "invalid YAML"),
    ("schedule", "sched_deep", "s.yaml", b"name: " + b"[" * 400 + b"]" * 400, [], "nested deeper"),
    (
        "schedule",
        "sched_png",
        "s.yaml",
        b"name: cosine\nlr: 1e-3\nsteps: 10\n",
        ["--png", NO_DIR_PNG],
        "does not exist",
    ),
    (
        "schedule",
        "sched_spe",
        "s.yaml",
        b"name: cosine\nlr: 1e-3\nsteps: 10\n",
        ["--steps-per-epoch", "9" * 5000],
        "is not an integer",
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("cmd", "name", "filename", "content", "args", "needle"),
    OTHER_CASES,
    ids=[c[1] for c in OTHER_CASES],
)
def test_other_commands_refuse(
    cmd, name, filename, content, args, needle, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = [cmd] if cmd != "schedule" else ["schedule", "show"]
    if filename is not None:
        (tmp_path / filename).write_bytes(content)
        argv.append(str(tmp_path / filename))
    argv += args
    before = files_under(tmp_path)
    code, err = run_cli(argv, capsys)
    check_refused(code, err, needle, before, tmp_path, cmd)
    assert not Path(NO_DIR_PNG).parent.exists()


def test_scientific_lr_accepted_by_fit_and_schedule_show(tmp_path, capsys):
    """One number parser: `lr: 1e-3` is a number for `fit` and for `schedule show`."""
    config = tmp_path / "c.yaml"
    config.write_text("task: digits-cnn\noptimizer: {name: adamw, lr: 1e-3}\n")
    assert parse_config(load_yaml(config)).optimizer.lr == 0.001
    sched = tmp_path / "s.yaml"
    sched.write_text("name: cosine\nlr: 1e-3\nsteps: 10\n")
    assert main(["schedule", "show", str(sched), "--json"]) == 0
    assert '"lr": [0.001' in capsys.readouterr().out


VALID = "task: digits-cnn\nepochs: 2\nbatch_size: 32\noptimizer:\n  name: sgd\n  lr: 0.1\n"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(VALID)),
            st.sampled_from(
                [
                    "&a ",
                    "*a",
                    "*b",
                    "<<: ",
                    "!!python/object ",
                    "{",
                    "}",
                    "[",
                    "]",
                    ":",
                    ": ",
                    "\n",
                    "\n  ",
                    "'",
                    '"',
                    "\x00",
                    "9" * 70,
                    "1e-3",
                    "-",
                    "- ",
                    "?",
                    "%",
                    "@",
                    "lr: 1\n",
                    "task: os:system\n",
                    "epochs: 2\n",
                    "\t",
                    "#",
                    "|",
                    ">",
                    "\\",
                ]
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_configs_raise_only_config_error(edits, tmp_path):
    """Random edits of a valid config: the reader and the validator either accept it or
    raise ConfigError in one line, never another exception."""
    text = VALID
    for position, piece in edits:
        position = min(position, len(text))
        text = text[:position] + piece + text[position:]
    path = tmp_path / "m.yaml"
    path.write_text(text)
    try:
        parse_config(load_yaml(path))
    except ConfigError as exc:
        assert "\n" not in str(exc)
