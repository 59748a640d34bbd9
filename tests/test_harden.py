"""Silent wrong results refused (issue 21): a bit flipped in a checkpoint's weight, a
checkpoint from another run, a torn or missing ``metrics.jsonl``, a resume under another
thread count, and the count of steps a guard rescue ran again. Real files, real ``fit``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.errors import ConfigError
from lrpilot.history import History
from lrpilot.tasks import Task, accuracy
from lrpilot.train import Callback, fit
from lrpilot.train._checkpoint import content_checksum, load_checkpoint


def _task(name: str, n: int, width: int, features: int, batch: int, lr: float) -> Task:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n + n // 4, features, generator=gen)
    y = (x @ torch.randn(features, 10, generator=gen)).argmax(dim=1)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, 10))

    return Task(
        name=name,
        build_model=build,
        train_set=TensorDataset(x[:n], y[:n]),
        val_set=TensorDataset(x[n:], y[n:]),
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults={"epochs": 3, "batch_size": batch, "optimizer": {"name": "sgd", "lr": lr}},
    )


TINY = _task("harden-tiny", 512, 32, 16, 32, 0.05)
# big enough batches that a weight gradient's sum is split across threads differently
WIDE = _task("harden-wide", 4096, 256, 256, 1024, 0.05)

CONFIG = {
    "epochs": 3,
    "batch_size": 32,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "checkpoint_every": 4,
    "log_every": 1,
    "device": "cpu",
}


class CrashAt(Callback):
    """Raises at optimizer step ``at`` (``None``: never), like a crash mid-run."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, engine, outcome):  # type: ignore[no-untyped-def]
        if outcome.step == self.at:
            raise RuntimeError(f"crash at step {self.at}")
        return None


def _run(out: Path, crash: int | None = None, task: Task = TINY, **extra) -> object:
    config = {**CONFIG, **extra}
    if crash is None:
        return fit(config, out, task=task, progress="none", callbacks=[CrashAt(None)])
    with pytest.raises(RuntimeError, match="crash at step"):
        fit(config, out, task=task, progress="none", callbacks=[CrashAt(crash)])
    return None


def _resume(out: Path, task: Task = TINY, **extra) -> object:
    config = {**CONFIG, **extra}
    return fit(config, out, task=task, resume=True, progress="plain", callbacks=[CrashAt(None)])


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flip_bit_in_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit of ``tensor``'s stored bytes inside the checkpoint file ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are not unique"
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------- checksum
def test_checksum_survives_a_round_trip_and_sees_one_bit() -> None:
    state = {"w": torch.randn(5, 3), "n": 3, "x": [1.5, (2, "a")], "h": torch.ones(2).half()}
    path_bytes = __import__("io").BytesIO()
    torch.save(state, path_bytes)
    path_bytes.seek(0)
    loaded = torch.load(path_bytes, weights_only=True)
    assert content_checksum(loaded) == content_checksum(state)
    flipped = state["w"].clone()
    flipped.view(torch.int32)[2, 1] ^= 1  # the lowest mantissa bit
    assert content_checksum({**state, "w": flipped}) != content_checksum(state)
    assert content_checksum({**state, "n": 3.0}) != content_checksum(state)  # type counts


def test_bit_flip_in_a_weight_of_latest_falls_back_to_previous(tmp_path: Path, capsys) -> None:
    reference = _run(tmp_path / "ref")
    _run(tmp_path / "run", crash=30)  # latest: step 28, previous: step 24
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    previous_step = load_checkpoint(latest.with_name("previous.pt"))["step"]
    weight = load_checkpoint(latest)["model"]["0.weight"]
    _flip_bit_in_tensor(latest, weight)
    # torch.load itself does not notice: only the checksum does
    raw = torch.load(latest, weights_only=True)
    assert not torch.equal(raw["model"]["0.weight"], weight)
    resumed = _resume(tmp_path / "run")
    out = capsys.readouterr().out
    assert "content checksum" in out and "falling back" in out, out
    assert f"resuming from step {previous_step} " in out, out
    assert "weights_only" not in out
    assert _same_weights(reference.model.state_dict(), resumed.model.state_dict())
    history = History.read_jsonl(tmp_path / "run")
    assert [r["step"] for r in history.steps] == list(range(1, 49))


# ------------------------------------------------------------------- identity
def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    _run(tmp_path / "a", seed=1)
    _run(tmp_path / "b", crash=30, seed=1)  # the very same config: only the run id differs
    latest_b = tmp_path / "b" / "checkpoints" / "latest.pt"
    shutil.copyfile(tmp_path / "a" / "checkpoints" / "latest.pt", latest_b)
    # (the lock file holds the PID of whoever holds the lock: not part of the run)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("[!.]*")}
    with pytest.raises(ConfigError, match=r"latest.pt is not from this run \(it belongs to run "):
        _resume(tmp_path / "b", seed=1)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("[!.]*")}
    assert after == before  # nothing written
    run_a = json.loads((tmp_path / "a" / "run.json").read_text())
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")
    assert ckpt["identity"]["run_id"] == run_a["run_id"]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["run_id"] == run_a["run_id"]


def test_resume_without_run_json_is_refused(tmp_path: Path) -> None:
    _run(tmp_path / "run", crash=10)
    (tmp_path / "run" / "run.json").unlink()
    with pytest.raises(ConfigError, match=r"run\.json is missing"):
        _resume(tmp_path / "run")


def test_failed_start_leaves_no_directory(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        fit(CONFIG, tmp_path / "new", task=TINY, progress="none", callbacks=[object()])
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------- the metrics log
def test_torn_metrics_log_is_cut_back_and_said(tmp_path: Path, capsys) -> None:
    reference = _run(tmp_path / "ref")
    _run(tmp_path / "run", crash=30)
    metrics = tmp_path / "run" / "metrics.jsonl"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 28
    lines = metrics.read_bytes()[: ckpt["metrics_bytes"]].splitlines(keepends=True)
    # lost at a crash: the log ends in the middle of a record before the checkpoint's end
    kept = b"".join(lines[:20])
    cut_step = json.loads(lines[19])["step"]
    metrics.write_bytes(kept + lines[20][:17])
    resumed = _resume(tmp_path / "run")
    out = capsys.readouterr().out
    assert "torn last line removed" in out, out
    assert f"it ends at step {cut_step}; steps {cut_step + 1}..28 have no records" in out, out
    history = History.read_jsonl(metrics)  # every line parses
    steps = [r["step"] for r in history.steps]
    assert steps == [s for s in range(1, 49) if s <= cut_step or s > 28]
    assert resumed.summary["status"] == "completed"
    assert any("torn last line" in note for note in resumed.summary["notes"])
    assert _same_weights(reference.model.state_dict(), resumed.model.state_dict())


def test_missing_metrics_log_is_said_and_restarted(tmp_path: Path, capsys) -> None:
    reference = _run(tmp_path / "ref")
    _run(tmp_path / "run", crash=30)
    (tmp_path / "run" / "metrics.jsonl").unlink()
    resumed = _resume(tmp_path / "run")
    out = capsys.readouterr().out
    assert "metrics.jsonl is missing: the records of steps 1..28 are lost" in out, out
    steps = [r["step"] for r in History.read_jsonl(tmp_path / "run").steps]
    assert steps == list(range(29, 49))
    assert _same_weights(reference.model.state_dict(), resumed.model.state_dict())


# ------------------------------------------------------------------ thread count
def test_resume_uses_the_recorded_thread_count(tmp_path: Path, capsys) -> None:
    config = {"batch_size": 1024, "epochs": 2, "checkpoint_every": 2}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(tmp_path / "one", task=WIDE, **config)
        torch.set_num_threads(2)
        two = _run(tmp_path / "two", task=WIDE, **config)
        # the premise: the thread count changes the result (else this test proves nothing)
        assert not _same_weights(one.model.state_dict(), two.model.state_dict())
        _run(tmp_path / "run", crash=7, task=WIDE, **config)  # latest: step 6, 2 threads
        torch.set_num_threads(1)
        resumed = _resume(tmp_path / "run", task=WIDE, **config)
        assert torch.get_num_threads() == 1  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "recorded with 2 intra-op thread(s), the environment gives 1; using 2" in out, out
    assert _same_weights(two.model.state_dict(), resumed.model.state_dict())
    assert resumed.summary["torch_threads"] == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["torch_threads"] == 2


# ---------------------------------------------------------------------- numbering
def test_rescued_steps_are_counted_in_the_summary(tmp_path: Path) -> None:
    # two calm epochs, then an LR far too high: the guard rescues
    schedule = {"name": "piecewise", "unit": "epochs", "boundaries": [1], "values": [0.05, 50.0]}
    result = _run(tmp_path / "run", schedule=schedule, epochs=3)
    summary = result.summary
    rescues = [a for a in summary["guard"]["actions"] if a["action"] == "guard_rescue"]
    assert rescues, summary["guard"]
    first = rescues[0]["step"] - rescues[0]["restored_step"]
    assert summary["steps_rewound"] >= first > 0
    # the data order is replayed from each restored state: a completed run took exactly
    # its planned steps plus the ones it ran again
    assert summary["steps_run"] == summary["steps_planned"] + summary["steps_rewound"]
    assert summary["epochs_run"] == 3
    assert [r["epoch"] for r in result.history.epochs] == [0, 1, 2]  # indices


def test_resume_of_a_finished_but_unsummarised_run_says_so(tmp_path: Path, capsys) -> None:
    _run(tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    _resume(tmp_path / "run")
    out = capsys.readouterr().out
    assert "resuming from step 48 (all 3 epochs done; finishing the run)" in out, out
    assert "epoch 4" not in out


class _Payload:  # a class torch.load(weights_only=True) refuses to build
    pass


def test_refused_pickle_notice_is_one_line_without_weights_only_advice(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    torch.save({"step": 1, "x": _Payload()}, path)
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "truncated or corrupted" in text and "objects other than tensors" in text
    assert "weights_only" not in text and "\n" not in text


def test_repair_metrics_cases(tmp_path: Path) -> None:
    from lrpilot.train._rundir import repair_metrics

    lines = [json.dumps({"type": "step", "step": s}).encode() + b"\n" for s in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    recorded = len(lines[0] + lines[1])  # the checkpoint was taken after step 2
    path.write_bytes(b"".join(lines) + b'{"type": "st')  # killed later, mid-record
    assert repair_metrics(path, recorded, 2) == (recorded, [])  # the usual case: silent
    path.write_bytes(lines[0] + lines[1][:5])  # lost before the checkpoint's end
    keep, notes = repair_metrics(path, recorded, 2)
    assert keep == len(lines[0]) and "ends at step 1; steps 2..2 have no records" in notes[0]
    path.write_bytes(b"x" * (recorded + 10))  # not the log the checkpoint measured
    keep, notes = repair_metrics(path, recorded, 2)
    assert keep == 0 and "does not match the checkpoint" in notes[0]
    path.unlink()
    keep, notes = repair_metrics(path, recorded, 2)
    assert keep is None and "is missing" in notes[0]
