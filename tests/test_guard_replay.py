"""``guard.max_replay``: the steps the divergence guard's rescues may run again in all.

References: the same planted divergence (a non-finite loss at a known step, whose update
the guard vetoes) without a limit (the rescue goes back to its snapshot and redoes the
steps: ``steps_run = steps_planned + steps_rewound``) and with one (the rescue puts the
snapshot's weights back and goes on from the current step: no step is run twice, the
compute is one run's); the weights after such a rescue equal the snapshot's.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.train import Callback, fit, parse_config
from lrpilot.train._summary import steps_rewound
from test_fit_syncfree import PlantedLoss, config, make_task


def _rescues(result) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in result.summary["guard"]["actions"] if e.get("action") == "guard_rescue"]


@pytest.mark.parametrize("max_replay", [None, 100, 0, 2])
def test_a_rescue_replays_only_within_max_replay(tmp_path, max_replay) -> None:  # type: ignore[no-untyped-def]
    """A NaN planted at step 11 (16 steps per epoch, snapshots every 4: the rescue goes back
    to step 4 and would redo 7 steps). Without a limit, or a limit of 100, the steps are
    redone; with 0 or 2 they are not, and the run spends exactly one run's samples."""
    guard = {"snapshot_every": 4} | ({} if max_replay is None else {"max_replay": max_replay})
    task = make_task(PlantedLoss({11}, math.nan))
    result = fit(config(guard=guard), tmp_path / "r", task=task, progress="none")
    (rescue,) = _rescues(result)
    s = result.summary
    redo = rescue["step"] - rescue["restored_step"]
    assert redo == 7
    replayed = max_replay is None or redo <= max_replay
    assert rescue["replayed"] is replayed
    assert s["steps_rewound"] == (redo if replayed else 0)
    assert s["steps_run"] == s["steps_planned"] + s["steps_rewound"]
    assert s["samples_seen"] == 2 * 512 + (redo * 32 if replayed else 0)
    assert s["status"] == "completed"
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_a_weights_only_rescue_puts_the_snapshots_weights_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The weights right after the rescue are the snapshot's (step 4), and the schedule
    goes on from the rescue's step at the lower scale, not from the snapshot's step."""
    seen: dict[int, list[torch.Tensor]] = {}

    class Weights(Callback):
        def on_step_end(self, engine, outcome):  # type: ignore[no-untyped-def]
            seen[outcome.step] = [p.detach().clone() for p in engine.model.parameters()]

    task = make_task(PlantedLoss({11}, math.nan))
    cfg = config(guard={"snapshot_every": 4, "max_replay": 0})
    result = fit(cfg, tmp_path / "r", task=task, progress="none", callbacks=[Weights()])
    (rescue,) = _rescues(result)
    assert rescue["restored_step"] == 4 and rescue["step"] == 11
    # the builtin guard runs before user callbacks: step 11's view is the restored state
    assert all(torch.equal(a, b) for a, b in zip(seen[11], seen[4], strict=True))
    assert rescue["schedule_step"] == 10  # steps 1-10 applied; the vetoed 11th was not
    assert rescue["lr_scale"] == 0.5
    assert sorted(seen) == list(range(1, result.summary["steps_planned"] + 1))


def test_steps_rewound_skips_rescues_that_did_not_replay() -> None:
    """A weights-only rescue neither counts nor makes its snapshot current: a later full
    rescue back to the same snapshot redoes everything since the snapshot's step."""
    events = [
        {"step": 20, "restored_step": 10, "replayed": False},
        {"step": 30, "restored_step": 10},
        {"step": 35, "restored_step": 10},
    ]
    assert steps_rewound(events) == (30 - 10) + (35 - 30)
    assert steps_rewound(events[:1]) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_max_replay_must_be_a_non_negative_integer(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"guard\.max_replay"):
        parse_config({"task": "mnist1d-mlp", "guard": {"max_replay": bad}})


def test_a_weights_only_rescue_on_the_lagged_path_ends_finite(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The sync-free engine (forced on the CPU) learns of the NaN late: the queued steps
    after it are dropped with the weights they made, and nothing is run again."""
    import lrpilot.train._engine as engine_module

    monkeypatch.setattr(engine_module, "_FORCE_LAGGED", True)
    task = make_task(PlantedLoss({11}, math.nan))
    cfg = config(guard={"snapshot_every": 4, "max_replay": 0})
    result = fit(cfg, tmp_path / "r", task=task, progress="none")
    (rescue,) = _rescues(result)
    assert rescue["replayed"] is False and rescue["restored_step"] < 11
    s = result.summary
    assert s["steps_rewound"] == 0 and s["steps_run"] == s["steps_planned"]
    assert s["status"] == "completed"
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_a_run_crashed_after_a_weights_only_rescue_resumes_bit_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The NaN at step 11 is rescued without a replay; a crash at step 12 leaves the
    checkpoint of step 7; the resumed run meets the NaN again at step 11 (its 4th loss
    call) and ends exactly as the run that never stopped: metrics, guard actions, weights."""
    import json

    from test_fit_syncfree import Crash

    cfg = config(checkpoint_every=7, guard={"snapshot_every": 4, "max_replay": 0})
    reference = fit(cfg, tmp_path / "ref", task=make_task(PlantedLoss({11}, math.nan)),
                    progress="none", callbacks=[Crash(None)])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "r", task=make_task(PlantedLoss({11}, math.nan)), progress="none",
            callbacks=[Crash(12)])  # fmt: skip
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 7
    resumed = fit(cfg, tmp_path / "r", task=make_task(PlantedLoss({4}, math.nan)),
                  progress="none", resume=True, callbacks=[Crash(None)])  # fmt: skip
    (rescue,) = _rescues(reference)
    assert rescue["replayed"] is False
    assert resumed.history.steps == reference.history.steps
    actions = [json.dumps(r.summary["guard"]["actions"]) for r in (resumed, reference)]
    assert actions[0] == actions[1]
    for p, q in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
