"""``fit(..., prepare=...)``: the seam the autopilot drives fit's engine through."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from lrpilot.train import fit, parse_config

FAST = {"task": "mnist1d-mlp", "epochs": 1, "batch_size": 128, "log_every": 1, "device": "cpu"}


def _steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "step"]


def _with_lr(lr: float):  # type: ignore[no-untyped-def]
    cfg = parse_config(FAST)
    return replace(cfg, optimizer=replace(cfg.optimizer, lr=lr))


def test_prepare_runs_once_before_the_loop_writes_anything(tmp_path: Path) -> None:
    seen: list[tuple] = []

    def prepare(engine, run_dir):  # type: ignore[no-untyped-def]
        seen.append((engine.state.step, sorted(p.name for p in run_dir.iterdir())))
        return None

    result = fit(FAST, tmp_path / "run", progress="none", prepare=prepare)
    assert len(seen) == 1
    step, files = seen[0]
    assert step == 0 and not {"config.yaml", "metrics.jsonl", "run.json"} & set(files)
    assert result.summary["status"] == "completed"


def test_an_engine_left_at_step_0_is_built_afresh_for_the_returned_config(tmp_path: Path):
    """The prepare trains and goes back to its start snapshot, then returns another LR: the
    run is bit-identical to a plain fit of that config."""

    def prepare(engine, run_dir):  # type: ignore[no-untyped-def]
        start = engine.snapshot()
        engine.run_steps(5)
        engine.restore(start)
        return _with_lr(0.003)

    a = fit(FAST, tmp_path / "a", progress="none", prepare=prepare)
    b = fit(_with_lr(0.003), tmp_path / "b", progress="none")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["train_loss"] for r in _steps(a.run_dir)] == [
        r["train_loss"] for r in _steps(b.run_dir)
    ]


def test_the_loop_continues_where_prepare_left_the_engine(tmp_path: Path) -> None:
    """Steps the prepare ran (here 7, at a constant LR it set) are the run's: the loop
    starts at step 7 under the returned schedule and ends where the run ends."""
    from lrpilot.schedules import constant

    def prepare(engine, run_dir):  # type: ignore[no-untyped-def]
        engine.set_schedule(constant(0.004))
        engine.run_steps(7)
        cfg = parse_config({**FAST, "schedule": {"name": "constant", "lr": 0.004}})
        return cfg

    result = fit(FAST, tmp_path / "run", progress="none", prepare=prepare)
    steps = _steps(result.run_dir)
    total = result.summary["steps_planned"]
    assert [r["step"] for r in steps] == list(range(8, total + 1))
    assert all(r["lr"] == pytest.approx(0.004) for r in steps)
    assert result.summary["samples_seen"] == 4000  # every sample of the epoch, once


def test_prepare_may_change_only_the_lr_the_schedule_and_the_guards_replay(
    tmp_path: Path,
) -> None:
    def prepare(engine, run_dir):  # type: ignore[no-untyped-def]
        return parse_config({**FAST, "epochs": 2})

    with pytest.raises(
        ValueError,
        match=r"only optimizer\.lr, schedule, guard\.snapshot_every, guard\.max_replay; "
        r"changed: epochs: 1 -> 2",
    ):
        fit(FAST, tmp_path / "run", progress="none", prepare=prepare)
    assert not (tmp_path / "run").exists()


def test_prepare_sets_the_guards_snapshot_interval_and_replay_limit(tmp_path: Path) -> None:
    """The loop's guard takes the prepared config's ``snapshot_every`` and ``max_replay``
    (the autopilot sizes them to its budget): a NaN planted at step 11, after 3 prepared
    steps, is rescued from a step snapshot (the run's own ``snapshot_every`` of 50 has only
    the fit's first one, step 3) without running steps again (``max_replay: 0``)."""
    import math

    from test_fit_syncfree import PlantedLoss, config, make_task

    task = make_task(PlantedLoss({11}, math.nan))
    cfg = config()

    def prepare(engine, run_dir):  # type: ignore[no-untyped-def]
        engine.run_steps(3)  # a kept trainer: its guard callback is updated in place
        return parse_config({**cfg, "guard": {"snapshot_every": 2, "max_replay": 0}}, task=task)

    result = fit(cfg, tmp_path / "run", task=task, progress="none", prepare=prepare)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["guard"]
    assert (saved["snapshot_every"], saved["max_replay"]) == (2, 0)
    (rescue,) = [e for e in result.summary["guard"]["actions"] if e["action"] == "guard_rescue"]
    assert rescue["step"] == 11 and rescue["restored_step"] == 7
    assert rescue["replayed"] is False and result.summary["steps_rewound"] == 0


def test_qualify_findings_rewrites_the_diagnosis_before_it_is_printed_and_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lrpilot.diagnosis import diagnose
    from lrpilot.history import History
    from lrpilot.train._loop import Prepared

    seen: list[list[str]] = []

    def qualify(findings):  # type: ignore[no-untyped-def]
        seen.append([f.kind for f in findings])
        return [replace(f, advice="QUALIFIED " + f.advice) for f in findings]

    def prepare(engine, run_dir):  # type: ignore[no-untyped-def]
        return Prepared(parse_config(FAST), qualify_findings=qualify)

    result = fit(FAST, tmp_path / "run", progress="plain", prepare=prepare)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())["diagnosis"]
    # the qualifier saw exactly what the diagnosis of the run's metrics finds
    plain = diagnose(History.read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert seen == [[f.kind for f in plain]]
    assert [f["advice"] for f in saved] == ["QUALIFIED " + f.advice for f in plain]
    assert result.summary["diagnosis"] == saved
    printed = [x for x in capsys.readouterr().out.splitlines() if "diagnosis:" in x]
    assert printed and all("QUALIFIED" in x for x in printed)


def test_without_a_qualifier_the_diagnosis_is_the_plain_one(tmp_path: Path) -> None:
    from lrpilot.diagnosis import diagnose
    from lrpilot.history import History

    result = fit(FAST, tmp_path / "run", progress="none", prepare=lambda e, d: None)
    plain = diagnose(History.read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert result.summary["diagnosis"] == [f.to_dict() for f in plain]
