"""Regularisation knobs of fit configs: loss.label_smoothing, optimizer.no_decay, model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.errors import ConfigError
from lrpilot.tasks import Task, get_task
from lrpilot.train import parse_config
from lrpilot.train._builders import build_model, build_param_groups, training_loss


def _settings_task(loss_fn=nn.functional.cross_entropy) -> Task:
    def build(width: int = 8, dropout: float = 0.0) -> nn.Module:
        return nn.Sequential(nn.Linear(4, width), nn.Dropout(dropout), nn.Linear(width, 3))

    x = torch.randn(64, 4)
    y = torch.randint(0, 3, (64,))
    data = TensorDataset(x, y)
    return Task("settings", build, data, data, loss_fn)


def test_label_smoothing_matches_pytorch_and_only_for_cross_entropy():
    task = get_task("digits-cnn")
    cfg = parse_config({"task": "digits-cnn", "loss": {"label_smoothing": 0.2}})
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    got = training_loss(task, cfg)(logits, y)
    assert torch.equal(got, nn.functional.cross_entropy(logits, y, label_smoothing=0.2))
    assert not torch.equal(got, task.loss_fn(logits, y))
    plain = parse_config({"task": "digits-cnn", "loss": {"label_smoothing": 0.0}})
    assert training_loss(task, plain) is task.loss_fn
    module_task = _settings_task(nn.CrossEntropyLoss(ignore_index=1))
    cfg = parse_config({"loss": {"label_smoothing": 0.1}}, task=module_task)
    fn = training_loss(module_task, cfg)
    assert fn.label_smoothing == 0.1 and fn.ignore_index == 1
    with pytest.raises(ConfigError, match="needs a task whose loss is cross-entropy"):
        parse_config(
            {"loss": {"label_smoothing": 0.1}}, task=_settings_task(nn.functional.mse_loss)
        )
    with pytest.raises(ConfigError, match=r"loss.label_smoothing.*\[0, 1\)"):
        parse_config({"task": "digits-cnn", "loss": {"label_smoothing": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown config key 'loss\.smoothing'"):
        parse_config({"task": "digits-cnn", "loss": {"smoothing": 0.1}})


def test_no_decay_auto_splits_groups_and_adamw_skips_them():
    model = get_task("digits-cnn").build_model()
    groups, mults, labels = build_param_groups(model, {"8": 10.0}, no_decay="auto")
    assert labels == ["default", "default/no_decay", "8", "8/no_decay"]
    assert mults == [1.0, 1.0, 10.0, 10.0]
    for group, label in zip(groups, labels, strict=True):
        ndims = {p.ndim for p in group["params"]}
        assert (max(ndims) <= 1) == label.endswith("/no_decay")
        assert ("weight_decay" in group) == label.endswith("/no_decay")
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # zero gradients: AdamW only decays, p <- p * (1 - lr * wd), and not the no_decay groups
    opt = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.5)
    before = [p.detach().clone() for g in groups for p in g["params"]]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = [p.detach() for g in groups for p in g["params"]]
    for b, a in zip(before, after, strict=True):
        expected = b if b.ndim <= 1 else b * (1 - 0.1 * 0.5)
        torch.testing.assert_close(a, expected)
    _, _, labels = build_param_groups(model, {}, no_decay="none")
    assert labels == ["default"]
    with pytest.raises(ConfigError, match=r"optimizer\.no_decay='all'"):
        parse_config({"task": "digits-cnn", "optimizer": {"no_decay": "all"}})


def test_model_settings_reach_build_model():
    task = _settings_task()
    cfg = parse_config({"model": {"dropout": 0.3, "width": 5}}, task=task)
    model = build_model(task, cfg)
    assert model[1].p == 0.3 and model[0].out_features == 5
    with pytest.raises(ConfigError, match=r"model.depth.*valid: width, dropout"):
        parse_config({"model": {"depth": 2}}, task=task)
    with pytest.raises(ConfigError, match="builds its model without settings"):
        parse_config({"task": "digits-cnn", "model": {"dropout": 0.1}})


def test_fit_with_the_knobs_and_check_is_clean(tmp_path):
    from lrpilot.recommend._check import check_config, no_decay_supported
    from lrpilot.train import fit

    assert no_decay_supported()
    raw = {
        "task": "digits-cnn",
        "epochs": 1,
        "loss": {"label_smoothing": 0.1},
        "optimizer": {"lr": 0.03, "no_decay": "auto"},
    }
    assert "weight_decay.no_decay" not in {f.rule for f in check_config(raw)}
    result = fit(raw, tmp_path / "run", progress="none")
    assert result.summary["status"] == "completed"
    assert result.summary["final"]["val_accuracy"] > 0.5


def test_knobs_round_trip_through_to_dict_and_bad_values_are_config_errors():
    task = _settings_task()
    raw = {
        "loss": {"label_smoothing": 0.05},
        "optimizer": {"name": "adamw", "no_decay": "auto"},
        "model": {"width": 6},
    }
    cfg = parse_config(raw, task=task)
    assert cfg.optimizer.no_decay == "auto" and cfg.loss == {"label_smoothing": 0.05}
    assert parse_config(cfg.to_dict(), task=task) == cfg  # config.yaml of a run re-parses
    plain = parse_config({}, task=task)
    assert (plain.optimizer.no_decay, plain.loss, plain.model) == ("none", {}, {})
    for bad, pattern in [
        ({"loss": {"label_smoothing": -0.1}}, r"loss\.label_smoothing"),
        ({"loss": {"label_smoothing": "x"}}, r"loss\.label_smoothing"),
        ({"loss": [0.1]}, "loss must be a mapping"),
        ({"model": [1]}, "model must map"),
        ({"optimizer": {"no_decay": True}}, r"optimizer\.no_decay=True.*valid: none, auto"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            parse_config(bad, task=task)
    # a value build_model itself rejects: one line naming the settings, not a traceback
    for width in (-3, "wide"):
        cfg = parse_config({"model": {"width": width}}, task=task)
        with pytest.raises(ConfigError, match=rf"model=\{{'width': {width!r}\}}.*rejected"):
            build_model(task, cfg)
    with pytest.raises(ConfigError, match=r"optimizer\.no_decay='all'"):
        build_param_groups(task.build_model(), {}, no_decay="all")


def test_cli_exit_2_on_a_bad_knob(tmp_path, capsys):
    from lrpilot.cli import main

    cfg = tmp_path / "fit.yaml"
    cfg.write_text("task: digits-cnn\nloss:\n  label_smoothing: 1.5\n")
    out = tmp_path / "run"
    assert main(["fit", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "loss.label_smoothing" in err and "Traceback" not in err
    assert not out.exists()
