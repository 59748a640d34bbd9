"""``lrpilot fit`` prints the diagnosis at the end of a run and stores it in summary.json."""

from __future__ import annotations

import json

from lrpilot import diagnose, fit
from lrpilot.history import History


def test_fit_stores_and_prints_the_diagnosis(tmp_path, capsys):
    config = {"task": "mnist1d-mlp", "epochs": 1, "log_every": 1, "seed": 0}
    result = fit(config, out_dir=tmp_path / "run", progress="plain")
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = [f.to_dict() for f in diagnose(History.read_jsonl(tmp_path / "run"))]
    assert summary["diagnosis"] == expected == result.summary["diagnosis"]
    assert len(expected) >= 1 and "kind" in expected[0]
    for finding in expected:
        assert f"diagnosis: [{finding['severity']}] {finding['kind']}" in out
