"""lrpilot recommend on the command line: the written config parses and trains with fit."""

from __future__ import annotations

import json
import math

import pytest

from lrpilot.cli import main
from lrpilot.recommend._recommender import TASK_PLACEHOLDER
from lrpilot.train import parse_config
from lrpilot.train._sources import load_yaml


def test_without_task_writes_a_commented_config(tmp_path, capsys):
    out = tmp_path / "det.yaml"
    args = ["recommend", "--scenario", "detection", "--dataset-size", "100000", "--batch", "16"]
    assert main([*args, "--gpus", "8", "--epochs", "12", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# lrpilot recommend")
    assert "# optimizer.lr = 0.005: SGD starts at 0.008-0.02 at batch 32" in text
    raw = load_yaml(out)
    assert raw["task"] == TASK_PLACEHOLDER
    assert (raw["batch_size"], raw["accumulate"]) == (2, 1)  # 16 over 8 processes
    assert raw["schedule"]["milestones"] == [8.0, 10.667]
    printed = capsys.readouterr().out
    assert "config written to" in printed and "lr.sgd" in printed


def test_json_and_finetune_head(capsys):
    args = ["recommend", "--scenario", "finetune", "--head", "fc", "--dataset-size", "5000"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["layer_lr"] == {"fc.*": 1.0, "*": 0.1}
    assert {"config", "choices", "replaced", "notes", "measurements", "check"} <= set(data)
    lr = next(c for c in data["choices"] if c["key"] == "optimizer.lr")
    assert lr["rule"] == "lr.adamw" and lr["basis"] == "assumed" and "Ultralytics" in lr["source"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "auto"], "auto needs --task"),
        (["--scenario", "finetune"], "--head"),
        (["--batch", "0"], "--batch"),
        (["--gpus", "2**70"], "--gpus"),
        (["--out", "x.txt"], ".yaml"),
        (["--out", "no/such/dir/c.yaml"], "does not exist"),
        (["--seed", "-1"], "--seed"),
        (["--task", "digits-cnn", "--measure", "finder,ram"], "--measure 'ram'"),
        (["--task", "digits-cnn", "--optimizer", "auto", "--measure", "noise"], "include finder"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    argv = ["recommend", "--scenario", "classification", *args]
    if "--scenario" in args:
        argv = ["recommend", *args]
    if "--out" not in args:
        argv += ["--out", "c.yaml"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own check of an integer flag
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_task_auto_measures_both_and_the_config_trains(tmp_path, capsys):
    from lrpilot.train import fit

    out = tmp_path / "auto.yaml"
    args = ["recommend", "--scenario", "classification", "--task", "digits-cnn"]
    args += ["--optimizer", "auto", "--measure", "finder,noise"]  # memory: see below
    assert main([*args, "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    report = data["measurements"]
    assert set(report["finder"]) == {"sgd", "adamw"}
    for f in report["finder"].values():
        assert f["probe_batch"] == data["config"]["batch_size"] // 8
        assert 0 < f["epochs_of_compute"] <= 1.0
    choice = report["optimizer_choice"]
    assert choice["pick"] in ("sgd", "adamw") and choice["reason"]
    assert data["config"]["optimizer"]["name"] == (
        "sgd" if choice["tie"] else choice["pick"]  # a tie keeps the vision scenarios' SGD
    )
    picked = data["config"]["optimizer"]["name"]
    if report["finder"][picked]["verdict"] == "ok":
        assert {
            "rule": f"lr.{picked}",
            "by": "measure.finder",
        } in data["replaced"]
    raw = load_yaml(out)
    assert raw == data["config"]
    evidence = json.loads((tmp_path / "auto.recommend.json").read_text())
    assert evidence == data  # every decision with its evidence, beside the config
    cfg = parse_config(raw)
    assert cfg.optimizer.lr == raw["optimizer"]["lr"]
    # the recommended config passes lrpilot check except what this lrpilot cannot fix
    assert {f["rule"] for f in data["check"]} <= {"weight_decay.no_decay"}
    result = fit(raw, tmp_path / "run", overrides=["epochs=1"], progress="none")
    summary = result.summary
    assert (summary["status"], summary["epochs_run"]) == ("completed", 1)
    # one epoch at the recommended LR learns: below the loss of a uniform guess, ln(10)
    assert math.isfinite(summary["final"]["val_loss"]) and summary["final"]["val_loss"] < 2.0


def test_noise_scale_is_skipped_on_a_tiny_training_set():
    from types import SimpleNamespace

    from lrpilot.recommend._measure import _noise

    assert _noise(SimpleNamespace(train_set=range(500)), seed=0) is None  # big batch < 32


def test_a_memory_limit_splits_the_batch_into_accumulation(monkeypatch):
    """The memory probe's answer reaches the config (the probe itself is lrpilot.batch's,
    tested there; on a CPU it takes tens of seconds, so its result is given here)."""
    from lrpilot.recommend import Request, recommend
    from lrpilot.recommend import _measure as measure_mod

    def fake_memory(task, optimizer):
        return {"max_device_batch": 10, "capped": False, "device": "cpu", "seconds": 0.0}

    monkeypatch.setattr(measure_mod, "_memory", fake_memory)
    req = Request("classification", batch=64, task="digits-cnn")
    m, report = measure_mod.measure(req, which=("memory", "finder"))
    assert m.max_device_batch == 10 and "noise_scale" not in report
    assert report["finder"]["sgd"]["probe_batch"] == 8  # probed for the total batch 64
    rec = recommend(req, m)
    assert (rec.config["batch_size"], rec.config["accumulate"]) == (8, 8)
