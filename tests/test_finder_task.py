"""``find_for_task`` (the library function `lrpilot find` runs), ``--device``/``--amp`` and
``schedule_config`` (a suggestion becomes a schedule `lrpilot fit` takes)."""

from __future__ import annotations

import json

import pytest
import torch

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.finder import find_for_task, schedule_config, suggest_peak_lr
from lrpilot.schedules import from_config
from test_finder_cli import TASK, tiny_task


def test_cli_json_is_the_library_result(capsys):
    assert main(["find", "--task", TASK, "--json", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    found = find_for_task(tiny_task(), seed=3)
    assert out["suggestion"] == found.result.suggestion and out["lrs"] == found.result.lrs
    assert out["device"] == "cpu" and out["amp"] is False
    assert found.to_dict()["probe_batch_size"] == found.plan.batch_size == 4


def test_amp_runs_the_sweep_under_autocast(capsys):
    assert main(["find", "--task", TASK, "--json", "--amp", "--device", "cpu"]) == 0
    amp = json.loads(capsys.readouterr().out)
    plain = find_for_task(tiny_task()).result
    assert amp["amp"] is True and amp["lrs"][:5] == plain.lrs[:5]
    # bfloat16 autocast changes the recorded losses: the flag is not ignored
    assert amp["losses"][:5] != plain.losses[:5]
    # ... and only through autocast: the same sweep under torch.autocast by hand
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_hand = find_for_task(tiny_task()).result
    assert by_hand.losses[:5] == amp["losses"][:5]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--device", "tpu"], "--device='tpu' is not allowed; valid: auto, cpu, cuda, cuda:N"),
        (["--optimizer", "adamw", "--batch-size", "0"], "--batch-size=0"),
    ],
)
def test_bad_device_exits_2(argv, needle, capsys):
    assert main(["find", "--task", TASK, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        find_for_task(tiny_task(), device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sweep_on_cuda_with_amp():  # pragma: no cover - CUDA only
    found = find_for_task(tiny_task(), device="cuda", amp=True)
    assert found.device.startswith("cuda") and found.result.optimizer_steps > 0


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
def test_schedule_config_peaks_at_the_suggestion_and_fit_accepts_it(schedule):
    from lrpilot.train._config import parse_config

    peak = suggest_peak_lr(0.05, schedule, "sgd")
    cfg = schedule_config(schedule, peak)
    fn = from_config(cfg, steps_per_epoch=20, total_steps=200)
    lrs = [fn(s) for s in range(200)]
    assert max(lrs) == pytest.approx(peak, rel=1e-12)
    if schedule == "cosine":  # linear warm-up from 0 over the first epoch
        assert lrs[0] == 0 and lrs[20] == pytest.approx(peak, rel=1e-12)
    else:  # PyTorch OneCycleLR: starts at peak / 25 and peaks at 30% of the run
        assert lrs[0] == pytest.approx(peak / 25) and lrs.index(max(lrs)) == 59
    run = parse_config({"task": "mnist1d-mlp", "schedule": cfg})
    assert dict(run.schedule) == cfg


def test_schedule_config_rejects_bad_input():
    with pytest.raises(ConfigError, match="valid: cosine, one_cycle"):
        schedule_config("step", 0.1)
    with pytest.raises(ConfigError, match="peak"):
        schedule_config("cosine", 0.0)
    with pytest.raises(ConfigError, match="peak"):
        schedule_config("cosine", float("inf"))
