"""The engine's lagged (sync-free) step: the default on CUDA, forced on the CPU here.

References: the engine's eager step (bit-identical on healthy runs), the weights recorded
after every optimizer step (a planted non-finite loss is never applied; the rescue returns
to a state from before it), the eager fp16 GradScaler path (skips counted alike) and, on
CUDA, PyTorch's sync debug mode (no host sync in a steady-state step).
"""

from __future__ import annotations

import json
import math
from dataclasses import astuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import lrpilot.train._engine as engine_module
from lrpilot.tasks import Task
from lrpilot.train import Callback, Engine, fit, parse_config
from lrpilot.train._builtin import GuardCallback
from lrpilot.train._callbacks import CallbackList
from lrpilot.train._guard import DivergenceGuard

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}


class PlantedLoss:
    """Cross-entropy whose value is ``bad`` at the given optimizer steps (1-based; one
    micro-batch per step) while its gradient stays the finite cross-entropy gradient, so
    only a veto keeps the update out of the weights."""

    def __init__(self, at: set[int], bad: float) -> None:
        self.at, self.bad, self.calls = at, bad, 0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs, targets)
        if outputs.requires_grad:  # training steps only (not validation)
            self.calls += 1
            if self.calls in self.at:
                return loss + (torch.tensor(self.bad) - loss).detach()
        return loss


class OverflowingGradients(PlantedLoss):
    """Cross-entropy with its finite value, whose gradient at the given steps is huge
    (``1e36`` per output): finite in fp32, infinite once a GradScaler multiplies it."""

    def __init__(self, at: set[int]) -> None:
        super().__init__(at, 0.0)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs, targets)
        if outputs.requires_grad:
            self.calls += 1
            if self.calls in self.at:
                big = outputs.sum() * 1e36
                return loss + (big - big.detach())
        return loss


def make_task(loss_fn=F.cross_entropy, n: int = 512) -> Task:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n + 128, 12, generator=gen)
    y = (x @ torch.randn(12, 4, generator=gen)).argmax(1)
    return Task(
        name="syncfree-toy",
        build_model=lambda: nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 4)),
        train_set=TensorDataset(x[:n], y[:n]),
        val_set=TensorDataset(x[n:], y[n:]),
        loss_fn=loss_fn,
    )


def config(**extra) -> dict:
    return {
        "task": "syncfree-toy",
        "epochs": 2,
        "batch_size": 32,
        "log_every": 4,
        "device": "cpu",
        "optimizer": SGD,
        **extra,
    }


def engine(task: Task, lagged: bool, **extra) -> Engine:
    return Engine(parse_config(config(**extra), task=task), task, _lagged=lagged)


class WeightLog:
    """The flat weights after every ``optimizer.step()`` call (an optimizer post-hook)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.after = engine, []
        self.before = self.flat()
        engine.optimizer.register_step_post_hook(lambda *a: self.after.append(self.flat()))

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in self.engine.model.parameters()])


def same(a: list, b: list) -> bool:
    """Outcome lists equal, nan equal to nan."""

    def key(o):
        return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in astuple(o))

    return [key(o) for o in a] == [key(o) for o in b]


def with_guard(eng: Engine, snapshot_every: int = 4) -> tuple[GuardCallback, CallbackList]:
    guard = GuardCallback(DivergenceGuard(), factor=0.5, snapshot_every=snapshot_every)
    calls = CallbackList([guard])
    calls.fit_start(eng)
    return guard, calls


# --------------------------------------------------------------------------- mode
def test_mode_is_chosen_by_device_and_eager_on_cpu() -> None:
    task = make_task()
    assert Engine(parse_config(config(), task=task), task).lagged is False  # CPU: eager
    assert engine(task, True).lagged is True
    with pytest.raises(ValueError, match="fused optimizer"):
        engine(task, True, optimizer={**SGD, "implementation": "for-loop"})


# ------------------------------------------------------------------ healthy runs
@pytest.mark.parametrize("accumulate", [1, 3])
def test_lagged_healthy_run_is_bit_identical_to_eager(accumulate: int) -> None:
    task = make_task()
    runs = {}
    for lagged in (False, True):
        eng = engine(task, lagged, accumulate=accumulate, grad_clip=1.0 if accumulate > 1 else None)
        _, calls = with_guard(eng)
        outcomes = eng.run_steps(30, calls)  # crosses the epoch boundary (16 or 6 steps)
        runs[lagged] = (eng, outcomes)
    (a, oa), (b, ob) = runs[False], runs[True]
    assert oa == ob  # loss, grad norm, lr, verdicts, step and epoch numbers
    assert len(ob) == 30 and b.pending == 0
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    sa, sb = a.state.state_dict(), b.state.state_dict()
    sa.pop("train_time"), sb.pop("train_time")
    assert sa == sb


def test_lagged_fit_matches_eager_fit(tmp_path, monkeypatch) -> None:
    task = make_task()
    eager = fit(config(), tmp_path / "eager", task=task, progress="none")
    monkeypatch.setattr(engine_module, "_FORCE_LAGGED", True)
    lagged = fit(config(), tmp_path / "lagged", task=task, progress="none")
    assert lagged.history.steps == eager.history.steps
    assert [r["train_loss"] for r in lagged.history.epochs] == [
        r["train_loss"] for r in eager.history.epochs
    ]
    for p, q in zip(eager.model.parameters(), lagged.model.parameters(), strict=True):
        assert torch.equal(p, q)


# ---------------------------------------------------------------- planted bad steps
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_planted_non_finite_loss_is_never_applied_and_rescued_before_it(bad: float) -> None:
    k = 11
    task = make_task(PlantedLoss({k}, bad))
    eng = engine(task, True)
    weights = WeightLog(eng)
    guard, calls = with_guard(eng, snapshot_every=4)
    taken: list[int] = []
    original = eng.snapshot

    def spy(*args, **kwargs):
        snap = original(*args, **kwargs)
        taken.append(snap["step"])
        assert eng.pending == 0  # the gate has seen every step the snapshot holds
        return snap

    eng.snapshot = spy  # type: ignore[method-assign]
    outcomes = eng.run_steps(k + 1, calls)
    bad_step = [o for o in outcomes if not math.isfinite(o.loss)]
    assert [o.step for o in bad_step] == [k] and bad_step[0].verdict == "diverged"
    # the step's gradient was finite, so only the device-side veto kept it out
    after = weights.after
    assert torch.equal(after[k - 1], after[k - 2])  # step k changed nothing
    assert not torch.equal(after[k - 2], after[k - 3])  # (step k-1 did change them)
    event = next(e for e in eng.state.events if e["action"] == "guard_rescue")
    restored = event["restored_step"]
    assert restored < k and restored in taken
    now = weights.flat()
    assert torch.equal(now, after[restored - 1] if restored else weights.before)
    assert eng.state.step == k + 1  # the step queued after k was dropped with the rescue
    assert guard.guard.rescues == 1


def test_planted_nan_through_fit_rescues_and_ends_finite(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "_FORCE_LAGGED", True)
    task = make_task(PlantedLoss({9}, math.nan))
    result = fit(config(guard={"snapshot_every": 4}), tmp_path / "r", task=task, progress="none")
    rescues = [e for e in result.summary["guard"]["actions"] if e.get("action") == "guard_rescue"]
    assert len(rescues) == 1 and rescues[0]["restored_step"] < 9
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert result.summary["status"] == "completed"


# -------------------------------------------------------------------------- fp16
def test_scaler_skips_are_counted_alike_without_reading_the_scale(monkeypatch) -> None:
    """Planted overflows at steps 1, 4 and 7: the lagged engine counts them from the
    late-read flags, like the eager one from ``get_scale()``, and steps the schedule back."""
    runs = {}
    for lagged in (False, True):
        task = make_task(OverflowingGradients({1, 4, 7}))
        eng = engine(task, lagged)
        eng.scaler = torch.amp.GradScaler("cpu")
        _, calls = with_guard(eng, snapshot_every=1000)  # (a snapshot reads the scale)
        if lagged:
            monkeypatch.setattr(
                eng.scaler, "get_scale", lambda: pytest.fail("lagged mode read the scale")
            )
        runs[lagged] = (eng, eng.run_steps(12, calls))
    (a, oa), (b, ob) = runs[False], runs[True]
    assert a.state.skipped_steps == 3
    assert [o.step for o in oa if o.skipped] == [1, 4, 7]
    assert b.state.skipped_steps == a.state.skipped_steps
    assert [o.skipped for o in ob] == [o.skipped for o in oa]
    assert b.adapter.last_epoch == 12 - b.state.skipped_steps == a.adapter.last_epoch
    assert "diverged" not in {o.verdict for o in oa}  # (no garbage momentum after step 1)
    assert same(oa, ob)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


# -------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (sync check)")
@pytest.mark.parametrize("amp", [False, True])
def test_no_host_sync_in_a_steady_state_step_on_cuda(amp: bool) -> None:  # pragma: no cover
    task = make_task(n=4096)
    cfg = parse_config(config(device="cuda", amp=amp, log_every=100), task=task)
    eng = Engine(cfg, task)
    assert eng.lagged  # the default on CUDA
    _, calls = with_guard(eng, snapshot_every=1000)
    eng.run_steps(5, calls)  # warm-up: step 1 is logged, buffers and the pool are made
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(20):  # steps 6..25: no logging, no snapshot, no epoch end
            eng.advance()
            while (outcome := eng.next_outcome()) is not None:
                calls.step_end(eng, outcome)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    rest = eng.resolve()
    assert eng.state.step == 25 and all(math.isfinite(o.loss) for o in rest)


class Crash(Callback):
    """Raises at step ``at`` (``None``: never); counts the outcomes it saw."""

    def __init__(self, at: int | None) -> None:
        self.at, self.seen = at, 0

    def on_step_end(self, engine, outcome):
        self.seen += 1
        if outcome.step == self.at:
            raise KeyboardInterrupt("planted crash")

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def test_lagged_resume_is_bit_identical_with_unread_outcomes_in_the_checkpoint(
    tmp_path, monkeypatch
) -> None:
    """A lagged checkpoint is taken with one step queued after the outcome being handed
    out: it is read into the checkpoint and handed out after the resume."""
    monkeypatch.setattr(engine_module, "_FORCE_LAGGED", True)
    task = make_task(PlantedLoss({21}, math.nan))  # a rescue on the way
    cfg = config(checkpoint_every=7, guard={"snapshot_every": 4})
    whole = Crash(None)
    reference = fit(cfg, tmp_path / "ref", task=task, progress="none", callbacks=[whole])
    task = make_task(PlantedLoss({21}, math.nan))
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "r", task=task, progress="none", callbacks=[Crash(30)])
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 29 and [o["step"] for o in ckpt["outcomes"]] == [29]  # at 28
    task = make_task(PlantedLoss(set(), math.nan))  # the crashed run's step 21 is past
    resumed_cb = Crash(None)
    resumed = fit(
        cfg, tmp_path / "r", task=task, progress="none", resume=True, callbacks=[resumed_cb]
    )
    assert resumed_cb.seen == whole.seen  # every outcome handed out once
    assert resumed.history.steps == reference.history.steps
    actions = [json.dumps(r.summary["guard"]["actions"]) for r in (resumed, reference)]
    assert actions[0] == actions[1] and '"guard_rescue"' in actions[0]
    for p, q in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
