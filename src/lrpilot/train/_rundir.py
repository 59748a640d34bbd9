"""The run directory's guards: one writer at a time (:class:`RunLock`), the run's identity
and environment (``run.json``: :func:`new_identity`, :func:`read_identity`,
:func:`adopt_threads`) and the metrics log checked against a checkpoint at resume
(:func:`repair_metrics`). All of it runs at the start of ``fit`` (never per step).

Lock: ``<run>/.lock``, an exclusive ``fcntl.flock`` held for the whole ``fit``. The kernel
releases it when the process ends however it ends (SIGKILL included), so a lock is never
stale; the file's content is only the holder's PID, for the refusal message.

``run.json``: ``run_id`` (random, made when the run starts; every checkpoint carries it),
``config`` (sha256 of the resolved config), ``torch_threads`` (``torch.get_num_threads()``
when it started), ``device``, ``torch_version``. Determinism: a run is bit-identical to
another (or to itself resumed) on the same device type, with the same intra-op thread
count and the same torch version; a resume therefore sets the recorded thread count.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> with RunLock(d):
...     RunLock(d).acquire()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: run directory ... is in use by process ... (lock ...); wait for it to end or use another --out
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from lrpilot import _distributed as distributed
from lrpilot._atomic_io import atomic_write_bytes
from lrpilot._distributed import is_main_process
from lrpilot.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
IDENTITY_NAME = "run.json"


class RunLock:
    """Exclusive lock of a run directory (created if missing); a context manager."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``ConfigError`` naming the holder's PID. The file of a
        held lock is not changed."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                finally:
                    os.close(fd)
                raise ConfigError(
                    f"run directory {self.run_dir} is in use by process {holder} "
                    f"(lock {self.path}); wait for it to end or use another --out"
                ) from None
        mine = f"{os.getpid()}\n".encode("ascii")
        if os.pread(fd, 64, 0) != mine:  # the holder's PID, for a refusal's message
            os.ftruncate(fd, 0)
            os.pwrite(fd, mine, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_on_main(lock: RunLock) -> None:
    """Rank 0 takes the run directory's lock; every process learns whether it did."""
    error = None
    if is_main_process():
        try:
            lock.acquire()
        except ConfigError as exc:
            error = str(exc)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise ConfigError(error)


def remove_if_untouched(run_dir: Path, lock: RunLock) -> None:
    """A run that failed before writing anything leaves no directory behind."""
    try:
        if {p.name for p in run_dir.iterdir()} <= {lock.path.name}:
            lock.path.unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------------- identity
def config_fingerprint(config: dict) -> str:
    """``sha256:<hex>`` of the config as canonical JSON (sorted keys).

    >>> config_fingerprint({"b": 1, "a": [2]}) == config_fingerprint({"a": [2], "b": 1})
    True
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=repr)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_identity(config: dict, device: str) -> dict:
    """A new run's ``run.json`` content (a fresh random ``run_id``)."""
    return {
        "run_id": uuid.uuid4().hex,
        "config": config_fingerprint(config),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "torch_version": str(torch.__version__),
    }


def device_label(device: torch.device) -> str:
    """``cpu``, or ``cuda (<GPU name>)``: what bit-identity depends on."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def write_identity(run_dir: Path, identity: dict) -> None:
    data = (json.dumps(identity, indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(data, run_dir / IDENTITY_NAME)


def read_identity(run_dir: Path) -> dict:
    """``run.json`` of a run being resumed; ``ConfigError`` if missing or unreadable."""
    path = run_dir / IDENTITY_NAME
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"cannot resume: {path} is missing (it holds the run id every checkpoint is "
            "checked against); restore it or start a new run with another --out"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume: {path} is unreadable ({exc})") from None
    if not isinstance(identity, dict) or not isinstance(identity.get("run_id"), str):
        raise ConfigError(f"cannot resume: {path} has no run_id")
    return identity


def adopt_threads(identity: dict, device: str) -> list[str]:
    """Use the run's recorded intra-op thread count (the caller restores the old one
    afterwards); the messages say what differs from the recording."""
    notes = []
    recorded = identity.get("torch_threads")
    current = torch.get_num_threads()
    if isinstance(recorded, int) and recorded > 0 and recorded != current:
        torch.set_num_threads(recorded)
        notes.append(
            f"this run was recorded with {recorded} intra-op thread(s), the environment "
            f"gives {current}; using {recorded} (same thread count: bit-identical resume)"
        )
    if identity.get("device") not in (None, device):
        notes.append(
            f"this run was recorded on {identity['device']} and resumes on {device}: the "
            "result will not be bit-identical to an uninterrupted run"
        )
    if identity.get("torch_version") not in (None, torch.__version__):
        notes.append(
            f"this run was recorded under torch {identity['torch_version']} and resumes "
            f"under {torch.__version__}: the result may not be bit-identical"
        )
    return notes


# -------------------------------------------------------------------------- metrics
def repair_metrics(path: Path, checkpoint_bytes: int, step: int) -> tuple[int | None, list[str]]:
    """Check ``metrics.jsonl`` against a checkpoint that recorded its length
    (``checkpoint_bytes``) at ``step``. Returns ``(length to keep, notes)``; the length is
    ``None`` when the log is missing (the resumed run starts a new one, from ``step``).

    - longer than recorded: cut back to the recorded length (records past the checkpoint
      are written again by the resumed run; the usual case after a kill);
    - shorter than recorded (lost or cut): the torn last line is removed and the note says
      which steps have no records;
    - a record that is not a complete JSON line at the cut point: cut back to the last
      complete line.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, [
            f"{path.name} is missing: the records of steps 1..{step} are lost; a new log "
            f"starts after step {step} (the diagnosis covers only the new records)"
        ]
    keep = min(size, checkpoint_bytes)
    with open(path, "rb") as handle:
        head = handle.read(keep)
    end = head.rfind(b"\n") + 1  # complete lines only
    notes = []
    last_step = _last_step(head[:end])
    if keep == checkpoint_bytes and end < keep:  # changed since: no line ends there
        notes.append(
            f"{path.name} does not match the checkpoint (no record ends at the recorded "
            f"length, {checkpoint_bytes} bytes): cut back to its last complete record, "
            f"step {last_step}; steps {last_step + 1}..{step} have no records"
        )
    elif keep < checkpoint_bytes or end < keep:
        torn = " (its torn last line removed)" if end < keep else ""
        notes.append(
            f"{path.name} is shorter than the checkpoint recorded ({size} of "
            f"{checkpoint_bytes} bytes){torn}: it ends at step {last_step}; steps "
            f"{last_step + 1}..{step} have no records"
        )
    return end, notes


def _last_step(data: bytes) -> int:
    """The ``step`` of the last record in ``data`` (complete JSON lines), 0 if none."""
    for line in reversed(data.splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


# ----------------------------------------------------------------------- messages
def resume_message(state: Any, epochs: int) -> str:
    """What a resume says about where it continues (``state``: the engine's
    :class:`~lrpilot.train._engine.LoopState`); epochs are counted from 1 in text.

    >>> from lrpilot.train._engine import LoopState
    >>> resume_message(LoopState(step=30, epoch=2, micro=0), 5)
    'resuming from step 30 (2 of 5 epochs done; epoch 3 next)'
    >>> resume_message(LoopState(step=35, epoch=3, micro=10), 5)
    'resuming from step 35 (in epoch 4 of 5)'
    >>> resume_message(LoopState(step=50, epoch=5, micro=0), 5)
    'resuming from step 50 (all 5 epochs done; finishing the run)'
    """
    if state.stopped_early:
        return (
            f"resuming from step {state.step} (stopped early after {state.epoch} of {epochs} "
            "epochs; finishing the run)"
        )
    if state.epoch >= epochs:
        return f"resuming from step {state.step} (all {epochs} epochs done; finishing the run)"
    if state.micro == 0:
        return (
            f"resuming from step {state.step} ({state.epoch} of {epochs} epochs done; "
            f"epoch {state.epoch + 1} next)"
        )
    return f"resuming from step {state.step} (in epoch {state.epoch + 1} of {epochs})"


def resume_mismatch(diff: list[str]) -> str:
    """The one-line refusal of a resume whose config differs from the run's (``diff``:
    ``"key: old -> new"`` items). A changed ``epochs`` (or schedule) says why a run cannot
    be extended and what to do instead.

    >>> resume_mismatch(["epochs: 3 -> 5"])[:62]
    'cannot resume with a different config; changed: epochs: 3 -> 5'
    >>> "another --out" in resume_mismatch(["epochs: 3 -> 5"])
    True
    """
    text = "cannot resume with a different config; changed: " + "; ".join(diff)
    if any(d.startswith(("epochs:", "schedule")) for d in diff):
        text += (
            "; a run cannot be extended: its schedule is a pure function of the step and "
            "the run's total steps, so other epochs would change the learning rate of the "
            "steps already taken; to train longer, start a new run with the new epochs "
            "(another --out)"
        )
    return text
