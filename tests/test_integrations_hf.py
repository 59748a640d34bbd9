"""lrpilot.integrations.transformers with the real transformers package, on CPU, offline.

The model is a BERT built from a config (a few thousand parameters, no download) on
random token data generated here."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from lrpilot import schedules  # noqa: E402
from lrpilot.history import History  # noqa: E402
from lrpilot.integrations.transformers import (  # noqa: E402
    LRPilotCallback,
    LRPilotTrainer,
    choose_lr,
    find_lr,
    make_scheduler,
)

#: The Trainer itself needs accelerate (in the hf extra, so `make test` always has it).
needs_trainer = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None,
    reason="transformers.Trainer needs accelerate: pip install lrpilot[hf]",
)

CONFIG = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the label is whether token 0 is in the upper half."""

    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, 8), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": int(ids[0] >= 32),
        }


class Planted(BertForSequenceClassification):
    """Multiplies the training loss by ``factor`` from optimizer step ``at`` on (for
    ``steps`` steps; gradient accumulation 1)."""

    def __init__(self, config, at: int, factor: float, steps: int = 1) -> None:
        super().__init__(config)
        self.at, self.factor, self.steps, self.calls = at, factor, steps, 0

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if self.training:
            self.calls += 1
            if self.at <= self.calls < self.at + self.steps:
                out.loss = out.loss * self.factor
        return out


def model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(CONFIG)


def args(tmp_path, **kw) -> TrainingArguments:
    opts = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        num_train_epochs=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    opts.update(kw)
    return TrainingArguments(**opts)


class RecordLR(TrainerCallback):
    """The LR each optimizer step used (read right before the step)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


@needs_trainer
def test_make_scheduler_counts_optimizer_steps_with_accumulation(tmp_path):
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=1.0)
    sched = schedules.warmup(schedules.cosine(1e-3, steps=7), steps=3)
    rec = RecordLR()
    trainer = Trainer(
        model=net,
        args=args(
            tmp_path, gradient_accumulation_steps=2, num_train_epochs=2, eval_strategy="epoch"
        ),
        train_dataset=Tokens(36),  # 9 batches: 4 full windows and a last one of 1 per epoch
        eval_dataset=Tokens(8, seed=1),
        optimizers=(opt, make_scheduler(opt, sched)),
        callbacks=[rec, LRPilotCallback(diagnose=False)],
    )
    trainer.train()
    assert trainer.state.global_step == 10
    assert rec.lrs == pytest.approx([sched(s) for s in range(10)], rel=1e-12, abs=0)
    recorded = History.read_jsonl(tmp_path)
    assert [r["step"] for r in recorded.steps] == list(range(1, 11))
    assert [r["lr"] for r in recorded.steps] == pytest.approx(rec.lrs, rel=1e-12)
    assert [r["epoch"] for r in recorded.epochs] == [0, 1]
    for epoch, record in enumerate(recorded.epochs):  # epoch records from the step records
        rows = recorded.steps[5 * epoch : 5 * epoch + 5]
        assert {r["epoch"] for r in rows} == {epoch}
        assert record["train_loss"] == pytest.approx(sum(r["train_loss"] for r in rows) / 5)
        assert record["lr"] == rows[-1]["lr"] and record["step"] == rows[-1]["step"]
        assert math.isfinite(record["val_loss"])  # the evaluation that follows the epoch end


@needs_trainer
def test_lrpilot_trainer_builds_a_config_schedule_and_works_with_model_init(tmp_path):
    rec = RecordLR()
    trainer = LRPilotTrainer(
        model_init=lambda: model(),
        args=args(
            tmp_path,
            num_train_epochs=2,
            gradient_accumulation_steps=2,
            learning_rate=2e-3,
            weight_decay=0.01,
        ),
        train_dataset=Tokens(36),  # 9 batches = 5 optimizer steps per epoch
        # no lr: TrainingArguments.learning_rate; one epoch of warmup = 5 optimizer steps;
        # the stable and decay phases span the rest of the 10 steps
        schedule={"name": "wsd", "unit": "epochs", "warmup": 1, "decay_fraction": 0.3},
        callbacks=[rec],
    )
    expected = schedules.wsd(2e-3, steps=10, warmup=5, decay_fraction=0.3)
    trainer.train()
    first = list(rec.lrs)
    assert first == pytest.approx([expected(s) for s in range(10)], rel=1e-12, abs=0)
    assert type(trainer.optimizer.optimizer).__name__ == "AdamW"  # from TrainingArguments
    rec.lrs.clear()
    trainer.train()  # model_init: a new model, optimizer and lrpilot scheduler
    assert rec.lrs == first


@needs_trainer
def test_lrpilot_trainer_refuses_the_trainers_own_schedule_settings(tmp_path):
    trainer = LRPilotTrainer(
        model=model(),
        args=args(tmp_path, max_steps=2, warmup_steps=5),
        train_dataset=Tokens(8),
        schedule=schedules.constant(1e-3),
    )
    with pytest.raises(ValueError, match=r"warmup_steps=5 would be ignored; put the warmup"):
        trainer.train()


@needs_trainer
def test_resume_from_checkpoint_continues_the_lr_sequence(tmp_path, capsys):
    sched = schedules.warmup(schedules.cosine(1e-3, steps=6), steps=3)

    def run(resume=None):
        rec = RecordLR()
        trainer = LRPilotTrainer(
            model=model(),
            args=args(
                tmp_path,
                max_steps=9,
                save_strategy="steps",
                save_steps=4,
                restore_callback_states_from_checkpoint=True,
            ),
            train_dataset=Tokens(24),  # 6 batches per epoch: the checkpoint is mid-epoch
            schedule=sched,
            callbacks=[rec, LRPilotCallback()],
        )
        trainer.train(resume_from_checkpoint=resume)
        [pilot] = [c for c in trainer.callback_handler.callbacks if isinstance(c, LRPilotCallback)]
        return rec.lrs, pilot

    full, _ = run()
    assert full == pytest.approx([sched(s) for s in range(9)], rel=1e-12, abs=0)
    rest, pilot = run(resume=str(tmp_path / "checkpoint-4"))
    assert rest == pytest.approx(full[4:], rel=1e-12, abs=0)
    # the guard went on from the checkpoint's window (4 losses) instead of starting empty
    assert len(pilot.guard.window) == 9
    steps = History.read_jsonl(tmp_path).steps
    assert [r["step"] for r in steps] == list(range(1, 10))  # nothing repeated
    assert [r["lr"] for r in steps] == pytest.approx(full, rel=1e-12)
    assert "lrpilot diagnosis of" in capsys.readouterr().out


@needs_trainer
@pytest.mark.parametrize(
    ("factor", "steps", "stop_step", "reason"),
    [
        (float("nan"), 1, 5, "non-finite gradient norm"),
        (1e4, 3, 7, "loss far above its recent level"),
    ],
)
def test_guard_stops_before_a_damaged_checkpoint_and_says_what_to_do(
    tmp_path, capsys, factor, steps, stop_step, reason
):
    torch.manual_seed(0)
    net = Planted(CONFIG, at=stop_step - steps + 1, factor=factor, steps=steps)
    callback = LRPilotCallback()
    trainer = Trainer(
        model=net,
        args=args(tmp_path, max_steps=12, save_strategy="steps", save_steps=2, max_grad_norm=0.0),
        train_dataset=Tokens(48),
        callbacks=[callback],
    )
    trainer.train()
    assert trainer.state.global_step == stop_step
    saved = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert saved == [f"checkpoint-{s}" for s in range(2, stop_step, 2)]
    out = capsys.readouterr().out
    assert f"training stopped at step {stop_step}: {reason}" in out
    # the last checkpoint before the trouble began (step 5 in both cases)
    assert f"resume from {tmp_path / 'checkpoint-4'} with" in out
    assert "learning rate halved" in out and "lrpilot diagnosis of" in out
    [event] = History.read_jsonl(tmp_path).events
    assert event["action"] == "guard_stop" and event["step"] == stop_step
    assert callback.findings


def test_find_lr_for_a_hf_model_restores_everything():
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        Tokens(64), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batch = next(iter(loader))
    net(**batch).loss.backward()
    opt.step()  # a non-empty optimizer state to restore
    net.eval()
    weights = copy.deepcopy(net.state_dict())
    state = copy.deepcopy(opt.state_dict())
    grads = [p.grad.clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    result = find_lr(net, opt, loader, start_lr=1e-5, end_lr=10.0, steps=20)
    assert len(result.lrs) >= 5 and all(math.isfinite(x) for x in result.losses[:3])
    for key, value in weights.items():
        assert torch.equal(net.state_dict()[key], value), key
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(after["state"][key][name], tensor)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads, strict=True))
    assert not net.training and torch.equal(torch.get_rng_state(), rng)


def test_choose_lr_is_the_range_test_at_the_training_batch():
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        Tokens(64), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    decision = choose_lr(net, opt, loader, schedule="one_cycle", steps=20, start_lr=1e-5)
    # everything is restored, so the same sweep again gives the same curve
    result = find_lr(
        net, opt, loader, steps=20, start_lr=1e-5, batch_ratio=1.0, schedule="one_cycle"
    )
    assert decision.source == "find_lr" and decision.verdict == result.verdict
    assert decision.lr == result.suggestion
    assert decision.evidence["lr_unstable"] == result.lr_unstable


def test_find_lr_without_labels_says_so():
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    batches = [{"input_ids": torch.randint(0, 64, (4, 8))}] * 3
    with pytest.raises(ValueError, match="the batches must hold the labels"):
        find_lr(net, opt, batches, steps=5)


def test_missing_extras_are_named_and_the_package_stays_lazy(monkeypatch):
    """With both libraries made unimportable, lrpilot.integrations still imports (so it
    loads neither), and each integration's error names its extra."""
    import lrpilot

    monkeypatch.setattr(lrpilot, "integrations", importlib.import_module("lrpilot.integrations"))
    for name in ("lightning", "lightning.pytorch", "transformers", "transformers.trainer_callback"):
        monkeypatch.setitem(sys.modules, name, None)  # "import name" now raises ImportError
    for name in ("", ".lightning", ".transformers"):
        monkeypatch.delitem(sys.modules, f"lrpilot.integrations{name}", raising=False)
    fresh = importlib.import_module("lrpilot.integrations")
    for sub, module, extra in (
        ("lightning", "lightning.pytorch", "lightning"),
        ("transformers", "transformers", "hf"),
    ):
        with pytest.raises(ImportError) as info:
            getattr(fresh, sub)
        assert str(info.value) == (
            f"lrpilot.integrations.{sub} needs the {module!r} package: pip install lrpilot[{extra}]"
        )
