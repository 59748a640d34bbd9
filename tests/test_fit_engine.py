"""The training engine and its callback interface, checked from outside the package
against a hand-written PyTorch loop, closed forms and recomputation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lrpilot.errors import ConfigError, TrainingAborted
from lrpilot.history import History
from lrpilot.tasks import get_task
from lrpilot.train import Callback, Control, Engine, StepOutcome, fit, parse_config, plan_run
from lrpilot.train._checkpoint import load_checkpoint

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
CONFIG = {
    "task": "mnist1d-mlp",
    "epochs": 2,
    "batch_size": 128,
    "log_every": 1,
    "device": "cpu",
    "optimizer": {**SGD, "implementation": "for-loop"},
    "schedule": {"name": "constant"},
}


# ------------------------------------------------------- callbacks written by a user
class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, engine, outcome):
        return (
            Control(stop=True, reason=f"stop at {self.step}") if outcome.step >= self.step else None
        )


class Recorder(Callback):
    def __init__(self) -> None:
        self.outcomes: list[StepOutcome] = []
        self.epochs: list[dict] = []
        self.started = self.ended = 0

    def on_fit_start(self, engine):
        self.started += 1

    def on_step_end(self, engine, outcome):
        self.outcomes.append(outcome)

    def on_epoch_end(self, engine, record):
        self.epochs.append(dict(record))

    def on_fit_end(self, engine, summary):
        self.ended += 1

    def state_dict(self):
        return {"seen": len(self.outcomes)}


class HalveAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, engine, outcome):
        return Control(lr_scale=0.5, reason="halve") if outcome.step == self.step else None


def reference_sgd(steps: int, scale_after: int, lr: float = 0.05, seed: int = 0):
    """A plain PyTorch loop of the same run: seeded init, the documented data order
    (``randperm`` from a generator seeded ``seed * 1_000_003 + epoch``), SGD, the LR
    halved after step ``scale_after``. Returns per-step (loss, lr) and the weights."""
    import random

    import numpy as np

    task = get_task("mnist1d-mlp")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, foreach=False)
    x, y = task.train_set.tensors
    out, step, epoch = [], 0, 0
    while step < steps:
        gen = torch.Generator()
        gen.manual_seed(seed * 1_000_003 + epoch)
        for idx in torch.randperm(len(x), generator=gen).split(128):
            if step == steps:
                break
            used = opt.param_groups[0]["lr"]
            opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            out.append((loss.item(), used))
            if step == scale_after:
                opt.param_groups[0]["lr"] = lr * 0.5
        epoch += 1
    return out, model.state_dict()


def test_callbacks_from_outside_stop_record_and_scale_the_lr(tmp_path: Path) -> None:
    recorder = Recorder()
    result = fit(
        CONFIG,
        tmp_path / "run",
        progress="none",
        callbacks=[HalveAt(10), recorder, StopAt(40)],  # 32 steps per epoch: stops in epoch 1
    )
    expected, weights = reference_sgd(40, scale_after=10)
    assert [o.step for o in recorder.outcomes] == list(range(1, 41))
    assert [o.loss for o in recorder.outcomes] == pytest.approx([e[0] for e in expected], rel=1e-6)
    assert [o.lr for o in recorder.outcomes] == [e[1] for e in expected]
    assert [o.lr for o in recorder.outcomes[10:]] == [0.025] * 30  # exactly half from step 11
    for key, value in result.model.state_dict().items():
        assert torch.allclose(value, weights[key], rtol=1e-5, atol=1e-7), key
    summary = result.summary
    assert summary["status"] == "early_stopped" and summary["stop_reason"] == "stop at 40"
    assert summary["steps_run"] == 40 and summary["epochs_run"] == 2
    # the stopped epoch is closed with a validation of the final weights
    assert [r["step"] for r in recorder.epochs] == [32, 40]
    assert result.history.epochs[-1]["step"] == 40
    assert recorder.started == recorder.ended == 1
    events = [e for e in summary["guard"]["actions"] if e["action"] == "lr_scale"]
    assert events == [
        {
            "type": "event",
            "step": 10,
            "epoch": 0,
            "action": "lr_scale",
            "lr_scale": 0.5,
            "reason": "halve",
        }
    ]
    # the user's callback state is in the checkpoint; resuming needs the same callbacks
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 40 and ckpt["callbacks"] == [{}, {"seen": 40}, {}]
    (tmp_path / "run" / "summary.json").unlink()  # as if killed before the summary
    with pytest.raises(ConfigError, match="holds 3 callback state"):
        fit(CONFIG, tmp_path / "run", resume=True, progress="none")


def test_a_callback_must_be_a_callback(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Callback"):
        fit(CONFIG, tmp_path / "run", progress="none", callbacks=[object()])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- the Engine API
def test_engine_branches_from_a_snapshot_deterministically() -> None:
    cfg = parse_config({**CONFIG, "schedule": {"name": "cosine", "warmup": {"epochs": 1}}})
    engine = Engine(cfg)
    engine.run_steps(28)
    snap = engine.snapshot()
    first = engine.run_steps(7)  # crosses the epoch boundary (32 steps per epoch)
    assert [o.epoch for o in first] == [0] * 4 + [1] * 3
    weights = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.restore(snap)
    engine.set_schedule(lambda step: 1e-3)  # a candidate branch
    branch = engine.run_steps(5)
    assert [o.lr for o in branch] == [1e-3] * 5
    engine.restore(snap)  # the schedule comes back with the snapshot
    again = engine.run_steps(7)
    assert again == first  # same steps, losses, LRs, norms
    for key, value in engine.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert engine.state.step == 35 and engine.state.epoch == 1


def test_engine_evaluate_matches_a_recomputation() -> None:
    engine = Engine(parse_config(CONFIG))
    engine.run_steps(3)
    metrics = engine.evaluate()
    task = engine.task
    x, y = task.val_set.tensors
    with torch.no_grad():
        engine.model.eval()
        out = engine.model(x)
        engine.model.train()
    assert metrics["val_loss"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
    accuracy = float((out.argmax(1) == y).float().mean())
    assert metrics["val_accuracy"] == pytest.approx(accuracy, rel=1e-6)


def test_plan_run_matches_the_closed_forms() -> None:
    config = {
        **CONFIG,
        "batch_size": 16,
        "accumulate": 3,
        "epochs": 3,
        "schedule": {"name": "cosine", "lr": 0.1, "warmup": {"epochs": 1}},
        "lr_scaling": {"rule": "linear", "base_batch": 24},
    }
    plan = plan_run(config)
    spe = math.ceil(math.ceil(4000 / 16) / 3)  # 84
    assert (plan.steps_per_epoch, plan.total_steps, plan.effective_batch) == (spe, 3 * spe, 48)
    assert plan.lr_scale_factor == 2.0
    for step in (0, spe // 2, spe, 2 * spe, 3 * spe - 1):
        if step < spe:
            lr = 0.1 * step / spe
        else:
            lr = 0.05 * (1 + math.cos(math.pi * (step - spe) / (2 * spe)))
        assert plan.schedule(step) == pytest.approx(2.0 * lr, rel=1e-12, abs=1e-15)
    assert Engine(parse_config(config)).total_steps == plan.total_steps


# ----------------------------------------------------------- the guard's stall rule
LR8 = {
    "task": "mnist1d-cnn",
    "epochs": 2,
    "device": "cpu",
    "optimizer": {"name": "sgd", "lr": 8.0},
    "schedule": {"name": "constant"},
}


def test_guard_rescues_a_run_that_stays_at_its_starting_level(tmp_path: Path) -> None:
    """Issue 15's case: SGD at a constant LR of 8 on mnist1d-cnn. Three spike rescues
    bring the LR to 1, where the loss sits at chance level (ln 10 = 2.30); before the
    stall rule the run finished there (validation accuracy 9.8%)."""
    result = fit(LR8, tmp_path / "run", progress="none")
    actions = result.summary["guard"]["actions"]
    stalled = [e for e in actions if "still at its starting level" in e["reason"]]
    assert stalled and all(e["action"] == "guard_rescue" for e in actions)
    assert all(e["restored_step"] == 0 for e in stalled)  # back to the good start
    start = result.history.steps[0]["train_loss"]
    assert start == pytest.approx(math.log(10), abs=0.05)
    final = result.summary["final"]
    assert final["train_loss"] < start - 0.2 and final["val_accuracy"] > 0.2  # learning


def test_the_stall_rule_ends_a_hopeless_run_with_a_clear_message(tmp_path: Path) -> None:
    config = {**LR8, "guard": {"max_rescues": 4}}
    with pytest.raises(TrainingAborted, match=r"still at its starting level 2\.3.* after 4 rescue"):
        fit(config, tmp_path / "run", progress="none")
    history = History.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [e["action"] for e in history.events][-1] == "guard_abort"


def test_an_optimizer_factory_builds_the_optimizer_and_the_schedule_drives_it() -> None:
    from lrpilot.schedules import from_config

    made = []

    def factory(groups):  # type: ignore[no-untyped-def]
        opt = torch.optim.Adagrad(groups, lr=123.0)
        made.append(opt)
        return opt

    schedule = {"name": "linear", "start_lr": 0.1, "end_lr": 0.0, "steps": 10}
    cfg = parse_config({"task": "mnist1d-mlp", "epochs": 1, "device": "cpu", "schedule": schedule})
    engine = Engine(cfg, optimizer_factory=factory)
    assert made == [engine.optimizer] and isinstance(engine.optimizer, torch.optim.Adagrad)
    ref = from_config(schedule)
    assert engine.optimizer.param_groups[0]["lr"] == ref(0)
    engine.run_steps(3)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(ref(3))
