"""lrpilot.integrations.lightning with the real Lightning package, on CPU, offline.

The module is a small MLP on a slice of the built-in digits task (8 batches of 16)."""

from __future__ import annotations

import copy
import csv as csvlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

pytest.importorskip("lightning")
import lightning.pytorch as L

import lrpilot
from lrpilot import schedules
from lrpilot.cli import main
from lrpilot.history import History
from lrpilot.integrations.lightning import LRPilot, configure_optimizers

TASK = lrpilot.get_task("digits-cnn")


class Digits(L.LightningModule):
    def __init__(self, lr: float = 0.05, nan_at: int | None = None, helper=None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.lr = lr
        self.nan_at = nan_at  # plant a non-finite loss at this optimizer step (once)
        self.helper = helper  # a schedule for configure_optimizers, or None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = TASK.loss_fn(self.net(x), y)
        if self.nan_at is not None and self.trainer.global_step == self.nan_at:
            self.nan_at = None
            loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", TASK.loss_fn(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return opt if self.helper is None else configure_optimizers(opt, self.helper)


def loader(n: int = 128, batch: int = 16) -> DataLoader:
    return DataLoader(Subset(TASK.train_set, range(n)), batch_size=batch, shuffle=False)


def make_trainer(tmp_path, callbacks, **kw) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    opts.update(kw)
    return L.Trainer(callbacks=callbacks, **opts)


class RecordLR(L.Callback):
    """The LR each optimizer step used (read right before the step)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def steps_of(run_dir) -> list[dict]:
    return History.read_jsonl(run_dir).steps


@pytest.mark.parametrize("kind", ["schedule", "config"])
def test_schedule_steps_once_per_optimizer_step_with_accumulation(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "schedule":
        spec = sched = schedules.warmup(schedules.cosine(0.1, steps=5), steps=3)
    else:  # epochs are optimizer steps per epoch (4 here), not batches (7)
        spec = {"name": "cosine", "lr": 0.1, "warmup": {"epochs": 1}}
        sched = schedules.from_config(spec, steps_per_epoch=4, total_steps=8)
        assert sched(4) == 0.1
    rec = RecordLR()
    pilot = LRPilot(spec, guard=False, log_dir=tmp_path)
    trainer = make_trainer(tmp_path, [pilot, rec], accumulate_grad_batches=2, max_epochs=2)
    trainer.fit(Digits(), loader(n=112))  # 7 batches: 3 full windows and a last one of 1
    assert trainer.global_step == 8
    assert rec.lrs == pytest.approx([sched(s) for s in range(8)], rel=1e-12, abs=0)
    assert pilot.adapter.last_epoch == 8
    recorded = steps_of(tmp_path)
    assert [r["step"] for r in recorded] == list(range(1, 9))
    assert [r["lr"] for r in recorded] == pytest.approx(rec.lrs, rel=1e-12)
    # the step's loss is the mean of its micro-batches, not Lightning's loss / accumulate
    assert all(1.0 < r["train_loss"] < 4.0 for r in recorded)


def test_configure_optimizers_helper_is_stepped_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    sched = schedules.linear(0.1, 0.0, steps=8)
    rec = RecordLR()
    pilot = LRPilot(log_dir=tmp_path)  # drives the module's lrpilot scheduler, never steps it
    trainer = make_trainer(
        tmp_path,
        [pilot, rec],
        accumulate_grad_batches=2,
        max_epochs=2,
        enable_checkpointing=True,
    )
    trainer.fit(Digits(helper=sched), loader())
    assert trainer.global_step == 8
    assert rec.lrs == pytest.approx([sched(s) for s in range(8)], rel=1e-12)
    [config] = trainer.lr_scheduler_configs
    assert config.interval == "step" and config.scheduler.last_epoch == 8
    assert pilot.adapter is config.scheduler and not pilot.owns_schedule
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["lr_schedulers"][0]["step"] == 8


def test_find_lr_restores_state_then_applies_the_choice(tmp_path):
    torch.manual_seed(0)
    sched = schedules.warmup(schedules.cosine(1.0, steps=12), steps=4)

    class Before(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.model = copy.deepcopy(pl_module.state_dict())
            self.opt = copy.deepcopy(trainer.optimizers[0].state_dict())
            self.rng = torch.get_rng_state()

    class After(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.model = copy.deepcopy(pl_module.state_dict())
            self.opt = copy.deepcopy(trainer.optimizers[0].state_dict())
            self.rng = torch.get_rng_state()
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.training = pl_module.training

    pilot = LRPilot(
        sched,
        find_lr=True,
        guard=False,
        log_dir=tmp_path,
        finder={"steps": 20, "start_lr": 1e-4, "end_lr": 10.0},
    )
    before, after = Before(), After()
    rec = RecordLR()
    trainer = make_trainer(tmp_path, [before, pilot, after, rec], max_epochs=2)
    trainer.fit(Digits(), loader())
    for key, value in before.model.items():
        assert torch.equal(after.model[key], value), key
    assert after.opt["state"] == before.opt["state"] == {}
    groups_before = [{k: v for k, v in g.items() if k != "lr"} for g in before.opt["param_groups"]]
    groups_after = [{k: v for k, v in g.items() if k != "lr"} for g in after.opt["param_groups"]]
    assert groups_after == groups_before
    assert torch.equal(after.rng, before.rng) and after.training
    decision = pilot.decision
    assert decision["action"] == "lr_decision" and decision["finder_steps"] >= 5
    chosen = decision["chosen_lr"]
    assert decision["verdict"] == "ok" and chosen is not None
    # the choice becomes the schedule's peak (it is 1.0 here) and the live optimizer's LR
    assert pilot.adapter.lr_scale == pytest.approx(chosen / 1.0, rel=1e-12)
    assert after.lr == pytest.approx(sched(0) * chosen, rel=1e-12)
    assert rec.lrs == pytest.approx([sched(s) * chosen for s in range(16)], rel=1e-12)
    assert max(rec.lrs) == pytest.approx(chosen, rel=1e-12)
    events = History.read_jsonl(tmp_path).events
    assert events[0]["action"] == "lr_decision" and events[0]["chosen_lr"] == chosen


def test_guard_rolls_back_to_the_snapshot_and_cuts_the_lr(tmp_path):
    torch.manual_seed(0)
    sched = schedules.constant(0.05)
    pilot = LRPilot(sched, log_dir=tmp_path, snapshot_every=2)
    seen: dict[str, dict] = {"before": {}, "after": {}}

    class Weights(L.Callback):
        def __init__(self, key):
            self.key = key

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[self.key][trainer.global_step] = (
                copy.deepcopy(pl_module.state_dict()),
                copy.deepcopy(trainer.optimizers[0].state_dict()["state"]),
            )

    rec = RecordLR()
    trainer = make_trainer(tmp_path, [Weights("before"), pilot, Weights("after"), rec])
    model = Digits(nan_at=5)  # the 6th optimizer step gets a NaN loss
    trainer.fit(model, loader())
    [event] = [e for e in pilot.events if e["action"] == "guard_rescue"]
    assert event["step"] == 6 and event["reason"] == "non-finite loss or gradient norm"
    # snapshots at steps 0, 2, 4: the older of the last two is step 2's
    assert event["restored_step"] == 2 and event["lr_scale"] == 0.5
    weights, momentum = seen["after"][6]
    good_weights, good_momentum = seen["before"][2]
    bad_weights, _ = seen["before"][6]
    assert not all(torch.isfinite(v).all() for v in bad_weights.values())
    for key, value in good_weights.items():
        assert torch.equal(weights[key], value), key
    for key, value in good_momentum.items():
        assert torch.equal(momentum[key]["momentum_buffer"], value["momentum_buffer"])
    assert rec.lrs == pytest.approx([0.05] * 6 + [0.025] * 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = steps_of(tmp_path)
    assert math.isnan(rows[5]["train_loss"]) and math.isfinite(rows[6]["train_loss"])
    assert History.read_jsonl(tmp_path).events[-1]["action"] == "guard_rescue"


def test_guard_out_of_rescues_aborts_with_an_event(tmp_path):
    torch.manual_seed(0)
    pilot = LRPilot(schedules.constant(0.05), log_dir=tmp_path, guard_options={"max_rescues": 0})
    trainer = make_trainer(tmp_path, [pilot])
    with pytest.raises(
        lrpilot.TrainingAborted, match="non-finite loss or gradient norm at step 3 after 0 rescue"
    ):
        trainer.fit(Digits(nan_at=2), loader())
    [event] = History.read_jsonl(tmp_path).events  # the file was closed on the exception
    assert event["action"] == "guard_abort" and event["step"] == 3


def test_metrics_jsonl_is_read_by_diagnose(tmp_path, capsys):
    torch.manual_seed(0)
    csv = L.loggers.CSVLogger(tmp_path / "csv", name="run")
    trainer = make_trainer(
        tmp_path,
        [LRPilot(schedules.constant(0.05), log_dir=tmp_path)],
        max_epochs=3,
        limit_val_batches=2,
        logger=csv,
    )
    trainer.fit(Digits(), loader(), loader(n=32))
    with open(Path(csv.log_dir) / "metrics.csv") as handle:
        rows = [r for r in csvlib.DictReader(handle) if r.get("lrpilot/lr")]
    assert [float(r["lrpilot/lr"]) for r in rows] == [0.05] * 24  # the Trainer's logger
    history = History.read_jsonl(tmp_path)
    assert [r["step"] for r in history.steps] == list(range(1, 25))
    assert [r["epoch"] for r in history.epochs] == [0, 1, 2]
    assert all(math.isfinite(r["val_loss"]) for r in history.epochs)
    for epoch, record in enumerate(history.epochs):  # epoch records from the step records
        rows = history.steps[8 * epoch : 8 * epoch + 8]
        assert {r["epoch"] for r in rows} == {epoch}
        assert record["train_loss"] == pytest.approx(sum(r["train_loss"] for r in rows) / 8)
        assert record["lr"] == rows[-1]["lr"] and record["step"] == rows[-1]["step"]
    findings = lrpilot.diagnose(history)
    assert findings and all(f.kind != "nan" for f in findings)
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path), "--json"]) == 0  # `lrpilot diagnose RUN_DIR`
    assert {f["kind"] for f in json.loads(capsys.readouterr().out)} == {f.kind for f in findings}


def test_resume_with_ckpt_path_continues_the_lr_sequence(tmp_path):
    sched = schedules.warmup(schedules.cosine(0.1, steps=12), steps=4)

    def pilot(run):  # the LR decision is part of the state: a resumed run does not probe again
        return LRPilot(sched, find_lr=True, finder={"steps": 10}, log_dir=tmp_path / run)

    torch.manual_seed(0)
    full = RecordLR()
    whole = pilot("a")
    make_trainer(tmp_path / "a", [whole, full], max_epochs=2).fit(Digits(), loader())
    scale = whole.adapter.lr_scale
    assert full.lrs == pytest.approx([sched(s) * scale for s in range(16)], rel=1e-12)

    torch.manual_seed(0)
    ckpt_cb = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1
    )
    first = make_trainer(
        tmp_path / "b",
        [pilot("b"), ckpt_cb],
        max_epochs=2,
        max_steps=5,
        enable_checkpointing=True,
    )
    first.fit(Digits(), loader())
    [ckpt] = list((tmp_path / "ck").glob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)["callbacks"]
    [state] = [v for k, v in saved.items() if k.startswith("LRPilot")]
    assert state["schedule"]["step"] == 5 and state["seen_step"] == 5
    assert state["decision"] == whole.decision
    rest = RecordLR()
    resumed = pilot("b")
    second = make_trainer(tmp_path / "b", [resumed, rest], max_epochs=2)
    second.fit(Digits(), loader(), ckpt_path=str(ckpt))
    assert resumed.events == [] and resumed.decision == whole.decision
    decisions = [
        e for e in History.read_jsonl(tmp_path / "b").events if e["action"] == "lr_decision"
    ]
    assert len(decisions) == 1
    assert second.global_step == 16
    assert rest.lrs == pytest.approx(full.lrs[5:], rel=1e-12)
    # metrics.jsonl continues after step 5 without repeating a step
    assert [r["step"] for r in steps_of(tmp_path / "b")] == list(range(1, 17))
    assert [r["lr"] for r in steps_of(tmp_path / "b")] == pytest.approx(full.lrs, rel=1e-12)


def test_schedule_and_module_scheduler_together_are_refused(tmp_path):
    trainer = make_trainer(tmp_path, [LRPilot(schedules.constant(0.1), log_dir=tmp_path)])
    with pytest.raises(ValueError, match="pass the schedule to one of them only"):
        trainer.fit(Digits(helper=schedules.constant(0.1)), loader())


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"guard_factor=2 is out of range; allowed: \(0, 1\)"):
        LRPilot(guard_factor=2)
    with pytest.raises(ValueError, match="snapshot_every=0"):
        LRPilot(snapshot_every=0)
    with pytest.raises(ValueError, match="find_lr must be True or False"):
        LRPilot(find_lr="auto")
