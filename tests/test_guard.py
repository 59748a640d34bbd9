"""Divergence guard: the rule on recorded losses, its state record, and a real rescue."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from lrpilot.errors import TrainingAborted
from lrpilot.history import History
from lrpilot.train import fit
from lrpilot.train._guard import (
    STALL_BLOCKS,
    DivergenceGuard,
    _mad_lower_bound,
    _scale_about_sorted,
    classify,
    rebound_level,
    robust_level,
    spike_floor,
)


def test_robust_level_is_median_and_scaled_mad() -> None:
    med, scale = robust_level([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0
    assert scale == pytest.approx(1.4826 * 1.0)
    # even count: mean of the middle pair; floor for a constant window
    assert robust_level([2.0, 2.0, 2.0, 2.0]) == (2.0, pytest.approx(0.02))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_or_grad_norm_diverges_at_once(bad: float) -> None:
    assert classify(bad, [], threshold=6, min_history=3) == "diverged"
    assert classify(1.0, [1.0] * 5, threshold=6, min_history=3, grad_norm=bad) == "diverged"
    guard = DivergenceGuard()
    assert guard.observe(bad) == "diverged"


@pytest.mark.parametrize("seed", range(5))
def test_sorted_mad_selection_is_bit_identical_to_sorting_the_deviations(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        n = rng.randint(1, 60)
        # few distinct values (ties, median on a repeated value) or continuous ones
        pool = [rng.choice([0.5, 1.0, 1.5, 2.0]) for _ in range(n)]
        values = pool if rng.random() < 0.3 else [rng.gauss(0, 1) ** 3 for _ in range(n)]
        ordered = sorted(values)
        med = statistics.median(values)
        mad = statistics.median(abs(v - med) for v in values)  # sorts the deviations
        reference = max(1.4826 * mad, 0.01 * abs(med), 1e-8)
        assert _scale_about_sorted(ordered, med) == reference
        assert robust_level(values) == (med, reference)
        assert 0.0 <= _mad_lower_bound(ordered, med) <= mad


def test_too_little_history_never_flags_a_finite_loss() -> None:
    assert classify(1e9, [1.0, 1.0], threshold=6, min_history=3) == "ok"


def test_threshold_boundary() -> None:
    window = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]
    med, scale = robust_level(window)
    limit = med + 6 * scale
    assert classify(limit, window, threshold=6, min_history=3) == "ok"
    assert classify(limit * (1 + 1e-9) + 1e-12, window, threshold=6, min_history=3) == "suspect"


def test_negative_losses_work() -> None:
    window = [-5.0, -5.1, -4.9, -5.05, -4.95]
    assert classify(-4.9, window, threshold=6, min_history=3) == "ok"
    assert classify(-1.0, window, threshold=6, min_history=3) == "suspect"
    assert classify(-50.0, window, threshold=6, min_history=3) == "ok"  # lower is never bad


def test_isolated_spikes_are_ignored_but_clusters_diverge() -> None:
    guard = DivergenceGuard(window=30, patience=3, horizon=10)
    for i in range(20):
        assert guard.observe(2.0 - 0.01 * i) == "ok"
    verdicts = []
    for i in range(40):  # a spike every 5th step: at most 2 within any 10 steps
        verdicts.append(guard.observe(40.0 if i % 5 == 0 else 1.8))
    assert "diverged" not in verdicts and verdicts.count("suspect") == 8
    assert [guard.observe(v) for v in (40.0, 1.8, 40.0, 40.0)][-1] == "diverged"


def test_guard_state_dict_roundtrip_and_version() -> None:
    guard = DivergenceGuard(window=10)
    for v in (2.0, 1.9, 1.8, 50.0):
        guard.observe(v)
    guard.record_rescue()
    guard.observe(60.0)
    state = json.loads(json.dumps(guard.state_dict()))  # plain data
    other = DivergenceGuard(window=10)
    other.load_state_dict(state)
    assert other.state_dict() == guard.state_dict()
    for v in (70.0, 1.7, 80.0):
        assert other.observe(v) == guard.observe(v)
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict({**state, "version": 99})


def test_rebound_level_formula_and_arming_boundary() -> None:
    assert rebound_level(2.3, 0.3, 0.1, rise=0.8, progress=6.0) == pytest.approx(0.3 + 0.8 * 2.0)
    assert rebound_level(2.3, 0.3, 0.1, rise=1.0, progress=6.0) == pytest.approx(2.3)
    # armed only for a gain strictly above progress * noise
    assert rebound_level(1.6, 1.0, 0.1, rise=0.5, progress=6.0) is None  # 0.6 = 6 * 0.1
    assert rebound_level(1.6000001, 1.0, 0.1, rise=0.5, progress=6.0) == pytest.approx(1.3)
    # negative losses: only differences matter
    assert rebound_level(-1.0, -3.0, 0.1, rise=0.5, progress=6.0) == pytest.approx(-2.0)


def _decline_then_rebound(rng: random.Random, back: int) -> list[float]:
    """50 steps from 2.3 down to 0.5, 30 steps at 0.5, then ``back`` steps rising
    gradually to 2.3 over 60 steps (0.03 per step, a third of the noise: never far above
    the recent level), with Gaussian noise of 0.1."""
    down = [2.3 - 1.8 * i / 50 for i in range(50)] + [0.5] * 30
    up = [0.5 + 1.8 * min(1.0, (i + 1) / 60) for i in range(back)]
    return [v + rng.gauss(0, 0.1) for v in down + up]


def test_gradual_rebound_to_the_initial_level_is_caught() -> None:
    losses = _decline_then_rebound(random.Random(0), back=90)
    spikes_only = DivergenceGuard(rebound=None)
    assert all(spikes_only.observe(v) != "diverged" for v in losses)  # the old rule misses it
    guard = DivergenceGuard()
    verdicts = [guard.observe(v) for v in losses]
    first = verdicts.index("diverged")
    assert guard.cause == "rebound"
    level = guard.rebound_at
    assert level == pytest.approx(guard.best_level + 0.8 * (guard.first_level - guard.best_level))
    # re-computed: the first step of the rebound phase with 6 of the last 10 losses (a
    # majority of the horizon) above the level
    above = [v > level for v in losses]
    expected = next(i for i in range(89, len(losses)) if sum(above[i - 9 : i + 1]) >= 6)
    assert first == expected
    assert guard.first_level == pytest.approx(statistics.median(losses[:10]))


def test_noisy_first_blocks_do_not_delay_the_rebound_rule() -> None:
    """The progress is measured in the quietest recent block's noise: a chaotic start (the
    first steps of a high LR) does not keep the rule disarmed while the loss, having fallen
    cleanly, climbs back (an MLP regression with AdamW at a far too high LR did this)."""
    rng = random.Random(5)
    chaotic = [1.0 + rng.uniform(-0.8, 0.8) for _ in range(20)]
    quiet = [0.15 + rng.gauss(0, 0.03) for _ in range(20)]
    back = [0.15 + 1.05 * min(1.0, (i + 1) / 10) + rng.gauss(0, 0.03) for i in range(40)]
    losses = chaotic + quiet + back
    guard = DivergenceGuard(threshold=1e9)  # the rebound rule alone
    for v in losses[:30]:
        assert guard.observe(v) == "ok"
    # armed after the first quiet block: first block median ~1.0, best ~0.15, noise ~0.03
    assert guard.rebound_at is not None
    level = guard.rebound_at
    verdicts = [guard.observe(v) for v in losses[30:]]
    above = [v > level for v in losses]
    expected = next(i for i in range(40, len(losses)) if sum(above[i - 9 : i + 1]) >= 6)
    assert verdicts.index("diverged") + 30 == expected < 60
    assert guard.cause == "rebound"


def test_a_short_excursion_above_the_rebound_level_is_not_a_divergence() -> None:
    rng = random.Random(1)
    losses = _decline_then_rebound(rng, back=0)
    # 5 steps of 10 at the initial level (half, not a majority), then back down
    losses += [2.3, 0.5, 2.3, 0.5, 2.3, 0.5, 2.3, 0.5, 2.3, 0.5] + [0.5] * 20
    guard = DivergenceGuard(threshold=1e9)  # spike rule out of the way
    assert all(guard.observe(v) != "diverged" for v in losses)
    assert guard.rebound_at is not None  # armed all along


def test_no_rebound_rule_without_clear_progress() -> None:
    # the loss falls by 0.1 with noise 0.05 (2 noise units): never armed, never diverges
    rng = random.Random(2)
    losses = [2.3 - 0.1 * min(1.0, i / 50) + rng.gauss(0, 0.05) for i in range(100)]
    losses += [2.3 + rng.gauss(0, 0.05) for _ in range(50)]
    guard = DivergenceGuard()
    assert all(guard.observe(v) != "diverged" for v in losses)
    assert guard.rebound_at is None


def test_a_rescue_restarts_the_rebound_levels() -> None:
    losses = _decline_then_rebound(random.Random(3), back=90)
    guard = DivergenceGuard(threshold=1e9)  # the rebound rule alone
    verdicts = [guard.observe(v) for v in losses]
    assert "diverged" in verdicts
    guard.record_rescue()
    assert guard.first_level is None and guard.rebound_at is None
    # the restored state sits at the high level: no progress since, so no new divergence
    assert all(guard.observe(2.3) == "ok" for _ in range(40))


def test_rebound_state_resumes_mid_block() -> None:
    losses = _decline_then_rebound(random.Random(4), back=90)
    reference = DivergenceGuard()
    expected = [reference.observe(v) for v in losses]
    for cut in (7, 55, 83, 95):
        head = DivergenceGuard()
        for v in losses[:cut]:
            head.observe(v)
        resumed = DivergenceGuard()
        resumed.load_state_dict(json.loads(json.dumps(head.state_dict())))
        assert [resumed.observe(v) for v in losses[cut:]] == expected[cut:], cut


def test_version_1_guard_state_still_loads() -> None:
    guard = DivergenceGuard()
    guard.load_state_dict({"version": 1, "window": [2.0, 1.9], "recent": [False], "rescues": 2})
    assert guard.rescues == 2 and guard.first_level is None and guard.rebound_at is None


# ------------------------------------------------------------------ the stall rule
def _rescued_guard(start: float = 2.3, **kwargs) -> DivergenceGuard:
    """A guard that saw the starting loss, a blow-up and one rescue."""
    guard = DivergenceGuard(**kwargs)
    assert guard.observe(start) == "ok" and guard.observe(float("inf")) == "diverged"
    guard.record_rescue()
    return guard


def test_a_rescued_run_still_at_its_starting_level_is_rescued_again() -> None:
    rng = random.Random(5)
    guard = _rescued_guard()
    watch = STALL_BLOCKS * guard.horizon  # 50 steps with the defaults
    verdicts = [guard.observe(2.3 + rng.gauss(0, 0.05)) for _ in range(watch)]
    assert verdicts[:-1] == ["ok"] * (watch - 1) and verdicts[-1] == "diverged"
    assert guard.cause == "stalled"
    guard.record_rescue()  # the watch starts again
    assert not guard.healthy and guard.observe(2.3) == "ok"


def test_a_rescued_run_that_learns_is_left_alone() -> None:
    rng = random.Random(6)
    guard = _rescued_guard()
    watch = STALL_BLOCKS * guard.horizon
    assert not guard.healthy  # on probation: no snapshots of an unproven state
    losses = [2.3 - 0.8 * i / watch + rng.gauss(0, 0.05) for i in range(2 * watch)]
    assert all(guard.observe(v) == "ok" for v in losses)
    assert guard.healthy


@pytest.mark.parametrize(("level", "verdict"), [(1.98, "diverged"), (1.9799, "ok")])
def test_stall_level_boundary(level: float, verdict: str) -> None:
    """Constant losses: no within-block noise, so the margin is its floor 1% of the
    starting level 2.0: a block median of 1.98 is still the starting level."""
    guard = _rescued_guard(start=2.0, rebound=None)
    verdicts = [guard.observe(level) for _ in range(STALL_BLOCKS * guard.horizon)]
    assert guard.stall_level() == pytest.approx(1.98)
    assert verdicts[-1] == verdict and set(verdicts[:-1]) == {"ok"}


def test_stall_watch_resumes_mid_block() -> None:
    rng = random.Random(7)
    losses = [2.3 + rng.gauss(0, 0.05) for _ in range(60)]
    reference = _rescued_guard()
    expected = [reference.observe(v) for v in losses]
    assert "diverged" in expected
    for cut in (3, 25, 49):
        head = _rescued_guard()
        for v in losses[:cut]:
            head.observe(v)
        resumed = DivergenceGuard()
        resumed.load_state_dict(json.loads(json.dumps(head.state_dict())))
        assert [resumed.observe(v) for v in losses[cut:]] == expected[cut:], cut


def test_version_2_guard_state_loads_without_the_stall_rule() -> None:
    guard = DivergenceGuard()
    state = {k: v for k, v in _rescued_guard().state_dict().items() if k in _V2_KEYS}
    guard.load_state_dict({**state, "version": 2})
    guard.record_rescue()
    assert guard.stall_level() is None  # the starting level of that run is unknown
    assert all(guard.observe(2.3) == "ok" for _ in range(100))


_V2_KEYS = ("window", "recent", "rescues", "block", "first_level", "best_level", "noises", "above")


def _too_high_config(guard: bool) -> dict:
    # Two healthy epochs at LR 0.1, then LR 10 (33x the grid-best peak of 0.3 for this
    # task in bench/benchmark-protocol): without the guard the model collapses.
    return {
        "task": "mnist1d-cnn",
        "epochs": 7,
        "seed": 0,
        "schedule": {
            "name": "piecewise",
            "unit": "epochs",
            "boundaries": [2],
            "values": [0.1, 10.0],
        },
        "guard": {"enabled": guard},
        "log_every": 25,
    }


@pytest.mark.slow
def test_guard_rescues_a_far_too_high_learning_rate(tmp_path: Path) -> None:
    guarded = fit(_too_high_config(True), tmp_path / "guarded", progress="none")
    control = fit(_too_high_config(False), tmp_path / "control", progress="none")
    # the control shows the configuration really breaks training (chance is 0.1)
    assert control.summary["final"]["val_accuracy"] < 0.2
    acc = guarded.summary["final"]["val_accuracy"]
    assert acc > 0.6, acc
    rescues = guarded.summary["guard"]["actions"]
    assert guarded.summary["guard"]["rescues"] == len(rescues) >= 1
    assert all(e["action"] == "guard_rescue" for e in rescues)
    scales = [e["lr_scale"] for e in rescues]
    assert scales == [0.5 ** (i + 1) for i in range(len(scales))]
    assert guarded.summary["guard"]["lr_scale"] == scales[-1]
    # recorded in metrics.jsonl too, and the steps stay unique and increasing
    history = History.read_jsonl(guarded.run_dir)
    assert [e["step"] for e in history.events] == [e["step"] for e in rescues]
    steps = [r["step"] for r in history.steps]
    assert steps == sorted(set(steps))
    # after the last rescue the LR really is the scaled schedule
    last = rescues[-1]
    later = [r for r in history.steps if r["step"] > last["step"] and r["epoch"] >= 2]
    assert later and all(r["lr"] == pytest.approx(10.0 * scales[-1]) for r in later)


def test_guard_rescues_a_slide_back_the_spike_rule_misses(tmp_path: Path) -> None:
    # mnist1d-cnn, SGD one-cycle at peak 0.5 (1.7x its grid-best 0.3): this seed's loss
    # falls, then slides back up without spikes; only the rebound rule rescues it
    config = {
        "task": "mnist1d-cnn",
        "epochs": 6,
        "seed": 1,
        "schedule": {"name": "one_cycle", "max_lr": 0.5},
        "log_every": 25,
    }
    guarded = fit(config, tmp_path / "guarded", progress="none")
    spikes_only = fit({**config, "guard": {"rebound": None}}, tmp_path / "spikes", progress="none")
    assert spikes_only.summary["guard"]["rescues"] == 0
    rescues = guarded.summary["guard"]["actions"]
    assert [e["action"] for e in rescues] == ["guard_rescue"]
    assert "back above" in rescues[0]["reason"] and "of its progress" in rescues[0]["reason"]
    acc, control = (r.summary["final"]["val_accuracy"] for r in (guarded, spikes_only))
    assert acc > 0.6 and acc > control + 0.2, (acc, control)


def test_guard_gives_up_after_max_rescues(tmp_path: Path) -> None:
    config = {
        "task": "mnist1d-cnn",
        "epochs": 1,
        "optimizer": {"lr": 1e4},
        "guard": {"max_rescues": 2},
    }
    with pytest.raises(TrainingAborted, match=r"after 2 rescue\(s\).*max_rescues=2"):
        fit(config, tmp_path / "run", progress="none")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "aborted"
    actions = [e["action"] for e in summary["guard"]["actions"]]
    assert actions == ["guard_rescue", "guard_rescue", "guard_abort"]


def test_incremental_guard_agrees_with_the_pure_rule() -> None:
    rng = random.Random(7)
    guard = DivergenceGuard(
        window=12, threshold=3.0, patience=3, horizon=6, min_history=4, rebound=None
    )
    for i in range(3000):
        base = 2.0 * math.exp(-i / 1000)
        loss = base + rng.gauss(0, 0.05) + (rng.random() < 0.1) * rng.uniform(0, 3)
        window = list(guard.window)
        initial = loss if guard.initial_level is None else guard.initial_level
        if i % 7 == 0 and len(window) >= 4:  # exactly at the limit, or just above it
            med, scale = robust_level(window)
            scale = max(scale, spike_floor(initial))
            loss = (med + 3.0 * scale) * (1.0 if i % 14 else 1.0 + 1e-12)
        expected = classify(loss, window, threshold=3.0, min_history=4, initial=initial)
        verdict = guard.observe(loss)
        assert (verdict != "ok") == (expected != "ok"), (i, loss, window)
        assert sorted(guard.window) == guard._sorted
        if verdict == "diverged":
            guard.record_rescue()


@pytest.mark.parametrize(("every", "per_epoch"), [(10, 3), (20, 0), (31, 0), (15, 2)])
def test_snapshots_that_could_never_be_restored_are_skipped(
    tmp_path: Path, monkeypatch, every: int, per_epoch: int
) -> None:
    """32 steps per epoch. A rescue returns to the older of the last two snapshots, so the
    first step snapshot of an epoch matters only if a second one can follow it in the same
    epoch (more than ``every`` steps left): every=10 takes steps 10, 20, 30; every=15
    takes 15 (17 steps left) and 30; every=20 would take step 20 with 12 steps left, which
    nothing can follow: skipped."""
    import lrpilot.train._engine as loop

    taken: list[int] = []
    real = loop.take_snapshot

    def counting(step, *args, **kwargs):
        taken.append(step)
        return real(step, *args, **kwargs)

    monkeypatch.setattr(loop, "take_snapshot", counting)
    config = {
        "task": "mnist1d-mlp",
        "epochs": 2,
        "batch_size": 128,
        "device": "cpu",
        "guard": {"snapshot_every": every},
    }
    fit(config, tmp_path / "run", progress="none")
    epoch_ends = [0, 32, 64]  # the first snapshot, then one per epoch end
    within = sorted(set(taken) - set(epoch_ends))
    expected = [e + k * every for e in (0, 32) for k in range(1, per_epoch + 1)]
    assert within == expected, taken
    assert set(epoch_ends) <= set(taken)


def test_a_rebound_whose_level_disarmed_in_the_same_step_is_explained() -> None:
    """The step that makes the majority can also close a block whose noise disarms the
    level (``rebound_at`` back to None): the verdict stands on the steps judged at the
    armed level, and the rescue's reason names that level (it used to raise a TypeError
    formatting None: seen on the autopilot panel, mnist1d-cnn/AdamW)."""
    from lrpilot.train._builtin import GuardCallback
    from lrpilot.train._callbacks import StepOutcome

    losses = _decline_then_rebound(random.Random(0), back=90)
    guard = DivergenceGuard()
    for v in losses:
        if guard.observe(v) == "diverged":
            break
    assert guard.cause == "rebound" and guard.rebound_judged_at == guard.rebound_at
    armed = guard.rebound_at
    guard.rebound_at = None  # what _arm() leaves when the recent blocks' noise grew
    callback = GuardCallback(guard, factor=0.5, snapshot_every=4)
    outcome = StepOutcome(170, 3, 2.0, 1.0, 0.1, 64, False, "diverged")
    reason = callback.reason(outcome)
    assert f"loss back above {armed:.4g} in most of the last {guard.horizon} steps" in reason
