"""``lrpilot fit``: config validation, the run directory, and what the loop does per step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lrpilot import RunResult, fit
from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.history import History
from lrpilot.train import parse_config
from lrpilot.train._checkpoint import load_checkpoint
from lrpilot.train._sources import apply_overrides

FAST = {"task": "mnist1d-mlp", "epochs": 2, "batch_size": 128, "log_every": 1, "device": "cpu"}


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"epochs": 1.5}, "epochs must be an integer"),
        ({"batch_size": -4}, "batch_size=-4"),
        ({"batch_size": 10**7}, "batch_size=10000000 is larger than the training set"),
        ({"accumulate": 0}, "accumulate=0"),
        ({"optimizer": {"name": "rmsprop"}}, "optimizer.name='rmsprop'"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr=-1"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr must be a number"),
        ({"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}}, "optimizer.betas applies to adam"),
        ({"optimizer": {"momentum": 0.9}}, "optimizer.momentum applies to sgd"),
        ({"optimizer": {"name": "sgd", "nesterov": True, "momentum": 0}}, "nesterov"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas must be a pair"),
        ({"optimizer": {"foo": 1}}, "'optimizer.foo'"),
        (
            {"optimizer": {"implementation": "fast"}},
            "optimizer.implementation='fast' is not allowed; valid: auto, fused, foreach, for-loop",
        ),
        ({"grad_clip": 0}, "grad_clip=0"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"guard": {"factor": 1.5}}, "guard.factor=1.5"),
        ({"guard": {"patience": 5, "horizon": 3}}, "guard.horizon=3"),
        ({"guard": {"wndow": 5}}, "'guard.wndow'"),
        ({"guard": {"rebound": 0}}, "guard.rebound=0"),
        ({"guard": {"rebound": 1.5}}, "guard.rebound=1.5"),
        ({"guard": {"rebound_progress": -1}}, "guard.rebound_progress=-1"),
        ({"early_stopping": {"monitor": "val_f1"}}, "early_stopping.monitor='val_f1'"),
        ({"early_stopping": {"patience": 0}}, "early_stopping.patience=0"),
        ({"plateau": {"monitor": "acc"}}, "plateau.monitor='acc'"),
        ({"layer_lr": {"0": -1}}, "layer_lr['0']=-1"),
        ({"log_every": 0}, "log_every=0"),
        ({"checkpoint_every": "often"}, "checkpoint_every='often'; allowed: auto, epoch"),
        ({"checkpoint_every": 0}, "checkpoint_every=0"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"seed": -1}, "seed=-1"),
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"task": "os:nothing_here"}, "has no attribute 'nothing_here'"),
        ({"lr": 0.1}, "unknown config key 'lr'"),
        ({"schedule": "cosine"}, "schedule must be a mapping"),
    ],
)
def test_bad_config_names_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**FAST, **patch})
    assert field in str(info.value)


def test_task_defaults_fill_unspecified_keys() -> None:
    cfg = parse_config({"task": "mnist1d-cnn"})
    assert (cfg.epochs, cfg.batch_size) == (15, 64)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.1, 0.9)
    assert cfg.optimizer.weight_decay == 5e-4
    # another optimizer family starts from its own defaults, not the task's SGD settings
    adam = parse_config({"task": "mnist1d-cnn", "optimizer": {"name": "adamw", "lr": 0.003}})
    assert (adam.optimizer.name, adam.optimizer.lr, adam.optimizer.betas) == (
        "adamw",
        0.003,
        (0.9, 0.999),
    )
    assert cfg.guard.enabled and cfg.guard.factor == 0.5 and cfg.guard.rebound == 0.8
    off = parse_config({"task": "mnist1d-cnn", "guard": {"rebound": None}})
    assert off.guard.rebound is None  # the rebound rule switched off
    assert cfg.device == "auto" and cfg.checkpoint_every == "auto"


def test_overrides_are_dotted_and_yaml_typed() -> None:
    raw = apply_overrides(FAST, ["optimizer.lr=3e-3", "guard.enabled=false", "epochs=4"])
    cfg = parse_config(raw)
    assert cfg.optimizer.lr == 0.003 and cfg.guard.enabled is False and cfg.epochs == 4
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(FAST, ["epochs"])
    with pytest.raises(ConfigError, match="'epochs' is 2, not a mapping"):
        apply_overrides(FAST, ["epochs.x=1"])


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"schedule": {"name": "cosine", "lr": 0.1, "warmup": {"epochs": 5}}}, "schedule:"),
        ({"schedule": {"name": "coss"}}, "schedule:"),
        ({"layer_lr": {"nothing.*": 0.1}}, "layer_lr pattern 'nothing.*' matches no parameter"),
        ({"plateau": {"factor": 2.0}}, "plateau:"),
    ],
)
def test_errors_found_while_building_write_nothing(
    tmp_path: Path, patch: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        fit({**FAST, **patch}, tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


def test_cli_bad_value_exits_2_with_one_line_and_no_run_dir(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**FAST, "optimizer": {"lr": 0}}))
    rc = main(["fit", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("lrpilot fit: error: optimizer.lr=0 is out of range")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main(["fit", str(tmp_path / "missing.yaml")]) == 2
    assert main(["fit", str(config), "--set", "optimizer.lr=0.01", "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(tmp_path: Path) -> None:
    fit({**FAST, "epochs": 1}, tmp_path / "run", progress="none")
    with pytest.raises(ConfigError, match="already holds a run"):
        fit({**FAST, "epochs": 1}, tmp_path / "run", progress="none")


# ----------------------------------------------------------------------- run output
def test_run_directory_contents(tmp_path: Path) -> None:
    config = {
        **FAST,
        "log_every": 4,
        "schedule": {"name": "cosine", "lr": 0.01, "warmup": {"epochs": 1}},
        "checkpoint_every": "epoch",
    }
    result = fit(config, tmp_path / "run", progress="none")
    assert isinstance(result, RunResult) and result.run_dir == tmp_path / "run"
    run = result.run_dir
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == parse_config(config).to_dict()
    assert parse_config(saved) == parse_config(config)  # the resolved config re-loads
    spe = math.ceil(4000 / 128)
    history = History.read_jsonl(run)
    assert history.steps == result.history.steps
    assert [r["step"] for r in history.steps] == [1, *range(4, 2 * spe + 1, 4)]
    for record in history.steps:
        assert set(record) == {"type", "step", "epoch", "lr", "train_loss", "grad_norm"}
        assert record["epoch"] == (record["step"] - 1) // spe
    assert [e["epoch"] for e in history.epochs] == [0, 1]
    for record in history.epochs:
        assert {"step", "lr", "train_loss", "val_loss", "val_accuracy", "time"} <= set(record)
    assert history.epochs[-1]["step"] == 2 * spe
    summary = json.loads((run / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["status"] == "completed"
    assert (summary["epochs_run"], summary["steps_run"]) == (2, 2 * spe)
    assert summary["samples_seen"] == 2 * 4000 and summary["samples_per_s"] > 0
    # the phases: steps and validation, both inside the wall time
    assert summary["train_time_s"] > 0 and summary["eval_time_s"] > 0
    assert summary["train_time_s"] + summary["eval_time_s"] < summary["wall_time_s"]
    assert summary["final"]["val_accuracy"] == history.epochs[-1]["val_accuracy"]
    best = min(history.epochs, key=lambda e: e["val_loss"])
    assert summary["best"]["epoch"] == best["epoch"] and summary["best"]["monitor"] == "val_loss"
    assert summary["guard"] == {"enabled": True, "rescues": 0, "lr_scale": 1.0, "actions": []}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pt",
        "latest.pt",
        "previous.pt",
    ]
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2 * spe
    # TensorBoard has the same scalars, the LR at every logged step included
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "epoch/val_loss"} <= tags
    assert {"epoch/val_accuracy"} <= tags
    tb_lr = [(e.step, e.value) for e in events.Scalars("train/lr")]
    assert [s for s, _ in tb_lr] == [r["step"] for r in history.steps]
    assert [v for _, v in tb_lr] == pytest.approx([r["lr"] for r in history.steps], rel=1e-6)


def test_default_run_dir_and_auto_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fit({**FAST, "epochs": 2}, progress="none")
    assert result.run_dir.parent == Path("runs")
    assert result.run_dir.name.startswith("mnist1d-mlp-")
    assert (tmp_path / result.run_dir / "summary.json").exists()
    # checkpoint_every: auto (a short run): one checkpoint, at the end
    checkpoints = tmp_path / result.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "latest.pt"]
    assert load_checkpoint(checkpoints / "latest.pt")["step"] == result.summary["steps_run"]


# ------------------------------------------------------------------------ the loop
def _warmup_cosine(step: int, peak: float, warm: int, total: int) -> float:
    """Closed form of the prefix linear warmup from 0 followed by cosine to 0."""
    if step < warm:
        return peak * step / warm
    t = step - warm
    return 0.5 * peak * (1 + math.cos(math.pi * t / (total - warm)))


def test_lr_per_step_matches_closed_form(tmp_path: Path) -> None:
    config = {**FAST, "schedule": {"name": "cosine", "warmup": {"epochs": 1}}}
    result = fit(config, tmp_path / "run", progress="none")
    spe = math.ceil(4000 / 128)
    peak = parse_config(config).optimizer.lr  # the schedule took the optimizer's lr
    assert peak == 0.01
    lrs = [r["lr"] for r in result.history.steps]
    expected = [_warmup_cosine(k, peak, spe, 2 * spe) for k in range(2 * spe)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[0] == 0.0 and lrs[spe] == pytest.approx(peak)


def _weights(engine) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in engine.model.parameters()])


def test_accumulation_follows_the_big_batch() -> None:
    """Batch 64 and 16 x 4 accumulation run the same samples per step with each
    micro-batch loss weighted by its share, so they follow the same trajectory up to
    floating-point summation order. Measured on this CPU (weights, max abs difference):
    at most 6e-8 through the whole first epoch (63 steps, the last one 32 samples in 2
    micro-batches), then a jump to ~1e-5 at step 74 and 4.6e-4 at step 126: a ReLU kink
    crossed after a rounding difference, not a bug. A run of the *same* config whose only
    change is a loss computed in float64 (a rounding perturbation, no change in the math)
    jumps at the same step to the same 4.6e-4. So: the first epoch is compared tightly
    (1e-6, where a wrongly weighted short step differs by ~1e-3) and the final weights
    within 10 times the drift of that perturbed control run."""
    import dataclasses

    import torch.nn.functional as F

    from lrpilot.tasks import get_task
    from lrpilot.train import Engine

    schedule = {"name": "cosine", "lr": 0.05, "warmup": {"epochs": 1}}
    base = {"task": "mnist1d-cnn", "epochs": 2, "schedule": schedule, "device": "cpu"}
    task = get_task("mnist1d-cnn")
    f64 = dataclasses.replace(task, loss_fn=lambda o, y: F.cross_entropy(o.double(), y).float())
    big = Engine(parse_config({**base, "batch_size": 64}), task)
    small = Engine(parse_config({**base, "batch_size": 16, "accumulate": 4}), task)
    control = Engine(parse_config({**base, "batch_size": 64}, task=f64), f64)
    assert big.total_steps == small.total_steps == 2 * 63
    assert small.plan.effective_batch == 64
    for step in range(1, 127):
        b, s, _ = big.train_step(), small.train_step(), control.train_step()
        assert (s.lr, s.samples) == (b.lr, b.samples)  # exactly the same LRs and samples
        if step <= 63:
            assert s.loss == pytest.approx(b.loss, rel=1e-5), step
            diff = (_weights(small) - _weights(big)).abs().max().item()
            assert diff <= 1e-6, (step, diff)
    assert b.samples == 32 and big.state.epoch == 1  # the short last step of epoch 1
    drift = (_weights(control) - _weights(big)).abs().max().item()
    diff = (_weights(small) - _weights(big)).abs().max().item()
    assert diff <= 10 * max(drift, 1e-6), (diff, drift)


def test_plateau_matches_pytorch_reduce_lr_on_plateau(tmp_path: Path) -> None:
    plateau = {"factor": 0.5, "patience": 1, "threshold": 0.5}
    config = {**FAST, "epochs": 5, "optimizer": {"lr": 0.01}, "plateau": plateau}
    result = fit(config, tmp_path / "run", progress="none")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **plateau)
    by_epoch = {}
    for record in result.history.steps:
        by_epoch.setdefault(record["epoch"], set()).add(record["lr"])
    expected = []
    for epoch_record in result.history.epochs:
        expected.append(optimizer.param_groups[0]["lr"])
        reference.step(epoch_record["val_loss"])
    got = [by_epoch[e].pop() if len(by_epoch[e]) == 1 else by_epoch[e] for e in range(5)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert min(expected) < 0.01  # the rule really fired


def test_early_stopping_restores_best_weights(tmp_path: Path) -> None:
    config = {**FAST, "epochs": 6, "early_stopping": {"patience": 2, "min_delta": 100.0}}
    result = fit(config, tmp_path / "run", progress="none")
    assert result.summary["status"] == "early_stopped"
    assert result.summary["epochs_run"] == 3  # epoch 0 is best, 2 epochs without progress
    assert result.summary["best"]["epoch"] == 0 and result.summary["restored_best_weights"]
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 0
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best["model"][key])
    latest = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert not torch.equal(latest["model"]["0.weight"], best["model"]["0.weight"])


def test_layer_lr_multiplies_param_groups(tmp_path: Path) -> None:
    config = {**FAST, "epochs": 1, "layer_lr": {"4": 0.1, "0.bias": 0.0}}
    result = fit(config, tmp_path / "run", progress="none")
    latest = load_checkpoint(result.run_dir / "checkpoints" / "latest.pt")
    groups = latest["optimizer"]["param_groups"]
    assert len(groups) == 3
    base = groups[0]["lr"]
    assert groups[1]["lr"] == pytest.approx(0.1 * base, rel=1e-12) and groups[2]["lr"] == 0.0
    first = torch.load(result.run_dir / "checkpoints" / "latest.pt", weights_only=True)
    # the bias with multiplier 0 never moved from its initialisation
    torch.manual_seed(parse_config(config).seed)
    from lrpilot.tasks import get_task

    init = get_task("mnist1d-mlp").build_model().state_dict()
    assert torch.equal(first["model"]["0.bias"], init["0.bias"])
    assert not torch.equal(first["model"]["0.weight"], init["0.weight"])


def test_amp_bf16_on_cpu_trains(tmp_path: Path) -> None:
    plain = fit({**FAST, "epochs": 1}, tmp_path / "fp32", progress="none")
    amp = fit({**FAST, "epochs": 1, "amp": True}, tmp_path / "bf16", progress="none")
    losses = [r["train_loss"] for r in amp.history.steps]
    assert all(math.isfinite(v) for v in losses)
    assert losses != [r["train_loss"] for r in plain.history.steps]  # autocast was active
    assert amp.summary["final"]["val_accuracy"] > 0.2


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (fp16 + GradScaler path)"
)
def test_amp_fp16_grad_scaler_on_cuda(tmp_path: Path) -> None:  # pragma: no cover - CPU CI
    result = fit(
        {**FAST, "epochs": 1, "amp": True, "device": "cuda"}, tmp_path / "r", progress="none"
    )
    latest = load_checkpoint(result.run_dir / "checkpoints" / "latest.pt")
    assert latest["scaler"] is not None
    skipped = result.summary["optimizer_steps_skipped"]
    assert latest["schedule"]["step"] == result.summary["steps_run"] - skipped


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("examples/*.yaml")))
def test_example_configs_validate(path: Path) -> None:
    from lrpilot.tasks import get_task
    from lrpilot.train._builders import build_schedule
    from lrpilot.train._config import steps_per_epoch
    from lrpilot.train._sources import load_yaml

    cfg = parse_config(load_yaml(path))
    task = get_task(cfg.task)
    spe = steps_per_epoch(len(task.train_set), cfg.batch_size, cfg.accumulate)
    schedule, _, _ = build_schedule(cfg, spe, spe * cfg.epochs)
    assert schedule(0) >= 0


def test_cli_task_flag_and_json(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "fit",
            "--task",
            "mnist1d-mlp",
            "--set",
            "epochs=1",
            "--set",
            "optimizer.lr=3e-3",
            "--out",
            str(tmp_path / "run"),
            "--progress",
            "plain",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "epoch 1/1" in out
    summary = json.loads(out[out.index("{") :])
    assert summary["steps_run"] == 63
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.003 and saved["task"] == "mnist1d-mlp"


class _ListDataset(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset (goes through the DataLoader path)."""

    def __init__(self, base: torch.utils.data.TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        x, y = self.base[i]
        return x.clone(), y.clone()


def test_generic_dataset_path_matches_tensor_fast_path(tmp_path: Path) -> None:
    import dataclasses

    from lrpilot.tasks import get_task

    base = get_task("mnist1d-mlp")
    generic = dataclasses.replace(
        base,
        name="mnist1d-mlp-generic",
        train_set=_ListDataset(base.train_set),
        val_set=_ListDataset(base.val_set),
    )
    config = {"epochs": 1, "batch_size": 100, "accumulate": 2, "log_every": 5, "device": "cpu"}
    fast = fit({**config, "task": "mnist1d-mlp"}, tmp_path / "fast", progress="none")
    slow = fit(config, tmp_path / "slow", progress="none", task=generic)
    assert slow.summary["task"] == "mnist1d-mlp-generic"
    assert [r["train_loss"] for r in slow.history.steps] == [
        r["train_loss"] for r in fast.history.steps
    ]
    for key, value in fast.model.state_dict().items():
        assert torch.equal(value, slow.model.state_dict()[key]), key


def test_resume_refuses_a_changed_config_but_accepts_settings_added_since(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit({**FAST, "epochs": 1}, run, progress="none")
    with pytest.raises(ConfigError, match="seed: 0 -> 1"):
        fit({**FAST, "epochs": 1, "seed": 1}, run, resume=True, progress="none")
    # a run directory written before guard.rebound existed: the setting takes its value now
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["guard"]["rebound"], saved["guard"]["rebound_progress"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    result = fit({**FAST, "epochs": 1}, run, resume=True, progress="none")
    assert result.summary["status"] == "completed"


def test_resuming_a_complete_run_says_so_and_trains_nothing(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    config = {**FAST, "early_stopping": {"patience": 1, "restore_best": True}}
    first = fit(config, run, progress="none")
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", str(path), "--out", str(run), "--resume", "--progress", "plain"]) == 0
    out = capsys.readouterr().out
    assert f"the run in {run} is already complete (completed, 2 of 2 epochs" in out
    assert "resuming from" not in out and out.count("\n") == 1
    again = fit(config, run, resume=True, progress="none")
    assert again.summary == json.loads((run / "summary.json").read_text())
    assert again.summary["steps_run"] == first.summary["steps_run"]
    for key, value in first.model.state_dict().items():  # the best weights, as returned
        assert torch.equal(value, again.model.state_dict()[key]), key
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == files  # nothing written


def test_optimizer_implementation_is_the_one_run_and_reported(tmp_path: Path) -> None:
    base = {**FAST, "epochs": 1, "log_every": 10}
    runs = {
        impl: fit({**base, "optimizer": {"implementation": impl}}, tmp_path / impl, progress="none")
        for impl in ("auto", "fused", "for-loop")
    }
    weights = {k: r.model.state_dict() for k, r in runs.items()}
    for impl, run in runs.items():
        expected = "fused" if impl == "auto" else impl  # auto: fused on CPU
        assert run.summary["optimizer_implementation"] == expected
        groups = load_checkpoint(run.run_dir / "checkpoints" / "latest.pt")["optimizer"]
        assert bool(groups["param_groups"][0]["fused"]) is (expected == "fused")
    assert (
        yaml.safe_load((runs["auto"].run_dir / "config.yaml").read_text())["optimizer"][
            "implementation"
        ]
        == "auto"
    )
    # auto is the fused kernel bit for bit; the for-loop the same rule to the last bits
    assert all(torch.equal(weights["auto"][k], v) for k, v in weights["fused"].items())
    assert any(not torch.equal(weights["for-loop"][k], v) for k, v in weights["fused"].items())
    for k, v in weights["fused"].items():
        torch.testing.assert_close(weights["for-loop"][k], v, rtol=1e-3, atol=1e-4)
