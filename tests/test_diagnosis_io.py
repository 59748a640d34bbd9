"""Readers (run dir, TensorBoard, CSV), the PNG plot and ``lrpilot diagnose``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrpilot.cli import main
from lrpilot.diagnosis import diagnose
from lrpilot.diagnosis.readers import read_csv, read_history, read_tensorboard
from lrpilot.errors import ConfigError
from lrpilot.history import History


def _records(epochs=12, per_epoch=20, nan_from=None):
    """A plateau-shaped run: fast drop, then flat at a constant LR 0.1."""
    rng = np.random.default_rng(0)
    out = []
    step = 0
    for e in range(epochs):
        losses = []
        for _ in range(per_epoch):
            step += 1
            t = step / (epochs * per_epoch)
            loss = 0.4 + 1.9 * math.exp(-25 * t) + 0.01 * rng.standard_normal()
            if nan_from is not None and step >= nan_from:
                loss = float("nan")
            losses.append(loss)
            out.append({"type": "step", "step": step, "epoch": e, "lr": 0.1, "train_loss": loss})
        out.append(
            {
                "type": "epoch",
                "epoch": e,
                "step": step,
                "lr": 0.1,
                "train_loss": float(np.mean(losses)),
                "val_loss": float(np.mean(losses)) + 0.1,
                "val_accuracy": 0.5,
            }
        )
    return out


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _kinds(history):
    return [f.kind for f in diagnose(history)]


def test_run_dir_and_jsonl(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _records())
    h = read_history(tmp_path)
    assert len(h.steps) == 240 and len(h.epochs) == 12
    assert _kinds(read_history(tmp_path / "metrics.jsonl")) == _kinds(h) == ["plateau"]


def test_tensorboard_round_trip_matches_jsonl(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    records = _records()
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for r in records:
        if r["type"] == "step":
            writer.add_scalar("train/loss", r["train_loss"], r["step"])
            writer.add_scalar("train/lr", r["lr"], r["step"])
        else:
            for key in ("train_loss", "val_loss", "lr", "val_accuracy"):
                writer.add_scalar(f"epoch/{key}", r[key], r["step"])
    writer.add_scalar("guard/lr_scale", 0.5, 17)
    writer.add_scalar("guard/lr_scale", 0.25, 30)
    writer.close()
    h = read_tensorboard(tmp_path / "tb")
    reference = History.from_records(records)
    assert [r["step"] for r in h.steps] == [r["step"] for r in reference.steps]
    assert np.allclose(
        [r["train_loss"] for r in h.steps], [r["train_loss"] for r in reference.steps]
    )
    assert [r["epoch"] for r in h.epochs] == list(range(12))
    assert [r["epoch"] for r in h.steps] == [r["epoch"] for r in reference.steps]
    assert np.allclose([r["val_loss"] for r in h.epochs], [r["val_loss"] for r in reference.epochs])
    assert h.epochs[0]["val_accuracy"] == pytest.approx(0.5)
    assert h.events == [
        {"type": "event", "step": 17, "action": "guard_rescue", "lr_scale": 0.5},
        {"type": "event", "step": 30, "action": "guard_rescue", "lr_scale": 0.25},
    ]
    # two rescues make it a divergence; without them the verdict equals the jsonl's
    assert _kinds(h) == ["diverged"]
    h.events.clear()
    assert _kinds(h) == _kinds(reference) == ["plateau"]


def test_tensorboard_tag_override_and_missing_tags(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for r in _records():
        if r["type"] == "step":
            writer.add_scalar("my/objective", r["train_loss"], r["step"])
    writer.close()
    with pytest.raises(ConfigError, match="no training or validation loss"):
        read_history(tmp_path / "tb")
    h = read_history(tmp_path / "tb", tags={"train_loss": "my/objective"})
    assert len(h.steps) == 240
    with pytest.raises(ConfigError, match="unknown TensorBoard field 'loss'"):
        read_tensorboard(tmp_path / "tb", tags={"loss": "x"})


def test_csv_step_and_epoch_rows(tmp_path):
    rows = ["step,epoch,lr,train_loss,val_loss,val_accuracy"]
    for r in _records():
        if r["type"] == "step":
            rows.append(f"{r['step']},{r['epoch']},{r['lr']},{r['train_loss']},,")
        else:
            rows.append(f"{r['step']},{r['epoch']},{r['lr']},{r['train_loss']},{r['val_loss']},0.5")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    h = read_history(tmp_path / "log.csv")
    assert len(h.steps) == 240 and len(h.epochs) == 12
    assert h.epochs[3]["val_accuracy"] == 0.5
    assert _kinds(h) == ["plateau"]


def test_csv_keras_style_and_column_override(tmp_path):
    (tmp_path / "k.csv").write_text("epoch,loss,val_loss,lr\n0,2.0,2.1,0.1\n1,nan,1.5,0.1\n")
    h = read_csv(tmp_path / "k.csv")
    assert [r["epoch"] for r in h.epochs] == [0, 1]
    assert math.isnan(h.epochs[1]["train_loss"])
    assert _kinds(h) == ["nan"]
    (tmp_path / "o.csv").write_text("it,objective\n1,2.0\n2,1.9\n")
    h = read_csv(tmp_path / "o.csv", columns={"step": "it", "train_loss": "objective"})
    assert [r["train_loss"] for r in h.steps] == [2.0, 1.9]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.csv", "", "empty CSV"),
        ("nocol.csv", "a,b\n1,2\n", "no loss column"),
        ("bad.csv", "step,train_loss\n1,abc\n", "'abc' is not a number"),
        ("norows.csv", "step,train_loss\n", "no rows"),
        ("x.txt", "hello", "unknown format"),
    ],
)
def test_bad_files_raise_config_error(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_history(tmp_path / name)


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_history(tmp_path / "nope")
    with pytest.raises(ConfigError, match="neither a run directory"):
        read_history(tmp_path)


def test_cli_words_json_and_png(tmp_path, capsys):
    _write_jsonl(tmp_path / "metrics.jsonl", _records(nan_from=150))
    missing = tmp_path / "out" / "diag.png"  # a directory that does not exist is refused
    assert main(["diagnose", str(tmp_path), "--png", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.parent.exists()
    png = tmp_path / "diag.png"
    assert main(["diagnose", str(tmp_path), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "nan at epoch 8, step 150" in out  # step 150 is in the 8th epoch (index 7)
    assert "lower the peak learning rate from 0.1 to about 0.01" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["diagnose", str(tmp_path / "metrics.jsonl"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["kind"] == "nan" and data[0]["step"] == 150


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}"], "no such file"),
        (["{dir}", "--png", "{dir}/x.jpg"], "must end in .png"),
        (["{dir}", "--tag", "nonsense"], "expected FIELD=NAME"),
        (["{bad}"], "not valid JSON"),
        (["{dir}", "--tag", "train_loss=x"], "tags apply only to TensorBoard"),
        (["{dir}", "--column", "train_loss=x"], "columns apply only to CSV"),
        (["{csv}", "--tag", "train_loss=x"], "tags apply only to TensorBoard"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    _write_jsonl(tmp_path / "metrics.jsonl", _records())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"type": "step"}\n{oops\n{"type": "step"}\n')
    (tmp_path / "log.csv").write_text("epoch,loss\n0,2.0\n")
    fill = {
        "missing": tmp_path / "missing",
        "dir": tmp_path,
        "bad": bad,
        "csv": tmp_path / "log.csv",
    }
    argv = ["diagnose", *(a.format(**fill) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.jpg").exists()


def test_cli_help_names_the_readers_fields():
    from lrpilot.cli import _diagnose_cmd as diagnose_cmd
    from lrpilot.diagnosis.readers import DEFAULT_CSV_COLUMNS, DEFAULT_TB_TAGS

    assert tuple(DEFAULT_TB_TAGS) == diagnose_cmd.TB_FIELDS
    assert tuple(DEFAULT_CSV_COLUMNS) == diagnose_cmd.CSV_FIELDS
