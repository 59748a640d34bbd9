"""The autopilot's prior from several finder sweeps: the median rule, the plan that pays for
the sweeps, and a run that records them."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from lrpilot.autopilot._plan import (
    MAX_SWEEPS,
    RESCUE_RESERVE,
    SWEEP_RESERVE_FLOOR,
    make_plan,
    no_probe_plan,
    with_sweeps,
)
from lrpilot.autopilot._prior import combine_sweeps, describe_sweeps
from lrpilot.cli import main


def sweep(verdict: str, suggestion: float | None, samples: int = 100) -> dict:
    return {"verdict": verdict, "suggestion": suggestion, "interval": None, "samples": samples}


# ------------------------------------------------------------------ the rule
def test_one_sweep_is_returned_as_it_is():
    one = sweep("ok", 0.03) | {"message": "m", "probe_batch": 8}
    assert combine_sweeps([one]) == one
    assert combine_sweeps([sweep("noisy", None)]) == sweep("noisy", None)


def test_an_odd_count_takes_the_median_whatever_the_order():
    values = (0.0057, 0.055, 0.066)
    for order in itertools.permutations(values):
        p = combine_sweeps([sweep("ok", v, samples=7) for v in order])
        assert p["verdict"] == "ok" and p["suggestion"] == pytest.approx(0.055)
        assert p["samples"] == 21
        assert [s["suggestion"] for s in p["sweeps"]] == list(order)
        assert [s["samples"] for s in p["sweeps"]] == [7, 7, 7]


def test_an_even_count_takes_the_geometric_mean_of_the_middle_two():
    p = combine_sweeps([sweep("ok", 0.008), sweep("ok", 0.045)])
    assert p["suggestion"] == pytest.approx(math.sqrt(0.008 * 0.045))
    # four sweeps: the middle two of the sorted logs
    p = combine_sweeps([sweep("ok", v) for v in (1.0, 0.01, 100.0, 0.1)])
    assert p["suggestion"] == pytest.approx(math.sqrt(0.1 * 1.0))


def test_the_first_sweep_alone_decides_whether_there_is_a_prior():
    # the first gave none: no prior, whatever the later ones say, and the message says why
    for later in ([sweep("ok", 0.1)], [sweep("ok", 0.1), sweep("ok", 0.2)]):
        p = combine_sweeps([sweep("diverged at once", None), *later])
        assert p["verdict"] == "diverged at once" and p["suggestion"] is None
        assert p["message"].startswith("the first sweep gave no suggestion: no prior")
        assert p["samples"] == 100 * (1 + len(later)) and len(p["sweeps"]) == 1 + len(later)
    # the first gave one: the later failures do not take it away
    p = combine_sweeps([sweep("ok", 0.1), sweep("noisy", None), sweep("noisy", None)])
    assert p["verdict"] == "ok" and p["suggestion"] == pytest.approx(0.1)
    # 2 of 3 with the first among them: the geometric mean of the two
    p = combine_sweeps([sweep("ok", 0.084), sweep("noisy", None), sweep("ok", 0.089)])
    assert p["verdict"] == "ok" and p["suggestion"] == pytest.approx(math.sqrt(0.084 * 0.089))


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, 0.0, -0.1])
def test_a_suggestion_that_is_not_a_positive_number_does_not_count(bad):
    p = combine_sweeps([sweep("ok", 0.02), sweep("ok", bad), sweep("ok", 0.05)])
    assert p["suggestion"] == pytest.approx(math.sqrt(0.02 * 0.05))
    # the first one's: no prior, and nothing reads as a suggestion
    p = combine_sweeps([sweep("ok", bad), sweep("ok", 0.02), sweep("ok", 0.05)])
    assert p["verdict"] == "no suggestion" and p["suggestion"] is None


def test_the_interval_comes_from_the_sweep_nearest_the_median():
    found = [sweep("ok", v) | {"interval": [v / 2, v * 2]} for v in (0.01, 0.03, 0.2)]
    assert combine_sweeps(found)["interval"] == [0.015, 0.06]


def test_no_sweep_at_all_is_refused():
    with pytest.raises(ValueError, match="at least one sweep"):
        combine_sweeps([])


# ------------------------------------------------------------------ the plan
ONE_RUN = 15 * 4000


def test_at_the_default_budget_a_15_epoch_plan_takes_three_sweeps_and_keeps_its_holds():
    three = make_plan(4000, 3800, 64, 15, 1.3, 2000, candidates=3)
    four = make_plan(4000, 3800, 64, 15, 1.3, 2000)
    a, b = with_sweeps([four, three], 2000, ONE_RUN, 1.3)
    # both plans take the same count: the sweeps run before the verdict is known
    assert a.sweeps == b.sweeps == 3
    assert (a.n1, a.hold1, a.cool1) == (four.n1, four.hold1, four.cool1)
    assert (b.n1, b.hold1, b.cool1) == (three.n1, three.hold1, three.cool1)
    assert b.expected_multiple == pytest.approx(three.expected_multiple + 2 * 2000 / ONE_RUN)
    # they take the guard's reserve, never the budget itself
    assert 1.3 - RESCUE_RESERVE < a.expected_multiple <= 1.3 - SWEEP_RESERVE_FLOOR
    assert "3 finder sweeps" in a.reason


def test_a_short_run_or_a_costlier_plan_keeps_one_sweep():
    # 5 epochs: a sweep is a tenth of a run
    p = make_plan(4000, 3800, 64, 5, 1.3, 2000, candidates=3)
    assert with_sweeps([p], 2000, 5 * 4000, 1.3) == [p] and p.sweeps == 1
    # at 1.38 the plan with a suggestion affords three, the one without (4 x 7%) does not:
    # both take one
    three, four = (make_plan(4000, 3800, 64, 15, 1.38, 2000, c) for c in (3, 4))
    assert with_sweeps([three], 2000, ONE_RUN, 1.38)[0].sweeps == 3
    assert with_sweeps([four, three], 2000, ONE_RUN, 1.38) == [four, three]


def test_the_reserve_floor_is_the_boundary_and_two_sweeps_are_never_taken():
    p = make_plan(4000, 3800, 64, 15, 2.0, 2000, candidates=3)
    at = p.expected_multiple + 2 * 2000 / ONE_RUN + SWEEP_RESERVE_FLOOR
    assert with_sweeps([p], 2000, ONE_RUN, at)[0].sweeps == 3
    assert with_sweeps([p], 2000, ONE_RUN, at - 1e-6)[0].sweeps == 1
    # room for exactly one more sweep: still one (a median needs an odd count)
    assert with_sweeps([p], 2000, ONE_RUN, at - 1000 / ONE_RUN)[0].sweeps == 1


@pytest.mark.parametrize("budget", [1.0, 1.1, 1.3, 1.6, 2.0, 4.0])
@pytest.mark.parametrize(
    ("n", "epochs"), [(300, 3), (1437, 15), (4000, 2), (4000, 15), (50_000, 30)]
)
def test_a_plan_with_sweeps_never_passes_its_budget(budget, n, epochs):
    n_fit = n - min(max(128, round(0.05 * n)), n // 4)
    finder = n_fit // 2
    plans = [make_plan(n, n_fit, 64, epochs, budget, finder, c) for c in (4, 3)]
    out = with_sweeps(plans, finder, epochs * n, budget)
    counts = {p.sweeps for p, q in zip(out, plans, strict=True) if q.finder and q.n1 > 0}
    assert len(counts) <= 1
    for p, q in zip(out, plans, strict=True):
        if not (q.finder and q.n1 > 0):
            assert p == q  # nothing to pay for
            continue
        assert p.sweeps in (1, MAX_SWEEPS)
        assert p.expected_multiple == pytest.approx(
            q.expected_multiple + (p.sweeps - 1) * finder / (epochs * n)
        )
        if p.sweeps == 1:  # the plan as made: the guard's reserve is left
            assert p.expected_multiple <= budget - RESCUE_RESERVE + 1e-9
        else:  # three sweeps may take the reserve, never the budget
            assert p.expected_multiple <= budget - SWEEP_RESERVE_FLOOR + 1e-9


def test_a_plan_without_the_finder_or_probes_is_left_alone():
    bare = no_probe_plan(4000, 3800, 64, 15, "no probes")
    assert bare.sweeps == 0 and with_sweeps([bare], 2000, ONE_RUN, 3.0) == [bare]
    assert make_plan(4000, 3800, 64, 15, 1.3, 2000).sweeps == 1


# ------------------------------------------------------------------ a run
def test_a_run_with_room_for_three_sweeps_records_them_and_counts_them(tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["auto", "--task", "mnist1d-mlp", "--epochs", "3", "--budget", "2", "--out", str(out)]
    assert main(args) == 0
    info = json.loads((out / "autopilot.json").read_text())
    prior = info["prior"]
    # the progress line and the ladder's reason give every sweep's suggestion
    said = capsys.readouterr()
    assert describe_sweeps(prior).startswith("3 sweeps, each in its own data order: ")
    assert f"finder ({describe_sweeps(prior)}): " in said.out + said.err
    ladder = next(d for d in info["decisions"] if d["name"] == "round1_candidates")
    assert describe_sweeps(prior) in ladder["reason"]
    assert info["plan"]["sweeps"] == 3 and len(prior["sweeps"]) == 3
    # each sweep in its own data order: three different curves
    values = [s["suggestion"] for s in prior["sweeps"]]
    assert len({v for v in values if v is not None}) == sum(v is not None for v in values)
    assert prior["samples"] == info["compute"]["finder_samples"]
    assert prior["samples"] == sum(s["samples"] for s in prior["sweeps"])
    # the same run at budget 1.3 affords one sweep: the first of the three (sweep 0 is the
    # single sweep's data order), at its cost
    single = tmp_path / "single"
    assert main(["auto", "--task", "mnist1d-mlp", "--epochs", "3", "--out", str(single)]) == 0
    alone = json.loads((single / "autopilot.json").read_text())
    assert alone["plan"]["sweeps"] == 1 and "sweeps" not in alone["prior"]
    assert values[0] == alone["prior"]["suggestion"]
    assert prior["sweeps"][0]["samples"] == alone["prior"]["samples"]
    again = combine_sweeps([sweep(s["verdict"], s["suggestion"]) for s in prior["sweeps"]])
    assert prior["verdict"] == again["verdict"] and prior["suggestion"] == again["suggestion"]
    assert info["compute"]["compute_multiple"] <= 2.0 + 1e-9


def test_the_sweeps_come_out_of_what_the_batch_probe_left_and_not_in_restart_mode():
    from lrpilot.autopilot._batch import BatchChoice
    from lrpilot.autopilot._request import _plan, _sweeps

    sizes = (4000, 3800, 64, 15, 1.6, None, "search")
    plans = [_plan(*sizes), _plan(*sizes, candidates=3)]
    assert [p.sweeps for p in _sweeps(plans, *sizes)] == [3, 3]
    # a batch probe that spent 0.32 of a run leaves 1.28: no room for two more sweeps
    spent = BatchChoice(64, 1, 64, 64, "linear", 1.0, "kept", samples=19_200)
    sizes = (4000, 3800, 64, 15, 1.6, spent, "search")
    plans = [_plan(*sizes), _plan(*sizes, candidates=3)]
    assert [p.sweeps for p in _sweeps(plans, *sizes)] == [1, 1]
    # only the peak free (the user's schedule from step 0): the plans fit their kept holds
    sizes = (4000, 3800, 64, 15, 4.0, None, "restart")
    plans = [_plan(*sizes), _plan(*sizes, candidates=3)]
    assert _sweeps(plans, *sizes) == plans and plans[0].sweeps == 1


def test_a_run_interrupted_between_sweeps_leaves_nothing_and_runs_again_the_same(
    tmp_path: Path, monkeypatch
):
    """The run directory is made once every sweep is done: an interruption in the second
    sweep leaves nothing behind (``--resume`` says there is nothing to resume), and the
    same command again ends as a run that was never interrupted."""
    import torch

    import lrpilot
    import lrpilot.finder as finder_pkg
    from lrpilot.errors import ConfigError

    kwargs = dict(optimizer="adamw", epochs=3, budget=2.0, seed=1, progress="none")
    ref = lrpilot.auto("mnist1d-mlp", out_dir=tmp_path / "ref", **kwargs)

    real, calls = finder_pkg.find_lr, []

    def second_sweep_fails(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted in the second sweep")
        return real(*args, **kw)

    monkeypatch.setattr(finder_pkg, "find_lr", second_sweep_fails)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        lrpilot.auto("mnist1d-mlp", out_dir=out, **kwargs)
    assert len(calls) == 2 and not (out.exists() and any(out.iterdir()))
    monkeypatch.setattr(finder_pkg, "find_lr", real)
    with pytest.raises(ConfigError, match="cannot resume"):
        lrpilot.auto("mnist1d-mlp", out_dir=out, resume=True, **kwargs)
    again = lrpilot.auto("mnist1d-mlp", out_dir=out, **kwargs)
    a = json.loads((out / "autopilot.json").read_text())
    b = json.loads((ref.run_dir / "autopilot.json").read_text())
    assert len(a["prior"]["sweeps"]) == 3 and a["prior"] == b["prior"]
    assert a["candidates"] == b["candidates"] and a["decisions"] == b["decisions"]
    wa = torch.load(out / "checkpoints" / "best.pt", weights_only=True)["model"]
    wb = torch.load(ref.run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert again.summary["compute_multiple"] == ref.summary["compute_multiple"]


@pytest.mark.parametrize(("first", "runs"), [("noisy", 1), ("ok", 3)])
def test_the_later_sweeps_run_only_when_the_first_gave_a_suggestion(monkeypatch, first, runs):
    """A first sweep without a suggestion decides "no prior" on its own: the later sweeps
    would cost two sweeps' compute for nothing, so they are not run."""
    from types import SimpleNamespace

    import lrpilot.finder as finder_pkg
    from lrpilot.autopilot._prior import finder_prior
    from lrpilot.tasks import get_task

    calls = []

    def fake_find_lr(*args, **kw):
        calls.append(kw)
        ok = first == "ok" or len(calls) > 1
        return SimpleNamespace(
            verdict="ok" if ok else first, suggestion=0.01 * len(calls) if ok else None,
            suggestion_interval=None, samples=100, message="",
        )  # fmt: skip

    monkeypatch.setattr(finder_pkg, "find_lr", fake_find_lr)
    engine = SimpleNamespace(model=None, optimizer=None)
    prior = finder_prior(engine, get_task("mnist1d-mlp"), 64, seed=0, sweeps=3)
    assert len(calls) == runs and prior["samples"] == 100 * runs
    assert (prior["verdict"] == "ok") == (first == "ok")
