"""The fork server's preload for trial children: the heavy imports (PyTorch, the training
loop, the CLI) are done once per worker, and each trial is a fresh fork that runs
``lrpilot.cli.main(["fit", ...])`` with its output in the run directory's ``fit.log``."""

from __future__ import annotations

import os
import sys

import torch

import lrpilot.cli
import lrpilot.diagnosis
import lrpilot.tasks
import lrpilot.train
import lrpilot.train._tbevents

# lazy imports that every run would otherwise pay for: torch.optim's first optimizer
# imports torch._dynamo (seconds on a small CPU)
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
lrpilot.cli.build_parser()  # imports every subcommand module

#: a built-in task named here (by ``lrpilot tune``) is built once in the fork server: its
#: data set is generated once, not in every trial
PRELOAD_ENV = "LRPILOT_TUNE_PRELOAD_TASK"
if os.environ.get(PRELOAD_ENV) in lrpilot.tasks.list_tasks():
    lrpilot.tasks.get_task(os.environ[PRELOAD_ENV])


def _watch(owner: int) -> None:
    """SIGTERM this trial when the worker that started it is gone (the fork server, our
    parent, may outlive it)."""
    import signal
    import threading
    import time

    def loop() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, daemon=True).start()


def run_cli(argv: list[str], log_path: str, env: dict, cwd: str, owner: int = 0) -> None:
    """Body of one trial child (in a process forked from the fork server)."""
    from lrpilot.search._parent import die_with_parent

    die_with_parent()
    if owner:
        _watch(owner)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for entry in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = lrpilot.cli.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
