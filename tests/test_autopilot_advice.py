"""The final run's diagnosis weighed against the candidates the autopilot measured
(``lrpilot.autopilot._advice``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lrpilot.autopilot._advice import (
    SIDE_FACTOR,
    measured_side,
    qualify_from_report,
    qualify_lr_advice,
)
from lrpilot.autopilot._decide import Probe
from lrpilot.diagnosis import Finding

NAN = float("nan")
SLOW = Finding("too_slow", "warning", step=60, evidence={"peak_lr": 0.0068},
               advice="raise the learning rate from 0.0068 to about 0.02", summary="slow")  # fmt: skip
WOBBLE = Finding("oscillating", "warning", advice="lower the learning rate from 0.03 to 0.01")
# settings L seed 0 (a transformer classifier, AdamW): the first round as recorded
LADDER = [Probe("r1-0", 0.002152, 1.721), Probe("r1-1", 0.006806, 1.530), Probe("r1-2", 0.02152, 1.475)]  # fmt: skip


def test_raise_advice_with_a_larger_candidate_measured_becomes_info_with_the_measurements():
    (f,) = qualify_lr_advice([SLOW], LADDER, 0.006806)
    assert (f.kind, f.severity, f.step, f.summary) == ("too_slow", "info", 60, "slow")
    assert f.evidence["peak_lr"] == 0.0068  # the curve's evidence is kept
    ap = f.evidence["autopilot"]
    assert ap == {
        "pick": 0.006806,
        "measured": [[0.02152, 1.475]],
        "reference": [0.006806, 1.530],
        "severity_from_curve": "warning",
    }
    assert f.advice.startswith("lrpilot auto measured larger peaks before it chose 0.00681")
    assert "0.0215 (decision-split loss 1.475)" in f.advice and f.advice.endswith(SLOW.advice)


def test_lower_advice_looks_below_the_pick_nearest_first():
    (f,) = qualify_lr_advice([WOBBLE], LADDER, 0.02152)
    assert f.severity == "info"
    assert f.evidence["autopilot"]["measured"] == [[0.006806, 1.530], [0.002152, 1.721]]
    assert f.evidence["autopilot"]["reference"] == [0.02152, 1.475]
    assert "smaller peaks" in f.advice


def test_no_candidate_on_the_advised_side_leaves_the_finding_as_it_is():
    # the pick is the largest candidate: nothing was measured above it
    assert qualify_lr_advice([SLOW], LADDER, 0.02152) == [SLOW]
    # the pick is the smallest: nothing below it
    assert qualify_lr_advice([WOBBLE], LADDER, 0.002152) == [WOBBLE]
    # a candidate closer than a quarter decade is not evidence about a 3x change
    near = [Probe("a", 0.01, 1.0), Probe("b", 0.01 * SIDE_FACTOR * 0.99, 0.9)]
    assert qualify_lr_advice([SLOW], near, 0.01) == [SLOW]
    at = [Probe("a", 0.01, 1.0), Probe("b", 0.01 * SIDE_FACTOR * 1.001, 0.9)]
    assert qualify_lr_advice([SLOW], at, 0.01)[0].severity == "info"


def test_diverged_and_nan_candidates_are_not_measurements():
    gone = [Probe("a", 0.0068, 1.5), Probe("b", 0.02, NAN), Probe("c", 0.06, 2.0, diverged=True)]
    assert qualify_lr_advice([SLOW], gone, 0.0068) == [SLOW]
    assert qualify_lr_advice([SLOW], [], 0.0068) == [SLOW]
    assert measured_side(gone, NAN, 1) == [] and measured_side(gone, 0.0, 1) == []
    # a pick or a candidate LR that is not a positive number (a hand-edited report)
    for pick in (0.0, -0.01, NAN, float("inf")):
        assert qualify_lr_advice([SLOW], LADDER, pick) == [SLOW]
    odd = [Probe("z", 0.0, 1.0), Probe("n", -0.1, 1.0), *LADDER]
    assert qualify_lr_advice([SLOW], odd, 0.006806) == qualify_lr_advice([SLOW], LADDER, 0.006806)


def test_other_findings_pass_through_unchanged():
    others = [
        Finding("diverged", "critical", advice="lower the learning rate"),
        Finding("underfitting", "warning", advice="train longer"),
        Finding("healthy", "info", advice="nothing to change"),
    ]
    assert qualify_lr_advice([*others, SLOW], LADDER, 0.006806)[:3] == others


PLANTED = Finding("too_slow", "warning", advice="raise the learning rate 3x")


def test_the_autopilot_qualifies_its_final_runs_diagnosis(tmp_path: Path, monkeypatch, capsys):
    """End to end: whatever the diagnosis says about the final run's curve, a too_slow
    finding reaches summary.json qualified by the run's own recorded candidates, and
    ``lrpilot diagnose`` of the run directory says the same."""
    import lrpilot
    import lrpilot.diagnosis as diagnosis
    from lrpilot.cli import main

    monkeypatch.setattr(diagnosis, "diagnose", lambda history: [PLANTED])
    result = lrpilot.auto("mnist1d-mlp", epochs=2, out_dir=tmp_path / "r", progress="none")
    info = json.loads((tmp_path / "r" / "autopilot.json").read_text())
    pick = next(d["value"] for d in info["decisions"] if d["name"] == "peak_lr")
    above = sorted(
        (c["lr"], c["score"])
        for c in info["candidates"]
        if c["score"] is not None and math.log(c["lr"] / pick) >= math.log(SIDE_FACTOR)
    )
    assert above, "the ladder put a candidate above the pick"
    (saved,) = json.loads((tmp_path / "r" / "summary.json").read_text())["diagnosis"]
    assert saved["severity"] == "info" and saved["kind"] == "too_slow"
    ap = saved["evidence"]["autopilot"]
    assert ap["pick"] == pytest.approx(pick)
    assert sorted(tuple(x) for x in ap["measured"]) == [
        (pytest.approx(lr, rel=1e-5), pytest.approx(s, rel=1e-5)) for lr, s in above
    ]
    assert result.summary["diagnosis"][0]["evidence"]["autopilot"]["pick"] == pytest.approx(pick)
    # lrpilot diagnose of the run directory reads autopilot.json and says the same
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "r"), "--json"]) == 0
    (said,) = json.loads(capsys.readouterr().out)
    assert said["severity"] == "info" and said["evidence"]["autopilot"] == ap
    # an unreadable report is said on stderr and the diagnosis is the curve's alone
    (tmp_path / "r" / "autopilot.json").write_text('{"decisions": 5}')
    assert main(["diagnose", str(tmp_path / "r"), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["severity"] == "warning"
    assert "autopilot.json not used" in out.err


def test_qualify_from_report_reads_what_autopilot_json_records():
    report = {
        "decisions": [
            {"name": "prior_pick", "value": 0.006806},
            {"name": "peak_lr", "value": 0.006806},
        ],
        "candidates": [
            {"name": "r1-0", "lr": 0.002152, "score": 1.721},
            {"name": "r1-1", "lr": 0.006806, "score": 1.53},
            {"name": "r1-2", "lr": 0.02152, "score": None, "diverged": True},
            {"name": "r1-3", "lr": 0.0681, "score": 1.9},
        ],
    }
    (f,) = qualify_from_report([SLOW], report)
    assert f.evidence["autopilot"]["measured"] == [[0.0681, 1.9]]  # the diverged one is not
    assert qualify_from_report([SLOW], {"decisions": []}) == [SLOW]
    assert qualify_from_report([SLOW], {"decisions": [{"name": "peak_lr", "value": None}]}) == [
        SLOW
    ]
