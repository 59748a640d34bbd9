"""``optimizer.lr: auto_range``'s finder record (its compute charged to the study) and
``lrpilot tune --seed-trial finder`` (the finder's point queued as the first trial), against
Optuna itself, a recomputation of the sweep's cost and one real ``lrpilot find``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrpilot.cli import build_parser, main
from lrpilot.search._space import (
    AUTO_RANGE_WIDEN,
    Param,
    auto_lr_finder,
    encode_choice,
    parse_space,
    range_from_interval,
    seed_values,
)

BASE = {
    "task": "digits-cnn",
    "epochs": 6,
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "one_cycle"},
}
ONE_CYCLE = {"name": "one_cycle"}
COSINE = {"name": "cosine", "warmup": {"epochs": 1}}
AUTO_SPACE = {"optimizer.lr": "auto_range", "schedule": {"choice": [ONE_CYCLE, COSINE]}}
FINDER = {"interval": [0.05, 0.2], "suggestion": 0.1, "epochs_of_compute": 0.3, "compute": 0.05}


# ------------------------------------------------------------------ seed values
def test_seed_values_take_the_base_point_where_the_space_has_it() -> None:
    space = parse_space(
        {
            "optimizer.lr": {"log_uniform": [0.01, 1.0]},
            "schedule": {"choice": [ONE_CYCLE, COSINE]},
            "optimizer.momentum": {"uniform": [0.8, 0.95]},
            "batch_size": {"choice": [32, 128]},
            "optimizer.weight_decay": {"log_uniform": [1e-5, 1e-3]},
        }
    )
    got = seed_values(space, {**BASE, "batch_size": 64}, 0.3)
    # lr: the suggestion; schedule and momentum: the base's; batch 64 is not a choice and
    # the base has no weight decay: both left to the sampler
    assert got == {
        "optimizer.lr": 0.3,
        "schedule": encode_choice(ONE_CYCLE),
        "optimizer.momentum": 0.9,
    }
    assert seed_values(space, {**BASE, "schedule": {"name": "wsd"}}, 0.3) == {
        "optimizer.lr": 0.3,
        "optimizer.momentum": 0.9,
    }
    # the range's bounds are inside it
    edge = {**BASE, "optimizer": {"name": "sgd", "momentum": 0.95}}
    assert seed_values(space, edge, 0.3)["optimizer.momentum"] == 0.95


def test_range_from_interval_is_the_documented_widening() -> None:
    low, high = range_from_interval([0.05, 0.2])
    assert low == pytest.approx(0.05 / AUTO_RANGE_WIDEN) and high == pytest.approx(0.2 * 3)


# ------------------------------------------------------------------ CLI validation
def _argv(tmp_path: Path, space: dict, *extra: str) -> list[str]:
    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "space.yaml").write_text(json.dumps(space))
    argv = ["tune", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml")]
    return [*argv, "--trials", "3", "--out", str(tmp_path / "o"), *extra]


@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        (
            {"optimizer.lr": {"log_uniform": [0.01, 1]}},
            ["--seed-trial", "finder"],
            "--seed-trial finder needs optimizer.lr: auto_range",
        ),
        (AUTO_SPACE, ["--seed-trial", "finder", "--backend", "ray"], "--seed-trial apply"),
    ],
)
def test_cli_bad_seed_trial_exit_2_one_line_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, space: dict, extra: list, message: str
) -> None:
    assert main(_argv(tmp_path, space, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_cli_unknown_seed_trial_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_argv(tmp_path, AUTO_SPACE, "--seed-trial", "grid"))
    assert exc.value.code == 2 and "invalid choice: 'grid'" in capsys.readouterr().err


# ------------------------------------------------------------------ the study
def _open(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    from lrpilot.cli._tune_cmd import build_spec
    from lrpilot.search._study import open_study

    spec = build_spec(build_parser().parse_args(_argv(tmp_path, AUTO_SPACE, *extra)))
    calls: list[int] = []

    def resolve(params: list[Param]) -> list[Param]:  # stands in for the finder
        calls.append(1)
        spec.finder.update(FINDER)
        return [Param("optimizer.lr", "log_uniform", (0.02, 0.6)), params[1]]

    return spec, open_study(spec, resolve=resolve), calls


def test_seed_trial_is_the_first_trial_once_and_the_finder_is_kept(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from optuna.trial import TrialState

    from lrpilot.search._space import to_optuna

    spec, study, calls = _open(tmp_path, "--seed-trial", "finder")
    assert calls == [1] and study.user_attrs["finder"] == FINDER
    first = study.ask(to_optuna(spec.params))
    assert first.number == 0
    assert first.params == {"optimizer.lr": 0.1, "schedule": encode_choice(ONE_CYCLE)}
    study.tell(first, 0.5)
    assert study.trials[0].user_attrs["seeded_by"] == "finder"
    # the same command again: the study's finder record back, no second finder, no re-queue
    again, study2, calls2 = _open(tmp_path, "--seed-trial", "finder")
    assert calls2 == [] and again.finder == FINDER and again.params == spec.params
    assert not any(t.state == TrialState.WAITING for t in study2.trials)
    second = study2.ask(to_optuna(again.params))
    assert "seeded_by" not in study2.trials[second.number].user_attrs


def test_without_seed_trial_nothing_is_queued(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from optuna.trial import TrialState

    _spec, study, calls = _open(tmp_path)
    assert calls == [1] and study.user_attrs["finder"] == FINDER
    assert not any(t.state == TrialState.WAITING for t in study.trials)


def test_summary_compute_charges_the_finder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("optuna")
    from lrpilot.cli._tune_cmd import build_spec, finish
    from lrpilot.search._report import TrialRow

    spec = build_spec(build_parser().parse_args(_argv(tmp_path, AUTO_SPACE)))
    rows = [
        TrialRow(0, "complete", 0.9, 1.0, {"optimizer.lr": 0.1}, None, None),
        TrialRow(1, "pruned", 0.5, 0.5, {"optimizer.lr": 0.3}, None, None),
    ]
    finish(spec, rows, storage=None, as_json=True)
    assert json.loads(capsys.readouterr().out)["compute"] == pytest.approx(1.5)
    spec.finder.update(FINDER)
    finish(spec, rows, storage=None, as_json=True)
    summary = json.loads(capsys.readouterr().out)
    assert summary["compute"] == pytest.approx(1.5 + FINDER["compute"])
    assert summary["finder"] == FINDER


# ------------------------------------------------------------------ one real finder
@pytest.mark.timeout(300)
def test_auto_lr_finder_record_against_lrpilot_find(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    src = str(Path(__file__).resolve().parent.parent / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    found = auto_lr_finder({**BASE, "batch_size": 32})
    assert found["argv"][:2] == ["lrpilot", "find"] and "32" in found["argv"]
    lo, hi = found["interval"]
    assert 0 < lo <= found["suggestion"] <= hi
    # the sweep's cost, recomputed: samples seen / training-set size, over the run's epochs
    from lrpilot.tasks import get_task

    n_train = len(get_task("digits-cnn").train_set)
    assert found["epochs_of_compute"] * n_train == pytest.approx(found["samples"], rel=1e-9)
    assert found["compute"] == pytest.approx(found["epochs_of_compute"] / BASE["epochs"])
    evidence: dict = {}
    from lrpilot.search._space import resolve_auto

    monkeypatch.setattr("lrpilot.search._space.auto_lr_finder", lambda base: found)
    (param,) = resolve_auto(parse_space({"optimizer.lr": "auto_range"}), BASE, evidence)
    assert param.args == range_from_interval(found["interval"])
    assert evidence == {**found, "range": list(param.args)}
