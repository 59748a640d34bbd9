"""Diagnosis advice that contradicted the rest of the product (issue 21): runs that diverged
to chance, a guard-rescue spike called "oscillating", epochs at chance level, a jump to a
higher plateau called "healthy", rescues on the PNG, and one epoch numbering in text."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from lrpilot.diagnosis import Finding, diagnose
from lrpilot.diagnosis.chance import chance_classes, chance_epochs
from lrpilot.diagnosis.curves import Curves
from lrpilot.diagnosis.plot import mark_rescues, plot_diagnosis
from lrpilot.history import History

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_diagnosis_rules import STEPS_PER_EPOCH, cosine_lr, healthy_curve, make_history

LN10 = math.log(10)


def _records(history: History) -> list[dict]:
    return [dict(r) for r in (*history.steps, *history.epochs, *history.events)]


def _with_accuracy(history: History, accuracy) -> History:  # type: ignore[no-untyped-def]
    """``val_accuracy`` on every epoch record: ``accuracy(epoch)``."""
    recs = _records(history)
    for r in recs:
        if r["type"] == "epoch":
            r["val_accuracy"] = accuracy(r["epoch"])
    return History.from_records(recs)


def _at_chance_run(rescue: bool, epochs: int = 15) -> History:
    """A 10-class run whose loss sits at ln 10 (a uniform guess) the whole time."""
    h = make_history(lambda t: LN10, val=lambda t: LN10, lr=0.5, epochs=epochs, noise=0.01)
    recs = _records(h)
    if rescue:
        recs.append({"type": "event", "action": "guard_rescue", "step": 5, "epoch": 0})
    return _with_accuracy(History.from_records(recs), lambda e: 0.1)


# ---------------------------------------------------------------- chance level
def test_chance_classes_from_the_first_loss():
    assert (
        chance_classes(math.log(10) + 0.04) == 10 and chance_classes(1.25) is None
    )  # 0.15 from ln 3
    assert chance_classes(math.log(10) + 0.09) == 11  # neighbours of K > 10 lie within 0.1
    assert chance_classes(math.log(2)) == 2 and chance_classes(0.3) is None
    assert chance_classes(float("nan")) is None


def test_collapse_to_chance_after_a_rescue_is_a_divergence_not_too_slow():
    findings = diagnose(_at_chance_run(rescue=True))
    assert [f.kind for f in findings] == ["diverged"]
    f = findings[0]
    assert f.evidence["reason"] == "chance" and f.severity == "critical"
    assert "raise" not in f.advice and "lower the peak learning rate from 0.5" in f.advice
    assert "15 of 15 epochs at chance level" in f.summary and "epochs 1-15" in f.summary
    assert f.evidence["chance_epochs"] == list(range(15)) and f.evidence["chance_classes"] == 10


def test_stuck_at_chance_without_rescue_warns_about_the_other_cause():
    findings = diagnose(_at_chance_run(rescue=False))
    assert [f.kind for f in findings] == ["too_slow"]
    advice = findings[0].advice
    assert "raise the learning rate" in advice  # the curve alone cannot tell ...
    assert "died before the first logged steps" in advice and "lower it instead" in advice


def test_chance_epochs_in_a_run_that_learned_late_and_without_accuracy():
    # at chance for epochs 0-3 (accuracy 0.1), then learning: the four are reported
    def curve(t):
        return LN10 if t < 0.3 else 0.3 + (LN10 - 0.3) * math.exp(-12 * (t - 0.3))

    h = make_history(curve, val=curve, lr=0.1, epochs=12, noise=0.01)
    with_acc = _with_accuracy(h, lambda e: 0.1 if e < 3 else 0.9)
    k, epochs = chance_epochs(Curves.from_history(with_acc))
    assert k == 10 and epochs[:3] == [0, 1, 2] and all(e < 4 for e in epochs)
    assert any("epochs at chance level" in f.summary for f in diagnose(with_acc))
    # no accuracy logged: a loss near ln K alone is not called chance
    assert chance_epochs(Curves.from_history(h))[1] == []
    assert not any("chance" in f.summary for f in diagnose(h))


# ---------------------------------------------------------------- guard-rescue spike
def _spiked(rescue: bool) -> History:
    h = make_history(
        healthy_curve, val=lambda t: 0.15 + 2.2 * math.exp(-12 * t), lr=cosine_lr, epochs=12
    )
    recs = _records(h)
    for r in recs:
        if r["type"] == "epoch" and r["epoch"] == 6:
            r["train_loss"] += 1.0  # the epoch mean holds the spike the guard undid
    if rescue:
        step = 6 * STEPS_PER_EPOCH + 10
        recs.append({"type": "event", "action": "guard_rescue", "step": step, "epoch": 6})
    return History.from_records(recs)


def test_guard_rescue_spike_is_not_oscillation():
    assert [f.kind for f in diagnose(_spiked(rescue=False))] == ["oscillating"]  # the control
    assert [f.kind for f in diagnose(_spiked(rescue=True))] == ["healthy"]


# ---------------------------------------------------------------- jump to a higher plateau
def _jump(at: float, level: float, back: bool = False, seed: int = 0) -> History:
    def curve(t):
        if t < at:
            return 2.2 + 2.4 * math.exp(-15 * t)
        if back and t > at + 0.1:
            return 2.2
        return level

    return make_history(
        curve, val=lambda t: curve(t) + 0.1, lr=3e-3, epochs=15, noise=0.1, seed=seed
    )


def test_jump_to_a_higher_plateau_is_a_divergence():
    for seed in range(3):
        for at, level in ((0.45, 3.2), (0.6, 3.0)):
            findings = diagnose(_jump(at, level, seed=seed))
            assert [f.kind for f in findings] == ["diverged"], (seed, at)
            f = findings[0]
            assert f.evidence["reason"] == "jump" and "higher level" in f.summary
            assert "lower the peak learning rate from 0.003 to about 0.001" in f.advice
            assert abs(f.step - at * 15 * STEPS_PER_EPOCH) < 2 * STEPS_PER_EPOCH


def test_a_spike_that_comes_back_down_is_no_jump():
    findings = diagnose(_jump(0.45, 3.2, back=True))
    assert all(f.evidence.get("reason") != "jump" for f in findings)


# ---------------------------------------------------------------- numbering and PNG
def test_epoch_counted_from_1_in_text_like_the_progress_lines():
    import io

    from lrpilot.train._runlog import Progress

    f = Finding("nan", "critical", step=150, epoch=7, summary="s")
    assert f.describe().startswith("[critical] nan at epoch 8, step 150")
    assert f.to_dict()["epoch"] == 7  # the record's 0-based index
    stream = io.StringIO()
    Progress("plain", 240, 12, stream=stream).epoch({"epoch": 7, "step": 160, "time": 1.0})
    assert stream.getvalue().startswith("epoch 8/12")  # the same epoch, the same number


def test_png_marks_guard_rescues(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = _spiked(rescue=True)
    recs = _records(h)
    recs.append({"type": "event", "action": "guard_rescue", "step": 480, "epoch": 9})
    h = History.from_records(recs)
    fig, (ax, ax_lr) = plt.subplots(2, 1)
    try:
        assert mark_rescues(ax, ax_lr, Curves.from_history(h)) == [310.0, 480.0]
        lines = [ln for ln in ax_lr.get_lines() if ln.get_linestyle() == ":"]
        assert sorted(float(np.asarray(ln.get_xdata())[0]) for ln in lines) == [310.0, 480.0]
        assert [t.get_text() for t in ax.legend().get_texts()] == ["guard rescue"]
    finally:
        plt.close(fig)
    png = plot_diagnosis(h, diagnose(h), tmp_path / "d.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recorded_run_that_died_at_chance_gets_lower_not_raise():
    """Recorded: mnist1d-mlp, AdamW at LR 0.3, guard off, logged every 10 steps (step 10's
    loss 2.95 above the start 2.34, then six epochs at chance). It used to get "raise the
    learning rate from 0.3 to about 3"."""
    path = Path(__file__).resolve().parent / "data" / "diverged_to_chance_mnist1d_mlp.jsonl"
    h = History.read_jsonl(path)
    findings = diagnose(h)
    assert [f.kind for f in findings] == ["diverged"]
    f = findings[0]
    assert f.evidence["reason"] == "dead" and f.step == 10 and f.severity == "critical"
    assert "lower the peak learning rate from 0.3 to about 0.03" in f.advice
    assert "raise" not in f.advice and "6 of 6 epochs at chance level" in f.summary
    # the control: without the rise above the start it is the ambiguous stuck case
    recs = _records(h)
    for r in recs:
        if r["type"] == "step" and r["step"] == 10:
            r["train_loss"] = 2.33
    stuck = diagnose(History.from_records(recs))
    assert [x.kind for x in stuck] == ["too_slow"] and "lower it instead" in stuck[0].advice
