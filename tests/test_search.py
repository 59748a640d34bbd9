"""``lrpilot tune`` with the real components: ``lrpilot fit`` children, Optuna on SQLite, a
journal file and PostgreSQL, Ray Tune with ASHA.

The trials train ``tiny_task`` below (384 samples, a 8-16-3 MLP, 3 epochs: well under a
second of training; most of a trial's time is the child's Python start). The children find
it through PYTHONPATH (this directory), as ``lrpilot fit --task test_search:tiny_task``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.cli import main
from lrpilot.tasks.base import Task, accuracy

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
EPOCHS = 3


def tiny_task() -> Task:
    """Three linearly separable classes in 8 dimensions (fixed data, seed 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return Task(
        name="tiny",
        build_model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
        train_set=TensorDataset(x[:384], y[:384]),
        val_set=TensorDataset(x[384:], y[384:]),
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults={"epochs": EPOCHS, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    )


class _Slow(nn.Module):
    """Sleeps 100 ms per training forward, so a kill lands mid-trial (about 1.2 s/epoch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(0.1)
        return x


def slow_task() -> Task:
    task = tiny_task()
    model = task.build_model
    return Task(
        name="tiny-slow",
        build_model=lambda: nn.Sequential(_Slow(), model()),
        train_set=task.train_set,
        val_set=task.val_set,
        loss_fn=task.loss_fn,
        metrics=task.metrics,
        defaults=task.defaults,
    )


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Children (trials, workers) import this module and this checkout's lrpilot."""
    path = os.pathsep.join([str(HERE), str(SRC), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if str(HERE) not in sys.path:
        monkeypatch.syspath_prepend(str(HERE))
    return dict(os.environ)


def write_inputs(
    tmp: Path, space: str, task: str = "tiny_task", **extra: object
) -> tuple[Path, Path]:
    config = {
        "task": f"test_search:{task}",
        "epochs": EPOCHS,
        "device": "cpu",
        "checkpoint_every": "epoch",
        **extra,
    }
    (tmp / "base.yaml").write_text(json.dumps(config))
    (tmp / "space.yaml").write_text(space)
    return tmp / "base.yaml", tmp / "space.yaml"


LR_SPACE = "optimizer.lr: {log_uniform: [1.0e-4, 1.0]}\n"


def tune_args(config: Path, space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    head = ["tune", str(config), "--space", str(space), "--trials", str(trials)]
    return [*head, "--out", str(out), *extra]


def run_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def open_study(argv: list[str]):  # type: ignore[no-untyped-def]
    """The study a command line names, opened the way ``lrpilot tune`` opens it."""
    from lrpilot.cli import build_parser
    from lrpilot.cli._tune_cmd import build_spec
    from lrpilot.search._study import open_study as _open

    spec = build_spec(build_parser().parse_args(argv))
    return spec, _open(spec)


def epoch_numbers(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["epoch"] for r in map(json.loads, lines) if r["type"] == "epoch"]


def assert_all_final(study) -> None:  # type: ignore[no-untyped-def]
    states = [t.state.name for t in study.trials]
    assert all(s in ("COMPLETE", "PRUNED", "FAIL") for s in states), states


# ----------------------------------------------------------------------- SQLite
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sqlite_study_prunes_the_planted_trial_and_writes_the_report(
    tmp_path: Path, env: dict, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("optuna")
    config, space = write_inputs(tmp_path, LR_SPACE, task="slow_task")
    out = tmp_path / "study"
    argv = tune_args(config, space, out, 4, "--pruner", "median", "--seed", "1")
    _, study = open_study(argv)
    # planted: a good LR first (the median pruner's one start-up trial), then an LR 3000x
    # smaller, whose first-epoch val_loss is far above the good one's: pruned at epoch 0
    study.enqueue_trial({"optimizer.lr": 0.3})
    study.enqueue_trial({"optimizer.lr": 1e-4})
    summary = run_json(argv, capsys)

    assert summary["storage"] == f"sqlite:///{out / 'study.db'}"
    trials = summary["trials"]
    assert len(trials) == 4
    assert [t["state"] for t in trials[:2]] == ["complete", "pruned"]
    pruned_dir = Path(trials[1]["run_dir"])
    ran = epoch_numbers(pruned_dir)  # pruned at epoch 0, SIGTERM before the run's end
    assert ran[0] == 0 and len(ran) < EPOCHS
    assert not (pruned_dir / "summary.json").exists()
    assert trials[1]["compute"] == pytest.approx(len(ran) / EPOCHS)
    assert trials[1]["value"] is not None
    for t in trials:
        run_dir = Path(t["run_dir"])
        assert run_dir.parent == out / "trials"
        if t["state"] == "complete":
            done = json.loads((run_dir / "summary.json").read_text())
            assert done["final"]["val_loss"] == pytest.approx(t["value"])
            assert t["compute"] == 1.0
    assert summary["compute"] == pytest.approx(sum(t["compute"] for t in trials))
    # best.yaml: the base config with the best trial's values, accepted by lrpilot fit
    from lrpilot.train import parse_config
    from lrpilot.train._sources import load_yaml

    best = min((t for t in trials if t["state"] == "complete"), key=lambda t: t["value"])
    assert summary["best"]["number"] == best["number"]
    cfg = parse_config(load_yaml(out / "best.yaml"))
    assert cfg.optimizer.lr == best["params"]["optimizer.lr"]
    assert cfg.task == "test_search:slow_task" and cfg.epochs == EPOCHS
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["dashboard"] == f"optuna-dashboard sqlite:///{out / 'study.db'}"
    n_complete = sum(t["state"] == "complete" for t in trials)
    if n_complete >= 3:
        assert set(summary["importances"]) == {"optimizer.lr"}
    else:
        assert summary["importances"] is None and "at least 3" in summary["importances_note"]

    # the same command again: nothing left to do, the study is unchanged
    again = run_json(argv, capsys)
    assert [t["number"] for t in again["trials"]] == [0, 1, 2, 3]


def _start_cli(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "lrpilot.cli", *argv],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _has_epoch(run_dir: Path) -> bool:
    try:
        return bool(epoch_numbers(run_dir)) and any((run_dir / "checkpoints").glob("*.pt"))
    except (FileNotFoundError, ValueError):
        return False


# ----------------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes when the machine is shared
def test_killed_parent_then_same_command_resumes_the_study(
    tmp_path: Path, env: dict, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("optuna")
    config, space = write_inputs(tmp_path, LR_SPACE, task="slow_task")
    out = tmp_path / "study"
    argv = tune_args(config, space, out, 3, "--pruner", "none", "--heartbeat", "1")
    proc = _start_cli(argv, env, tmp_path / "first.log")
    victim = out / "trials" / "trial-0001"
    _wait_for(lambda: _has_epoch(victim), 600, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (victim / "summary.json").exists()  # killed mid-trial
    time.sleep(0.5)  # the trial's child gets SIGTERM from the kernel (parent death signal)
    killed_at = epoch_numbers(victim)

    summary = run_json(argv, capsys)
    states = [(t["number"], t["state"], t["retry_of"]) for t in summary["trials"]]
    # trial 1 went stale (no heartbeat), was failed and retried as a new trial
    assert (1, "fail", None) in states
    retry = [t for t in summary["trials"] if t["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["state"] == "complete"
    assert retry[0]["run_dir"] == str(victim)  # the retry continued the same run directory
    assert "resuming from step" in (victim / "fit.log").read_text()
    assert epoch_numbers(victim) == list(range(EPOCHS))  # each epoch once (resume truncates)
    assert len(killed_at) < EPOCHS
    finished = [t for t in summary["trials"] if t["state"] != "fail"]
    assert len(finished) == 3 and all(t["state"] == "complete" for t in finished)
    _, study = open_study(argv)
    assert_all_final(study)


# ----------------------------------------------------------------------- journal
@pytest.mark.slow
@pytest.mark.timeout(900)  # three processes and four trials; minutes when the machine is shared
def test_journal_storage_two_worker_processes_account_for_every_trial(
    tmp_path: Path, env: dict, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("optuna")
    config, space = write_inputs(tmp_path, LR_SPACE)
    out = tmp_path / "study"
    argv = tune_args(config, space, out, 4, "--workers", "2", "--pruner", "none")
    summary = run_json(argv, capsys)

    assert summary["storage"] == str(out / "journal.log")
    assert not (out / "study.db").exists()
    trials = summary["trials"]
    # 4 finished; two workers may start one more between them, never more
    assert 4 <= len(trials) <= 5
    assert all(t["state"] == "complete" for t in trials)
    run_dirs = [t["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(run_dirs)  # no trial ran twice
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(
        Path(d).name for d in run_dirs
    )
    for d in run_dirs:
        assert epoch_numbers(Path(d)) == list(range(EPOCHS))  # one run per directory
    _, study = open_study(argv)
    pids = {t.user_attrs["worker_pid"] for t in study.trials}
    assert os.getpid() not in pids  # the trials ran in the worker processes
    assert 1 <= len(pids) <= 2
    assert_all_final(study)


# ----------------------------------------------------------------------- PostgreSQL
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A throw-away PostgreSQL server on a Unix socket (initdb + pg_ctl in a temp
    directory), shut down afterwards. Missing PostgreSQL fails under CI=true (``make test``
    and ``.ci/run`` install it) and skips elsewhere."""
    pytest.importorskip("psycopg2")
    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL (initdb) is not installed; apt-get install -y postgresql"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    import pwd
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="lrpilot-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as postgres
        user = pwd.getpwnam("postgres")
        for path in (base, sock):
            os.chown(path, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = str(20000 + os.getpid() % 20000)
    run = lambda *a: subprocess.run([*prefix, *a], check=True, capture_output=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    opts = f"-k {sock} -p {port} -c listen_addresses=''"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(base / "log"), "start")
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={sock}&port={port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)  # a server and two workers; minutes on a loaded 2-core machine
def test_postgresql_two_workers_one_killed_mid_trial_study_completes(
    tmp_path: Path, env: dict, postgres_url: str
) -> None:
    pytest.importorskip("optuna")
    config, space = write_inputs(tmp_path, LR_SPACE, task="slow_task")
    out = tmp_path / "study"
    argv = tune_args(config, space, out, 3, "--pruner", "none", "--heartbeat", "1")
    argv += ["--storage", postgres_url, "--study", "pg"]
    first = _start_cli(argv, env, tmp_path / "a.log")
    trial0 = out / "trials" / "trial-0000"
    _wait_for(lambda: _has_epoch(trial0), 600, first)  # worker A is mid-trial 0
    second = _start_cli(argv, env, tmp_path / "b.log")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (trial0 / "summary.json").exists()  # killed mid-trial
    assert second.wait(timeout=240) == 0, (tmp_path / "b.log").read_text()[-2000:]

    _, study = open_study(argv)
    assert_all_final(study)  # nothing RUNNING or WAITING: the stale trial was failed
    trials = study.trials
    killed = trials[0]
    assert killed.state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].user_attrs["resumed"] is True
    assert retries[0].user_attrs["run_dir"] == str(trial0)
    assert epoch_numbers(trial0) == list(range(EPOCHS))
    from lrpilot.search._study import count_finished

    assert count_finished(trials) >= 3


# ----------------------------------------------------------------------- Ray
@pytest.mark.slow
@pytest.mark.timeout(900)  # Ray's start alone takes tens of seconds on a loaded machine
def test_ray_tune_asha_four_trials(tmp_path: Path, env: dict) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    from lrpilot.cli import build_parser
    from lrpilot.cli._tune_cmd import build_spec
    from lrpilot.search._ray_backend import run_ray

    config, space = write_inputs(tmp_path, LR_SPACE)
    out = tmp_path / "study"
    argv = tune_args(config, space, out, 4, "--backend", "ray")
    spec = build_spec(build_parser().parse_args(argv))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = run_ray(spec, None, quiet=True)
    finally:
        ray.shutdown()
    assert len(rows) == 4
    assert len({r.run_dir for r in rows}) == 4
    for r in rows:
        assert r.state in ("complete", "pruned"), r
        run_dir = Path(r.run_dir)
        epochs = epoch_numbers(run_dir)
        assert r.compute == pytest.approx(len(epochs) / EPOCHS)
        assert (run_dir / "summary.json").exists() == (r.state == "complete")
        assert 1e-4 <= r.params["optimizer.lr"] <= 1.0
    assert any(r.state == "complete" for r in rows)
