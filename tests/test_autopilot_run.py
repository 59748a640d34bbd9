"""``lrpilot auto`` end to end: the run directory, the compute accounting recomputed from
the recorded candidates, bad input, and a resume after a real kill."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lrpilot.autopilot._decide import (
    Probe,
    anchored_peak,
    blend_peak,
    choose_peak,
    prior_lr,
    probe_bias,
)
from lrpilot.autopilot._ladder import first_round
from lrpilot.cli import main
from lrpilot.train import Callback

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _auto(out: Path, *extra: str) -> int:
    return main(["auto", "--task", "mnist1d-mlp", "--epochs", "2", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "run"
    assert _auto(out, "--json") == 0
    return out


def test_run_directory_holds_fit_outputs_and_the_report(run_dir, capsys):
    for name in ("summary.json", "metrics.jsonl", "config.yaml", "autopilot.json", "autopilot.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tensorboard").is_dir() and (run_dir / "checkpoints").is_dir()
    info = json.loads((run_dir / "autopilot.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert summary["compute_multiple"] == info["compute"]["compute_multiple"]
    names = [d["name"] for d in info["decisions"]]
    assert "peak_lr" in names and "schedule" in names
    # config.yaml holds the schedule that was trained with, and it peaks at the chosen LR
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["schedule"] == info["schedule"]
    peak = next(d["value"] for d in info["decisions"] if d["name"] == "peak_lr")
    from lrpilot.schedules import from_config

    sched = from_config(cfg["schedule"])
    assert max(sched(t) for t in range(summary["steps_planned"])) == pytest.approx(peak)
    # every candidate carries its cost and its evidence
    for c in info["candidates"]:
        assert c["samples"] > 0 and c["hold"] > 0
        assert c["diverged"] or len(c["losses"]) == info["decision_split"]["samples"]


def test_compute_multiple_recomputed_from_the_recorded_candidates(run_dir):
    info = json.loads((run_dir / "autopilot.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    n_full = info["decision_split"]["of"]
    n_fit = n_full - info["decision_split"]["samples"]
    batch, epochs = info["batch_size"], info["epochs"]
    switch = info["decision_split"]["trained_on_from_epoch"]
    assert switch == info["plan"]["switch_epoch"] and 0 < switch < epochs
    # the final trajectory is every batch of the epochs before the switch on the training
    # part, then of every epoch on all of it; each probe's hold and cooldown are extra,
    # except the two holds the trajectory continued from
    path = switch * n_fit + (epochs - switch) * n_full
    kept = info["plan"]["hold1"] + info["plan"]["hold2"]
    steps = sum(c["hold"] + c["cooldown"] for c in info["candidates"]) - kept
    expected = (path + steps * batch + info["prior"].get("samples", 0)) / (epochs * n_full)
    # a step at an epoch's end holds fewer than ``batch`` samples: a few batches' slack
    assert info["compute"]["compute_multiple"] == pytest.approx(
        expected, abs=4 * batch / (epochs * n_full)
    )
    assert summary["samples_seen"] == path
    steps_per_epoch = [math.ceil(n_fit / batch)] * switch
    steps_per_epoch += [math.ceil(n_full / batch)] * (epochs - switch)
    assert summary["steps_run"] == sum(steps_per_epoch) == info["plan"]["total_steps"]
    assert summary["steps_planned"] == info["plan"]["total_steps"]
    assert info["compute"]["compute_multiple"] <= info["budget"] + 1e-9


def test_the_final_runs_guard_may_replay_only_what_the_budget_left(run_dir):
    """``guard.max_replay`` is the budget's steps left after the run (no rescue here, so
    the run spent ``compute_multiple``; the plan counts an epoch's last, smaller batch as a
    full one: up to one step per epoch less), and ``snapshot_every`` fits two rescues."""
    info = json.loads((run_dir / "autopilot.json").read_text())
    guard = yaml.safe_load((run_dir / "config.yaml").read_text())["guard"]
    assert json.loads((run_dir / "summary.json").read_text())["guard"]["rescues"] == 0
    one_run = info["epochs"] * info["decision_split"]["of"]
    left_steps = (
        (info["budget"] - info["compute"]["compute_multiple"]) * one_run / info["batch_size"]
    )
    assert left_steps - info["epochs"] - 1 <= guard["max_replay"] <= left_steps
    assert guard["snapshot_every"] == max(1, min(50, guard["max_replay"] // 4))
    recorded = info["rescue_budget"]
    assert (recorded["max_replay"], recorded["snapshot_every"]) == (
        guard["max_replay"],
        guard["snapshot_every"],
    )


def test_the_decision_table_shows_the_replay_limit(run_dir):
    from lrpilot.autopilot._report import decision_rows

    info = json.loads((run_dir / "autopilot.json").read_text())
    guard = yaml.safe_load((run_dir / "config.yaml").read_text())["guard"]
    rows = {name: (value, why) for name, value, why in decision_rows(info)}
    value, why = rows["guard replays"]
    assert value == f"<= {guard['max_replay']} steps"
    assert f"snapshots every {guard['snapshot_every']} steps" in why


def test_a_guard_setting_the_user_fixed_is_kept(tmp_path):
    import lrpilot

    result = lrpilot.auto(
        "mnist1d-mlp", epochs=2, out_dir=tmp_path / "r", progress="none",
        fit_config={"guard": {"snapshot_every": 7, "max_rescues": 3}},
    )  # fmt: skip
    guard = yaml.safe_load((result.run_dir / "config.yaml").read_text())["guard"]
    assert (guard["snapshot_every"], guard["max_rescues"]) == (7, 3)
    assert guard["max_replay"] is not None  # not fixed: sized to the budget
    record = json.loads((result.run_dir / "autopilot.json").read_text())["rescue_budget"]
    assert record["snapshot_every"] == 7 and "snapshot_every as the user fixed" in record["reason"]


def test_with_the_guard_off_nothing_is_sized_and_the_record_says_why(tmp_path):
    import lrpilot

    result = lrpilot.auto(
        "mnist1d-mlp", epochs=2, out_dir=tmp_path / "r", progress="none",
        fit_config={"guard": False},
    )  # fmt: skip
    guard = yaml.safe_load((result.run_dir / "config.yaml").read_text())["guard"]
    assert guard["enabled"] is False and guard["max_replay"] is None
    record = json.loads((result.run_dir / "autopilot.json").read_text())["rescue_budget"]
    assert record["max_replay"] is None and "the guard is off" in record["reason"]


def test_recorded_decisions_are_re_derived_from_the_recorded_probes(run_dir):
    info = json.loads((run_dir / "autopilot.json").read_text())
    probes = [Probe.from_dict(c) for c in info["candidates"]]
    recorded = {d["name"]: d["value"] for d in info["decisions"]}
    r1 = [p for p in probes if p.round == 1]
    r2 = [p for p in probes if p.round == 2]
    initial = info["initial_score"]
    assert initial > 0
    # the ladder: 3 candidates around a finder suggestion, 4 up from the default without
    suggestion = prior_lr(info["prior"])
    assert 2 <= info["plan"]["n1"] <= (3 if suggestion is not None else 4)
    family = "sgd" if info["optimizer"]["name"] == "sgd" else "adam"
    ladder = first_round(info["prior"], family, info["plan"]["n1"]).value
    assert [p.lr for p in r1] == ladder
    if suggestion is not None and len(ladder) == 3:
        assert ladder == [pytest.approx(suggestion * 10**k, rel=1e-3) for k in (-0.5, 0, 0.5)]
    first = "round1_pick" if r2 else "peak_lr"
    kept = anchored_peak(r1, prior_lr(info["prior"]), initial=initial, name="prior_pick")
    if "prior_pick" in recorded:
        assert kept.value == recorded["prior_pick"]
    at_peak = info["decisions"][0]["evidence"]["hold_level"] >= 1
    assert blend_peak(kept, r1, bias=probe_bias(family, at_peak)).value == recorded[first]
    if r2:
        assert choose_peak(r2, initial=initial).value == recorded["peak_lr"]
    # the rule's shape at this plan: one-cycle, its probes held below the peak
    assert recorded["schedule"] == "one_cycle" and not at_peak
    # a one-cycle: the pick's peak is reached exactly once the ramp ends at 30%
    if recorded["schedule"] == "one_cycle" and r1:
        from lrpilot.autopilot._shapes import ONE_CYCLE_PEAK, to_schedule

        sched = to_schedule([(n, p) for n, p in _segments(info["schedule"])])
        total = info["plan"]["total_steps"]
        assert sched(round(ONE_CYCLE_PEAK * total)) == pytest.approx(recorded["peak_lr"])
        level = info["decisions"][0]["evidence"]["hold_level"]
        at = info["decided_at_step"]
        pick = next(d for d in info["decisions"] if d["name"] == "peak_lr")
        src = pick["evidence"].get("continue_from")
        held = next((p.lr for p in r1 if p.name == src), recorded["peak_lr"])
        assert sched(at - 1) == pytest.approx(held * level)


def test_a_fixed_wsd_holds_the_probes_at_the_peak_and_takes_no_probe_bias_for_sgd(tmp_path):
    """Probes held at the peak itself compare peaks directly: SGD's blend takes no bias
    (its quarter decade corrects probes held below the peak, as a one-cycle's are; a15
    applied it here too and picked about 2x lower, bench/results/autopilot_shapes_table.md).
    The shape stays the user's: the peak held to 80% of the run, then linear to 0."""
    import lrpilot
    from lrpilot.autopilot._shapes import WSD_DECAY, to_schedule

    out = tmp_path / "wsd"
    lrpilot.auto(
        "mnist1d-mlp", optimizer="sgd", epochs=2, schedule="wsd", out_dir=out, progress="none"
    )
    info = json.loads((out / "autopilot.json").read_text())
    decisions = {d["name"]: d for d in info["decisions"]}
    assert decisions["round1_candidates"]["evidence"]["hold_level"] == 1.0
    assert decisions["schedule"]["value"] == "wsd"
    assert decisions["schedule"]["reason"] == "fixed by the user"
    pick = decisions["peak_lr"]
    assert pick["evidence"]["bias"] == 1.0 and "no bias" in pick["reason"]
    r1 = [Probe.from_dict(c) for c in info["candidates"] if c["round"] == 1]
    kept = anchored_peak(r1, prior_lr(info["prior"]), initial=info["initial_score"])
    lowest = min((p for p in r1 if p.ok), key=lambda p: (p.score, -p.lr))
    expected = float(f"{math.sqrt(kept.value * lowest.lr):.4g}")  # no / bias
    assert pick["value"] == expected
    assert blend_peak(kept, r1, bias=probe_bias("sgd")).value < expected  # a15's pick
    sched = to_schedule([(n, p) for n, p in _segments(info["schedule"])])
    total = info["plan"]["total_steps"]
    decay_at = total - round(WSD_DECAY * total)
    assert sched(decay_at - 1) == pytest.approx(pick["value"])
    assert sched(decay_at) == pytest.approx(pick["value"])  # the linear decay's first step
    assert sched(total - 1) < pick["value"] / 2 and sched(total) == 0.0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--budget", "0.9"], "budget=0.9 is out of range; allowed: [1.0, 10]"),
        (["--budget", "nan"], "budget=nan is out of range"),
        (["--optimizer", "lion"], "optimizer='lion' is not one of sgd, adamw, adam"),
        (["--epochs", "0"], "epochs"),
        (["--seed", "-1"], "seed=-1 is out of range; allowed: [0, 9223372036854775807]"),
        (
            ["--seed", str(2**70)],
            f"seed={2**70} is out of range; allowed: [0, 9223372036854775807]",
        ),
        (["--batch-size", "100000"], "batch_size=100000 is larger than the training part"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    assert _auto(out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and err[0].startswith("lrpilot auto: error:")
    assert not out.exists()


def test_unknown_task_and_resume_without_a_run(tmp_path, capsys):
    assert main(["auto", "--task", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert _auto(tmp_path / "r", "--resume") == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["auto", "--task", "mnist1d-mlp", "--resume"]) == 2
    assert not (tmp_path / "r").exists()


def _spawn(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "lrpilot.cli",
        "auto",
        "--task",
        "mnist1d-mlp",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_resume_after_a_kill_in_the_probe_phase_is_bit_identical(tmp_path, run_dir):
    out = tmp_path / "killed"
    proc = _spawn(out)
    state = out / "autopilot" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and len(json.loads(state.read_text()).get("probes", {})) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = set(json.loads(state.read_text())["probes"])
    assert len(done) >= 2 and not (out / "summary.json").exists()
    assert _auto(out, "--resume", "--json") == 0
    info = json.loads((out / "autopilot.json").read_text())
    ref = json.loads((run_dir / "autopilot.json").read_text())
    # finished probes were not redone (their records are the ones written before the kill)
    assert [c["name"] for c in info["candidates"]] == [c["name"] for c in ref["candidates"]]
    assert info["candidates"] == ref["candidates"] and info["decisions"] == ref["decisions"]
    a = torch.load(out / "checkpoints" / "best.pt", weights_only=True)["model"]
    b = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((out / "summary.json").read_text())["final"]
    sb = json.loads((run_dir / "summary.json").read_text())["final"]
    assert {k: v for k, v in sa.items() if k != "time"} == {
        k: v for k, v in sb.items() if k != "time"
    }


def _segments(config: dict) -> list:
    """``(steps, piece)`` segments of a ``join`` schedule config (the last runs on)."""
    if config["name"] != "join":
        return [(1, config)]
    bounds = [0, *config["boundaries"]]
    steps = [b - a for a, b in itertools.pairwise(bounds)] + [10**9]
    return list(zip(steps, config["schedules"], strict=True))


def test_the_final_runs_guard_stalls_against_the_model_as_initialised(run_dir):
    # the final run starts from the probes' trained state: the guard's stall level is the
    # trunk's first loss (the model as initialised), recorded in the probe store
    from lrpilot.train._checkpoint import load_checkpoint

    state = json.loads((run_dir / "autopilot" / "state.json").read_text())
    first = state["first_loss"]
    assert first > 2.0  # a 10-class model at initialisation: about ln 10
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    assert ckpts
    ckpt = load_checkpoint(ckpts[-1])
    assert ckpt["guard"]["initial_level"] == pytest.approx(first)


class _Crash(Exception):
    pass


class _CrashAtEpochEnd(Callback):
    """A user callback that raises at the end of epoch ``epoch`` (before that epoch's
    checkpoint is written: fit's checkpoint callback comes after the user's)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, engine, record):  # type: ignore[no-untyped-def]
        if record["epoch"] == self.epoch:
            raise _Crash(f"crash at the end of epoch {self.epoch}")


class _RecordBeta1(Callback):
    """Records Adam's beta1 after every step of the final run (the next step's value)."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def on_step_end(self, engine, outcome):  # type: ignore[no-untyped-def]
        self.seen[outcome.step] = engine.optimizer.param_groups[0]["betas"][0]


def test_one_cycle_cycles_adams_beta1_through_probes_and_the_final_run(tmp_path):
    import lrpilot
    from lrpilot.autopilot._shapes import cycle_momentum
    from lrpilot.schedules import from_config

    rec = _RecordBeta1()
    result = lrpilot.auto(
        "mnist1d-mlp", epochs=3, out_dir=tmp_path / "run", progress="none", callbacks=[rec]
    )
    info = json.loads((tmp_path / "run" / "autopilot.json").read_text())
    shape = next(d for d in info["decisions"] if d["name"] == "schedule")
    assert shape["value"] == "one_cycle"
    assert info["decisions"][0]["evidence"]["hold_level"] < 1  # probes at one-cycle's level
    assert "0.95 -> 0.85 -> 0.95" in shape["evidence"]["momentum"]
    total = info["plan"]["total_steps"]
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    # from step 0 (the probes included): 0.95 down to 0.85 at the LR's peak, up to 0.95
    assert config["schedule"]["momentum"] == cycle_momentum(total)
    m = from_config(cycle_momentum(total))
    assert m(0) == 0.95 and m(round(0.3 * total)) == 0.85 and m(total) > 0.949
    # the final run's steps (from the decision on) under the cycle, step by step
    assert min(rec.seen) == info["decided_at_step"] + 1 and max(rec.seen) == total
    assert all(rec.seen[s] == pytest.approx(m(s), abs=1e-12) for s in rec.seen)
    assert result.summary["status"] == "completed"


def test_the_final_run_trains_on_the_decision_split_after_the_switch_and_resumes_exactly(
    tmp_path,
):
    import lrpilot
    from lrpilot.autopilot._split import split_indices
    from lrpilot.tasks import get_task

    def run(out: Path, callbacks=(), resume=False):  # type: ignore[no-untyped-def]
        return lrpilot.auto(
            "mnist1d-mlp", epochs=4, out_dir=out, progress="none", resume=resume,
            fit_config={"checkpoint_every": "epoch"}, callbacks=callbacks,
        )  # fmt: skip

    ref = run(tmp_path / "ref")
    info = json.loads((tmp_path / "ref" / "autopilot.json").read_text())
    switch = info["decision_split"]["trained_on_from_epoch"]
    assert 1 <= switch <= 2  # the decision falls in the first epochs of a 4-epoch run
    n_full = info["decision_split"]["of"]
    n_fit = n_full - info["decision_split"]["samples"]
    assert ref.summary["samples_seen"] == switch * n_fit + (4 - switch) * n_full
    # the engine's order after the switch is the whole training set's, and before it the
    # subset's own order mapped to the whole set's indices (the split as fit trained on it)
    from lrpilot.train._data import DataOrder, PhasedOrder

    _held, kept = split_indices(n_full, 0)
    assert len(get_task("mnist1d-mlp").train_set) == n_full
    order = PhasedOrder(kept, n_full, 64, 1, 0, switch)
    assert torch.equal(order.permutation(switch), DataOrder(n_full, 64, 1, 0).permutation(switch))
    before = DataOrder(n_fit, 64, 1, 0).permutation(0)
    assert torch.equal(order.permutation(0), kept[before])
    # killed after the switch (the end of its first epoch on all the data), then resumed:
    # bit-identical to the run that never stopped
    with pytest.raises(_Crash):
        run(tmp_path / "killed", [_CrashAtEpochEnd(switch + 1)])
    resumed = run(tmp_path / "killed", [_CrashAtEpochEnd(-1)], resume=True)  # same callbacks
    a, b = resumed.model.state_dict(), ref.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["samples_seen"] == ref.summary["samples_seen"]
    assert resumed.summary["final"]["val_loss"] == ref.summary["final"]["val_loss"]


def test_under_torchrun_the_autopilot_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    assert _auto(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lrpilot auto: error: WORLD_SIZE=2 is not supported by the autopilot; allowed: 1 "
        "(lrpilot auto "
        "and auto values in a fit config run in one process, not under torchrun)"
    ]
    assert not out.exists()


def test_a_world_size_that_is_not_a_number_is_named(monkeypatch):
    from lrpilot._distributed import launched_world_size
    from lrpilot.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE='two' is not an integer"):
        launched_world_size()


def _friedman_regression():  # type: ignore[no-untyped-def]
    """A regression task (Friedman #1, tanh MLP, MSE): SGD at LR 1.0 with momentum 0.9
    overflows its loss to inf within a probe's hold."""
    from sklearn.datasets import make_friedman1
    from torch import nn
    from torch.utils.data import TensorDataset

    from lrpilot.tasks import Task

    x_np, y_np = make_friedman1(n_samples=5000, n_features=10, noise=0.5, random_state=0)
    x = torch.tensor(x_np, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.float32).unsqueeze(1)
    y = (y - y[:4000].mean()) / y[:4000].std()
    return Task(
        name="friedman",
        build_model=lambda: nn.Sequential(
            nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        ),
        train_set=TensorDataset(x[:4000], y[:4000]),
        val_set=TensorDataset(x[4000:], y[4000:]),
        loss_fn=torch.nn.functional.mse_loss,
    )


def test_a_candidate_whose_loss_overflows_is_recorded_as_diverged(tmp_path, capsys):
    """Regression, no finder suggestion (the sweep is ``noisy``): the ladder's top, 1.0,
    diverges to an infinite loss. The report stays strict JSON (the non-finite values are
    ``null``; it used to raise ``ValueError`` writing ``inf``), the decision is re-derived
    from it, and the run trains at a finite LR below the failure."""
    import lrpilot

    task = _friedman_regression()
    sgd = {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}
    result = lrpilot.auto(task, optimizer=sgd, epochs=4, batch_size=32, out_dir=tmp_path / "r")
    text = (tmp_path / "r" / "autopilot.json").read_text()
    info = json.loads(text)  # strict: json.loads accepts Infinity, so check the text too
    assert "Infinity" not in text and "NaN" not in text
    diverged = [c for c in info["candidates"] if c["diverged"]]
    assert diverged and all(c["score"] is None for c in diverged)
    probes = [Probe.from_dict(c) for c in info["candidates"]]
    recorded = next(d["value"] for d in info["decisions"] if d["name"] == "peak_lr")
    assert choose_peak(probes).value == recorded < min(c["lr"] for c in diverged)
    assert math.isfinite(result.summary["final"]["val_loss"])
    assert result.summary["status"] == "completed"
