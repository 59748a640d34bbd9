"""``lrpilot tune``'s pruner options (``--prune-warmup``, ``--prune-startup``) and mapping
choices in the space (a whole sub-config such as a schedule with its own keys), against
Optuna itself and one real two-trial study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.search._space import (
    decode_values,
    encode_choice,
    overrides_for,
    parse_space,
    space_from_dicts,
    to_optuna,
    validate_space,
)

BASE = {"task": "digits-cnn", "epochs": 6, "optimizer": {"name": "sgd", "momentum": 0.9}}
ONE_CYCLE = {"name": "one_cycle"}
COSINE = {"name": "cosine", "warmup": {"epochs": 1}}
SCHEDULES = {"schedule": {"choice": [ONE_CYCLE, COSINE]}}


# ------------------------------------------------------------------ mapping choices
def test_mapping_choice_parses_round_trips_and_validates() -> None:
    params = parse_space({"optimizer.lr": {"log_uniform": [1e-3, 1.0]}, **SCHEDULES})
    assert params[1].args == (ONE_CYCLE, COSINE)
    assert space_from_dicts([p.to_dict() for p in params]) == params
    validate_space(params, BASE, n_train=1000)  # both schedules build as lrpilot fit builds them
    for bad in ({"name": "cosin"}, {"name": "cosine", "warmup": {"epoch": 1}}):
        space = parse_space({"schedule": {"choice": [ONE_CYCLE, bad]}})
        validate_space(space, BASE)  # the config alone does not build the schedule
        with pytest.raises(ConfigError, match=r"space schedule=\{'name': 'cosin.*schedule: "):
            validate_space(space, BASE, n_train=1000)
    name_only = parse_space({"schedule.name": {"choice": ["one_cycle", "wsdd"]}})
    with pytest.raises(ConfigError, match=r"space schedule\.name='wsdd': schedule: .*wsd"):
        validate_space(name_only, {**BASE, "schedule": ONE_CYCLE}, n_train=1000)


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ([ONE_CYCLE, json.dumps(ONE_CYCLE)], "repeats"),  # a mapping and its own JSON text
        ([ONE_CYCLE, {"name": "cosine", "lr": float("nan")}], "must be a scalar, a list"),
        ([{1: "a"}], "string keys"),
        ([float("inf"), 1.0], "must be a scalar"),
    ],
)
def test_mapping_choice_rejects(choices: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space({"schedule": {"choice": choices}})


def test_mapping_choice_replaces_the_config_value_whole() -> None:
    from lrpilot.train._sources import apply_overrides

    base = {**BASE, "schedule": {"name": "cosine", "warmup": {"epochs": 3}}}
    got = apply_overrides(base, overrides_for({"schedule": ONE_CYCLE}))
    assert got["schedule"] == ONE_CYCLE  # no warmup left over from the base config
    got = apply_overrides(base, overrides_for({"schedule": COSINE}))
    assert got["schedule"] == COSINE


def test_mapping_choice_through_a_real_optuna_study() -> None:
    optuna = pytest.importorskip("optuna")
    from lrpilot.search._report import TrialRow, importances, rows_from_optuna

    params = parse_space({"optimizer.lr": {"log_uniform": [1e-3, 1.0]}, **SCHEDULES})
    dists = to_optuna(params)
    assert dists["schedule"].choices == tuple(encode_choice(c) for c in (ONE_CYCLE, COSINE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(6):
        trial = study.ask(dists)
        values = decode_values(params, trial.params)
        assert values["schedule"] in (ONE_CYCLE, COSINE)
        assert values["optimizer.lr"] == trial.params["optimizer.lr"]
        seen.append(values["schedule"]["name"])
        study.tell(trial, values["optimizer.lr"])
    assert set(seen) == {"one_cycle", "cosine"}
    rows = rows_from_optuna(study, params)
    assert [r.params["schedule"]["name"] for r in rows] == seen
    assert rows_from_optuna(study)[0].params["schedule"] == encode_choice(
        rows[0].params["schedule"]
    )
    imp, note = importances(rows, params, "min")
    assert imp is not None and set(imp) == {"optimizer.lr", "schedule"}, note
    decoded = decode_values(params, {"schedule": encode_choice(COSINE)})["schedule"]
    decoded["warmup"]["epochs"] = 5  # a copy: the space's own choice is untouched
    assert params[1].args[1] == COSINE
    assert isinstance(rows[0], TrialRow)


# ------------------------------------------------------------------ pruner options
def _median_prunes_at(pruner, steps: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Steps at which ``pruner`` prunes a trial far below one completed trial."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=pruner)
    good = study.ask()
    for step in range(1, steps + 1):
        good.report(0.9, step)
    study.tell(good, 0.9)
    bad = study.ask()
    pruned = []
    for step in range(1, steps + 1):
        bad.report(0.1, step)
        if bad.should_prune():
            pruned.append(step)
    return pruned


def test_median_warmup_and_startup_as_optuna_applies_them() -> None:
    pytest.importorskip("optuna")
    from lrpilot.search._study import make_pruner

    # default (4 trials: 1 start-up trial): prunes from the first report (steps are epochs
    # trained, 1-based)
    assert _median_prunes_at(make_pruner("median", 4, 6), 5) == [1, 2, 3, 4, 5]
    # warm-up 3: not before 3 epochs were trained
    assert _median_prunes_at(make_pruner("median", 4, 6, warmup=3), 5) == [3, 4, 5]
    # start-up 2: one completed trial is not enough
    assert _median_prunes_at(make_pruner("median", 4, 6, startup=2), 5) == []


def test_hyperband_min_resource_is_the_warmup() -> None:
    pytest.importorskip("optuna")
    from lrpilot.search._study import make_pruner

    pruner = make_pruner("hyperband", 8, 15, warmup=4)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (4, 15, 3)
    assert make_pruner("hyperband", 8, 15)._min_resource == 1


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "space.yaml").write_text("optimizer.lr: {log_uniform: [0.01, 1]}\n")
    argv = ["tune", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml")]
    return [*argv, "--trials", "2", "--out", str(tmp_path / "o"), *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prune-warmup", "0"], "--prune-warmup=0 is out of range; allowed: [1, 5]"),
        (["--prune-warmup", "6"], "--prune-warmup=6 is out of range; allowed: [1, 5]"),
        (["--prune-startup", "-1"], "--prune-startup=-1 is out of range"),
        (["--pruner", "hyperband", "--prune-startup", "2"], "applies to --pruner median"),
        (["--pruner", "none", "--prune-warmup", "2"], "applies to --pruner median or hyperband"),
        (["--backend", "ray", "--prune-warmup", "2"], "--prune-warmup apply to --backend optuna"),
        (["--sampler-startup", "-1"], "--sampler-startup=-1 is out of range"),
        (["--sampler", "random", "--sampler-startup", "3"], "applies to --sampler tpe or cmaes"),
        (["--seed", str(2**32)], "--seed=4294967296 is out of range; allowed: [0, 4294967295]"),
        (["--seed", "-1"], "--seed=-1 is out of range; allowed: [0, 4294967295]"),
    ],
)
def test_cli_bad_pruner_options_exit_2_one_line_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list, message: str
) -> None:
    assert main(_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_cli_schedule_typo_in_the_space_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = _argv(tmp_path)
    (tmp_path / "space.yaml").write_text(
        "schedule: {choice: [{name: one_cycle}, {name: cosine, warmup: {epoch: 1}}]}\n"
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "space schedule={'name': 'cosine'" in err, err
    assert not (tmp_path / "o").exists()


def test_tpe_startup_trials_are_the_random_samplers_then_the_model() -> None:
    optuna = pytest.importorskip("optuna")
    from lrpilot.search._study import make_sampler

    dists = to_optuna(parse_space({"optimizer.lr": {"log_uniform": [1e-4, 1.0]}}))

    def draws(sampler) -> list[float]:  # type: ignore[no-untyped-def]
        study = optuna.create_study(sampler=sampler)
        out = []
        for _ in range(6):
            trial = study.ask(dists)
            out.append(trial.params["optimizer.lr"])
            study.tell(trial, abs(trial.params["optimizer.lr"] - 0.01))
        return out

    random = draws(make_sampler("random", 3))
    assert make_sampler("tpe", 3)._n_startup_trials == 10  # Optuna's default kept
    assert draws(make_sampler("tpe", 3)) == random  # all 6 are start-up trials
    tpe2 = draws(make_sampler("tpe", 3, startup=2))
    assert tpe2[:2] == random[:2] and tpe2[2:] != random[2:]


def test_workers_get_the_same_pruner_options(tmp_path: Path) -> None:
    from lrpilot.cli import build_parser
    from lrpilot.cli._tune_cmd import build_spec
    from lrpilot.search._study import worker_argv

    argv = _argv(tmp_path, "--prune-warmup", "2", "--sampler-startup", "3")
    spec = build_spec(build_parser().parse_args(argv))
    assert (spec.prune_warmup, spec.prune_startup, spec.sampler_startup) == (2, None, 3)
    argv = worker_argv(spec, tmp_path / "space.yaml")
    again = build_spec(build_parser().parse_args(argv[argv.index("tune") :]))
    assert (again.prune_warmup, again.prune_startup, again.pruner) == (2, None, "median")
    assert again.sampler_startup == 3
    spec = build_spec(build_parser().parse_args(_argv(tmp_path, "--prune-startup", "0")))
    argv = worker_argv(spec, tmp_path / "space.yaml")
    assert argv[argv.index("--prune-startup") + 1] == "0" and "--prune-warmup" not in argv


# ------------------------------------------------------------------ one real study
@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The trial children import ``test_search`` (its tiny task) and this checkout."""
    import os
    import sys

    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here), str(here.parent / "src"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if str(here) not in sys.path:
        monkeypatch.syspath_prepend(str(here))
    return dict(os.environ)


@pytest.mark.timeout(300)
def test_real_study_schedule_choice_steps_are_epochs_trained(
    tmp_path: Path, env: dict, capsys: pytest.CaptureFixture
) -> None:
    optuna = pytest.importorskip("optuna")
    from test_search import EPOCHS, write_inputs

    space = json.dumps({"optimizer.lr": {"log_uniform": [0.05, 0.5]}, **SCHEDULES})
    # one-cycle cycles momentum: SGD needs momentum > 0 (the space check builds the schedule)
    config, space_file = write_inputs(tmp_path, space, optimizer={"name": "sgd", "momentum": 0.9})
    out = tmp_path / "study"
    argv = ["tune", str(config), "--space", str(space_file), "--trials", "2", "--out", str(out)]
    argv += ["--pruner", "median", "--prune-warmup", "2", "--metric", "val_accuracy", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="base", storage=f"sqlite:///{out / 'study.db'}")
    for trial, row in zip(study.trials, summary["trials"], strict=True):
        # step = epochs trained: 1, 2, ..., every epoch the run logged (also those read
        # once the child had exited), so a completed trial has all of them
        steps = sorted(trial.intermediate_values)
        trained_epochs = EPOCHS if trial.state == optuna.trial.TrialState.COMPLETE else len(steps)
        assert steps == list(range(1, trained_epochs + 1)) and 1 <= len(steps) <= EPOCHS
        assert row["params"]["schedule"] in (ONE_CYCLE, COSINE)
        import yaml

        trained = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert trained["schedule"]["name"] == row["params"]["schedule"]["name"]
        assert trained["schedule"].get("warmup") == row["params"]["schedule"].get("warmup")
    best = yaml.safe_load(Path(summary["best_yaml"]).read_text())
    assert best["schedule"] == summary["best"]["params"]["schedule"]


def test_sampler_seeds_derived_from_the_largest_seed_stay_in_numpys_range() -> None:
    """Worker k seeds its sampler with ``seed + 1000 k + trials so far``, wrapped into
    numpy's ``[0, 2**32 - 1]``: the largest ``--seed`` works on a second worker."""
    optuna = pytest.importorskip("optuna")
    from lrpilot.search._study import make_sampler, sampler_seed

    assert sampler_seed(7, 0, 0) == 7 and sampler_seed(7, 2, 3) == 2010
    for name in ("tpe", "random"):
        study = optuna.create_study(sampler=make_sampler(name, sampler_seed(2**32 - 1, 1, 5)))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
        assert len(study.trials) == 2
    with pytest.raises(ValueError, match="2\\*\\*32"):  # what an unwrapped seed meets
        make_sampler("random", 2**32 - 1 + 1000 + 5)
