"""One trial: an ordinary ``lrpilot fit`` run in a child process, watched by the parent.

The parent starts ``LAUNCHER -m lrpilot.cli fit CONFIG --out RUN_DIR --set key=value ...``
(``LAUNCHER`` is this Python, or for example ``torchrun --nproc-per-node 2``, so that a
trial is one DDP job with one trial object held by the parent), reads each new
``{"type": "epoch", ...}`` record of the child's ``metrics.jsonl`` (written and flushed at
every epoch end) and passes ``(epoch, value)`` to ``on_epoch``; when ``on_epoch`` answers
"prune", the child gets SIGTERM and the parent waits for it (SIGKILL after
``TERM_TIMEOUT`` seconds). The child's output goes to ``RUN_DIR/fit.log``. On Linux the
child gets SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a killed worker leaves
no orphan writing into a run directory that its retry will resume.

Without a launcher the child is forked from a fork server that imported PyTorch and the
training loop once (:mod:`lrpilot.search._child`), so a small trial does not pay for a
Python start; it then runs ``lrpilot.cli.main(["fit", ...])``, exactly what the command
line runs. With a launcher (or ``fork=False``) the child is a fresh process.

A run directory that already holds ``config.yaml`` is resumed (``lrpilot fit --resume``,
from its newest valid checkpoint, or from step 0 without one); a directory without it is a
start that never got going and is cleared.

Compute: the epochs in the run directory at the end, in units of the full run's epochs
(work lost after the last checkpoint of a killed attempt is not counted).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrpilot.search._parent import die_with_parent as _die_with_parent
from lrpilot.search._space import overrides_for

TERM_TIMEOUT = 30.0
POLL_SECONDS = 0.2


@dataclass
class TrialOutcome:
    """``state``: ``complete``, ``pruned`` or ``failed``; ``value``: the metric at the last
    epoch (``None`` when no epoch finished or it is not finite); ``epochs``: epoch records in
    the run directory; ``resumed``: this attempt continued an earlier one."""

    state: str
    value: float | None
    epochs: int
    returncode: int | None
    message: str
    resumed: bool = False


def fit_argv(
    config: Path, run_dir: Path, values: dict, launcher: str | None = None
) -> tuple[list[str], bool]:
    """The child's command line and whether it resumes (see the module docstring)."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    argv = [*prefix, "-m", "lrpilot.cli", "fit"]
    tail = ["--out", str(run_dir), "--progress", "plain"]
    if (run_dir / "config.yaml").is_file():
        return [*argv, "--resume", *tail], True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    sets = [item for pair in overrides_for(values) for item in ("--set", pair)]
    return [*argv, str(config), *tail, *sets], False


class EpochReader:
    """New epoch records of a ``metrics.jsonl`` being written (whole lines only; a file
    that shrank, as a resume truncates it, is read again from the start)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buffer = b""

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset, self.buffer = 0, b""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        data = self.buffer + chunk
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        out = []
        for line in lines:
            if b'"epoch"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("type") == "epoch":
                out.append(record)
        return out


class ForkChild:
    """``lrpilot.cli.main(argv)`` in a process forked from the preloaded fork server, with
    the ``subprocess.Popen`` methods the runner uses."""

    def __init__(self, cli_argv: list[str], log_path: Path, env: dict | None) -> None:
        import multiprocessing

        from lrpilot.search import _child

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["lrpilot.search._child"])
        args = (cli_argv, str(log_path), dict(env or os.environ), os.getcwd(), os.getpid())
        self._proc = ctx.Process(target=_child.run_cli, args=args)
        self._proc.start()
        self.pid: int = self._proc.pid or 0

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired("lrpilot fit", timeout or 0.0)
        return self._proc.exitcode

    def kill(self) -> None:
        self._proc.kill()


def _forkable(argv: Sequence[str]) -> bool:
    return (
        sys.platform.startswith("linux")
        and list(argv[:3]) == [sys.executable, "-m", "lrpilot.cli"]
        and os.environ.get("LRPILOT_TUNE_FORK", "1") != "0"
    )


def start_child(argv: Sequence[str], log_path: Path, env: dict | None, fork: bool) -> Any:
    """The trial's child: forked from the fork server when ``fork`` and the command is this
    Python's ``-m lrpilot.cli``, else a fresh process."""
    if fork and _forkable(argv):
        return ForkChild(list(argv[3:]), log_path, env)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if os.name == "posix" else None,
        )


def run_trial(
    argv: Sequence[str],
    run_dir: Path,
    metric: str,
    on_epoch: Callable[[int, float], bool],
    *,
    tick: Callable[[], None] | None = None,
    env: dict | None = None,
    fork: bool = True,
) -> TrialOutcome:
    """Run the child to its end or until ``on_epoch`` returns ``True`` (prune).

    ``tick`` is called about every ``POLL_SECONDS`` (heartbeats)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = "--resume" in argv
    reader = EpochReader(run_dir / "metrics.jsonl")
    last: dict[int, float] = {}
    proc = start_child(argv, run_dir / "fit.log", env, fork)
    pruned = False
    try:
        while True:
            done = proc.poll() is not None
            for record in reader.read():
                seen = float(record.get(metric, math.nan))
                last[int(record["epoch"])] = seen
                # every epoch is reported, also those read once the child has exited (its
                # run is over then: a prune decision no longer applies)
                if not pruned and on_epoch(int(record["epoch"]), seen) and not done:
                    pruned = True
            if pruned or done:
                break
            if tick is not None:
                tick()
            time.sleep(POLL_SECONDS)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TERM_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    epochs = max(last) + 1 if last else 0
    value: float | None = last[max(last)] if last else None
    if value is not None and not math.isfinite(value):
        value = None
    if pruned:
        return TrialOutcome("pruned", value, epochs, proc.returncode, "pruned", resumed)
    if proc.returncode != 0:
        tail = _log_tail(run_dir / "fit.log")
        return TrialOutcome("failed", value, epochs, proc.returncode, tail, resumed)
    if value is None:
        return TrialOutcome("failed", None, epochs, 0, f"no finite {metric} recorded", resumed)
    return TrialOutcome("complete", value, epochs, 0, "", resumed)


def _log_tail(path: Path) -> str:
    """The child's last non-empty output line (its one-line error)."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"
