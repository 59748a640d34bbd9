"""``lrpilot find``'s text output explains a peak above the unstable LR and gives a next step
for a low confidence (issue 21, "the finder's output")."""

from __future__ import annotations

import pytest

from lrpilot.finder.policy import (
    CALIBRATION_RATIOS,
    SCHEDULE_FRACTIONS,
    suggest_peak_lr,
    suggestion_interval,
)
from lrpilot.finder.protocol import probe_plan
from lrpilot.finder.report import consistency, explain_peak, next_steps
from lrpilot.finder.result import FinderResult, confidence_label
from lrpilot.finder.task_probe import TaskFinding


def _result(lr_unstable, schedule="one_cycle", family="sgd", ratio=8.0, interval=None):
    interval = interval or (lr_unstable / 1.2, lr_unstable * 1.2)
    sugg = suggest_peak_lr(lr_unstable, schedule, family, ratio)
    s_int = suggestion_interval(interval, schedule, family, ratio)
    return FinderResult(
        [], [], [], [], 2.3, "ok", "", lr_unstable, interval, schedule, sugg, s_int,
        confidence_label(s_int), family, ratio,
    )  # fmt: skip


def test_peak_above_unstable_is_explained_with_the_rule():
    res = _result(0.021)  # SGD one-cycle: 0.207 x 8 = 1.66x lr_unstable
    line = explain_peak(res, probe_batch=8, batch_size=64)
    assert res.suggestion > res.lr_unstable
    assert "batch 8" in line and "batch 64 (8x)" in line and "8^1 = 8" in line
    assert f"{SCHEDULE_FRACTIONS['one_cycle']:g} (one_cycle) x 8 x 0.021" in line
    assert line.endswith(f"= {res.suggestion:.3g}")


def test_adam_square_root_and_no_line_below_the_unstable_lr():
    res = _result(0.05, family="adam")  # 0.207 x sqrt(8) = 0.585 < 1
    assert res.suggestion < res.lr_unstable and explain_peak(res, 8, 64) is None
    above = _result(0.05, family="adam", ratio=64.0)  # 0.207 x 8 = 1.66 > 1
    assert "64^0.5 = 8 for adam (square-root scaling)" in explain_peak(above, 1, 64)
    assert explain_peak(FinderResult([], [], [], [], 2.3, "flat", "m", None, None,
                                     "one_cycle", None, None, "none", "sgd", 8.0), 8, 64) is None  # fmt: skip


def test_low_confidence_gets_a_next_step():
    res = _result(0.021)
    assert res.confidence == "low"  # the calibration spread alone is 5.9x
    first, check = next_steps(res, "digits-cnn", seed=4)
    lo, hi = res.suggestion_interval
    q_lo, q_hi = CALIBRATION_RATIOS["one_cycle"]
    assert f"spans {hi / lo:.2g}x, {q_hi / q_lo:.2g}x of it" in first
    assert "`lrpilot auto --task digits-cnn`" in first
    assert f"{lo:.3g}, {res.suggestion:.3g} and {hi:.3g}" in first
    assert "--seed 5 and --seed 6" in check


def test_no_next_step_without_low_confidence():
    res = _result(0.021)
    res.confidence = "medium"
    assert next_steps(res, "t", 0) == []


def test_summary_lines_carry_both(tmp_path):
    res = _result(0.021)
    plan = probe_plan(1437, 64)
    finding = TaskFinding(res, "digits-cnn", "sgd", 64, plan, 1437, "cpu", False, seed=2)
    lines = finding.summary_lines()
    assert lines[0].startswith("digits-cnn (sgd, batch 64): training becomes unstable")
    assert lines[1].startswith("why the peak is above the unstable LR")
    assert lines[2].startswith("next:") and "--seed 3" in lines[3]
    payload = finding.to_dict()  # lrpilot find --json carries the same text
    assert payload["peak_explanation"] == lines[1] and payload["next_steps"] == lines[2:]


@pytest.mark.slow
def test_cli_find_prints_the_next_step(capsys):
    from lrpilot.cli import main

    assert main(["find", "--task", "digits-cnn"]) == 0
    out = capsys.readouterr().out
    assert "confidence low" in out and "next:" in out and "why the peak" in out


def test_repeats_that_disagree_are_a_verdict_not_a_number():
    res = _result(0.02)
    res.repeat_lr_unstable = [1.85e-5, 0.02, 0.09]  # the regression MLP's spread
    finding = TaskFinding(res, "reg-mlp", "adamw", 64, probe_plan(4000, 64), 4000, "cpu", False)
    lines = finding.summary_lines()
    assert lines[0].startswith("reg-mlp: no reliable suggestion, verdict inconsistent")
    assert "from 1.85e-05 to 0.09 (4.86e+03x, more than 3x)" in lines[0]
    assert "suggested peak" not in "\n".join(lines) and lines[1].startswith("next:")
    assert finding.to_dict()["repeats"]["verdict"] == "inconsistent"


def test_repeats_that_agree_and_a_failed_repeat():
    res = _result(0.02)
    res.repeat_lr_unstable = [0.018, 0.02, 0.03]
    assert consistency(res) == ("consistent", "the 3 repeats agree within 1.67x")
    lines = TaskFinding(
        res, "t", "sgd", 64, probe_plan(4000, 64), 4000, "cpu", False
    ).summary_lines()
    assert "suggested peak LR for one_cycle" in lines[0]
    assert lines[1] == "repeats: the 3 repeats agree within 1.67x"
    res.repeat_lr_unstable = [0.02, None]
    assert (
        consistency(res)[0] == "inconsistent"
        and "1 of 2 repeats gave no usable" in consistency(res)[1]
    )
    res.repeat_lr_unstable = [0.02]
    assert consistency(res) is None


def test_cli_repeats_flag_is_validated_and_reaches_the_sweep(capsys, monkeypatch):
    from lrpilot.cli import main

    with pytest.raises(SystemExit) as exc:  # argparse refuses it: exit 2
        main(["find", "--task", "digits-cnn", "--repeats", "11"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--repeats" in err and "[1, 10]" in err and len(err.strip().splitlines()) == 1
    seen = {}

    def fake_find_lr(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("lrpilot.finder.task_probe.find_lr", fake_find_lr)
    with pytest.raises(SystemExit):
        main(["find", "--task", "digits-cnn", "--repeats", "3"])
    assert seen["repeats"] == 3
