"""``lrpilot tune``'s pieces without training: the space (parsing, validation, exit 2 with
nothing written), the trial runner on stand-in children (prune = SIGTERM, a crash stays in
its trial), the accounting of retried trials, the missing-extra message."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.search._runner import EpochReader, fit_argv, run_trial
from lrpilot.search._space import (
    Param,
    load_space_yaml,
    overrides_for,
    parse_space,
    space_from_dicts,
    validate_space,
)

BASE = {"task": "digits-cnn", "epochs": 2, "optimizer": {"name": "sgd", "momentum": 0.9}}


def test_parse_space_all_kinds_and_round_trip() -> None:
    raw = {
        "optimizer.lr": {"log_uniform": [1e-4, 1.0]},
        "optimizer.momentum": {"uniform": [0.8, 0.99]},
        "epochs": {"int": [2, 6]},
        "schedule.name": {"choice": ["one_cycle", "cosine"]},
    }
    params = parse_space(raw)
    assert [(p.kind, p.args) for p in params] == [
        ("log_uniform", (1e-4, 1.0)),
        ("uniform", (0.8, 0.99)),
        ("int", (2, 6)),
        ("choice", ("one_cycle", "cosine")),
    ]
    assert space_from_dicts([p.to_dict() for p in params]) == params
    assert parse_space({"optimizer.lr": "auto_range"}) == [Param("optimizer.lr", "auto_range", ())]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"optimizer.lr": {"log_uniform": [1.0, 1.0]}}, "reversed or empty"),
        ({"optimizer.lr": {"log_uniform": [1.0, 0.1]}}, "reversed or empty"),
        ({"optimizer.lr": {"log_uniform": [0.0, 0.1]}}, "low > 0"),
        ({"optimizer.lr": {"uniform": ["a", 0.1]}}, "finite numbers"),
        ({"epochs": {"int": [1.5, 3]}}, "integers"),
        ({"optimizer.lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
        ({"batch_size": {"choice": []}}, "non-empty list"),
        ({"batch_size": {"choice": [32, 32]}}, "repeats"),
        ({"optimizer.lr": [1, 2]}, "expected auto_range"),
        ({"epochs": "auto_range"}, "optimizer.lr only"),
        ({"optimizer..lr": {"uniform": [0, 1]}}, "dotted config key"),
        ({"optimizer": {"choice": [1]}, "optimizer.lr": {"uniform": [0.1, 1]}}, "overlap"),
    ],
)
def test_parse_space_rejects(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(raw)


def test_validate_space_applies_every_bound_and_choice_to_the_config() -> None:
    validate_space(parse_space({"optimizer.lr": {"log_uniform": [1e-3, 1.0]}}), BASE)
    with pytest.raises(ConfigError, match=r"space optimizer\.lrr=.*unknown config key"):
        validate_space(parse_space({"optimizer.lrr": {"uniform": [0.1, 1]}}), BASE)
    with pytest.raises(ConfigError, match=r"batch_size='big'.*must be an integer"):
        validate_space(parse_space({"batch_size": {"choice": [32, "big"]}}), BASE)
    with pytest.raises(ConfigError, match=r"optimizer\.momentum=1\.5.*out of range"):
        validate_space(parse_space({"optimizer.momentum": {"uniform": [0.5, 1.5]}}), BASE)


def test_overrides_are_read_back_by_apply_overrides() -> None:
    from lrpilot.train._sources import apply_overrides

    values = {"optimizer.lr": 0.0123, "schedule.name": "cosine", "batch_size": 64}
    got = apply_overrides(BASE, overrides_for(values))
    assert got["optimizer"]["lr"] == 0.0123 and got["optimizer"]["momentum"] == 0.9
    assert got["schedule"] == {"name": "cosine"} and got["batch_size"] == 64


def test_load_space_yaml_reads_scientific_notation(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("optimizer.lr: {log_uniform: [1e-4, 1]}\n")
    assert load_space_yaml(path) == {"optimizer.lr": {"log_uniform": [1e-4, 1]}}
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="expected a mapping of search space keys"):
        load_space_yaml(path)
    path.write_text("\n")
    with pytest.raises(ConfigError, match="non-empty mapping"):
        load_space_yaml(path)
    path.write_text("optimizer.lr: {uniform: [0.1, 1]}\noptimizer.lr: {uniform: [0.2, 1]}\n")
    with pytest.raises(ConfigError):  # the hardened loader refuses a duplicate key
        load_space_yaml(path)


@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        ("optimizer.lrr: {uniform: [0.1, 1]}\n", [], "unknown config key"),
        ("optimizer.lr: {log_uniform: [0.1, 0.1]}\n", [], "reversed or empty"),
        ("batch_size: {choice: [32, big]}\n", [], "must be an integer"),
        ("optimizer.lr: {log_uniform: [0.1, 1]\n", [], "invalid YAML"),
        ("optimizer.lr: {log_uniform: [0.1, 1]}\n", ["--metric", "val_f1"], "val_f1"),
        ("optimizer.lr: {log_uniform: [0.1, 1]}\n", ["--trials", "0"], "--trials=0"),
        ("optimizer.lr: {log_uniform: [0.1, 1]}\n", ["--workers", "0"], "--workers=0"),
    ],
)
def test_cli_bad_input_exit_2_one_line_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, space: str, extra: list, message: str
) -> None:
    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "space.yaml").write_text(space)
    out = tmp_path / "study"
    argv = ["tune", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml")]
    argv += ["--trials", "2", "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrpilot tune: error:") and message in err
    assert not out.exists()


def test_epoch_reader_whole_lines_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = EpochReader(path)
    assert reader.read() == []
    rec = {"type": "epoch", "epoch": 0, "step": 5, "val_loss": 1.0}
    path.write_text(json.dumps({"type": "step", "step": 1, "epoch": 0}) + "\n" + json.dumps(rec))
    assert reader.read() == []  # the epoch line is not complete yet
    with open(path, "a") as fh:
        fh.write("\n")
    assert reader.read() == [rec]
    rec1 = {**rec, "epoch": 1}
    path.write_text(json.dumps(rec1) + "\n")  # shorter: a resume truncated it
    assert reader.read() == [rec1]


def _fake_child(tmp_path: Path, epochs: int, delay: float) -> list[str]:
    """A stand-in for ``lrpilot fit``: one epoch record every ``delay`` seconds."""
    code = (
        "import json, sys, time\n"
        f"f = open({str(tmp_path / 'run' / 'metrics.jsonl')!r}, 'w')\n"
        f"for e in range({epochs}):\n"
        f"    time.sleep({delay})\n"
        "    f.write(json.dumps({'type': 'epoch', 'epoch': e, 'val_loss': 2.0 - e}) + '\\n')\n"
        "    f.flush()\n"
    )
    return [sys.executable, "-c", code]


def test_run_trial_prune_sends_sigterm_and_waits(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []

    def on_epoch(epoch: int, value: float) -> bool:
        seen.append((epoch, value))
        return epoch == 1

    argv = _fake_child(tmp_path, epochs=1000, delay=0.05)
    outcome = run_trial(argv, tmp_path / "run", "val_loss", on_epoch)
    assert outcome.state == "pruned"
    assert outcome.returncode == -signal.SIGTERM  # stopped, not finished
    assert seen[:2] == [(0, 2.0), (1, 1.0)] and len(seen) == 2
    assert 2 <= outcome.epochs < 1000


def test_run_trial_complete_and_value_of_last_epoch(tmp_path: Path) -> None:
    outcome = run_trial(
        _fake_child(tmp_path, epochs=3, delay=0.0), tmp_path / "run", "val_loss", lambda e, v: False
    )
    assert (outcome.state, outcome.value, outcome.epochs, outcome.returncode) == (
        "complete",
        0.0,
        3,
        0,
    )


def test_run_trial_crash_stays_in_the_trial(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import os, sys; print('boom', flush=True); os.abort()"]
    outcome = run_trial(argv, tmp_path / "run", "val_loss", lambda e, v: False)
    assert outcome.state == "failed" and outcome.returncode == -signal.SIGABRT
    assert outcome.message == "boom"  # the child's last line, from RUN_DIR/fit.log
    assert outcome.value is None and outcome.epochs == 0


def test_fit_argv_starts_or_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "trial-0000"
    run_dir.mkdir()
    (run_dir / "junk").write_text("x")  # a start that never wrote config.yaml: cleared
    argv, resumed = fit_argv(tmp_path / "base.yaml", run_dir, {"optimizer.lr": 0.5})
    assert not resumed and not run_dir.exists()
    assert argv[-2:] == ["--set", "optimizer.lr=0.5"] and "--resume" not in argv
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("task: digits-cnn\n")
    argv, resumed = fit_argv(tmp_path / "base.yaml", run_dir, {"optimizer.lr": 0.5})
    assert resumed and "--resume" in argv and "--set" not in argv
    argv, _ = fit_argv(tmp_path / "b.yaml", run_dir, {}, launcher="torchrun --nproc-per-node 2")
    assert argv[:5] == ["torchrun", "--nproc-per-node", "2", "-m", "lrpilot.cli"]


def test_count_finished_does_not_count_a_retried_failure() -> None:
    from lrpilot.search._study import count_finished

    optuna = pytest.importorskip("optuna")
    state = optuna.trial.TrialState

    def t(number: int, st, **attrs):  # type: ignore[no-untyped-def]
        return SimpleNamespace(number=number, state=st, system_attrs=attrs)

    trials = [
        t(0, state.COMPLETE),
        t(1, state.FAIL),  # stale; retried as 3
        t(2, state.PRUNED),
        t(3, state.COMPLETE, failed_trial=1, retry_history=[1]),
        t(4, state.FAIL),  # a crash: counts
        t(5, state.RUNNING),
    ]
    assert count_finished(trials) == 4


def test_importances_guard_and_values() -> None:
    pytest.importorskip("optuna")
    from lrpilot.search._report import TrialRow, importances

    params = parse_space({"optimizer.lr": {"log_uniform": [1e-3, 1.0]}, "epochs": {"int": [1, 4]}})
    rows = [
        TrialRow(i, "complete", float(i), 1.0, {"optimizer.lr": 0.01, "epochs": 2})
        for i in range(2)
    ]
    imp, note = importances(rows, params, "min")
    assert imp is None and "at least 3" in note
    rows = [
        TrialRow(i, "complete", math.log(lr), 1.0, {"optimizer.lr": lr, "epochs": 2})
        for i, lr in enumerate([0.001, 0.01, 0.1, 0.3, 1.0])
    ]
    imp, note = importances(rows, params, "min")
    assert imp == {"optimizer.lr": 1.0}  # the only parameter that varies carries it all


def test_missing_extra_names_the_install_command(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "space.yaml").write_text("optimizer.lr: {log_uniform: [0.1, 1]}\n")
    code = (
        "import sys; sys.modules['optuna'] = None; sys.modules['ray'] = None\n"
        "import lrpilot, lrpilot.search, lrpilot.search._study\n"
        "from lrpilot.cli import main\n"
        f"sys.exit(main(['tune', {str(tmp_path / 'base.yaml')!r}, '--space', "
        f"{str(tmp_path / 'space.yaml')!r}, '--trials', '1', '--out', {str(tmp_path / 'o')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "pip install lrpilot[search]" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "ray", "--pruner", "median"], "--pruner apply to --backend optuna"),
        (["--backend", "ray", "--storage", "x.log"], "--storage apply to --backend optuna"),
        (["--ray-address", "auto"], "--ray-address applies to --backend ray"),
    ],
)
def test_cli_options_of_the_other_backend_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list, message: str
) -> None:
    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "space.yaml").write_text("optimizer.lr: {log_uniform: [0.1, 1]}\n")
    argv = ["tune", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml")]
    assert main([*argv, "--trials", "2", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_auto_range_is_resolved_once_per_study_and_kept(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from lrpilot.cli import build_parser
    from lrpilot.cli._tune_cmd import build_spec
    from lrpilot.search._study import open_study

    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "space.yaml").write_text("optimizer.lr: auto_range\n")
    argv = ["tune", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml")]
    argv += ["--trials", "2", "--out", str(tmp_path / "o")]
    calls: list[int] = []

    def resolve(params: list[Param]) -> list[Param]:  # stands in for the finder
        calls.append(1)
        return [Param("optimizer.lr", "log_uniform", (0.01 * len(calls), 0.5))]

    spec = build_spec(build_parser().parse_args(argv))
    study = open_study(spec, resolve=resolve)
    assert spec.params == [Param("optimizer.lr", "log_uniform", (0.01, 0.5))]
    assert study.user_attrs["space"] == [{"optimizer.lr": {"log_uniform": [0.01, 0.5]}}]
    again = build_spec(build_parser().parse_args(argv))
    open_study(again, resolve=resolve)
    assert len(calls) == 1  # the second command reuses the study's range
    assert again.params == spec.params
    (tmp_path / "space.yaml").write_text("optimizer.lr: {log_uniform: [0.1, 1]}\n")
    other = build_spec(build_parser().parse_args(argv))
    with pytest.raises(ConfigError, match="already exists with another space"):
        open_study(other, resolve=resolve)
