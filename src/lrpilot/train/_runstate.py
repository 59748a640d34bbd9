"""A run's checkpoint contents: :func:`capture` takes everything a resume needs as CPU
copies (model, optimizer, schedule, guard and its snapshots, scaler, RNGs, loop counters,
best-epoch tracker, noise monitor, user callbacks' ``state_dict()``, the outcomes read but
not yet handed out), and :func:`load` puts it back, so a resumed run is bit-identical to
one never stopped (:mod:`lrpilot.train._loop`)."""

from __future__ import annotations

from typing import Any

from lrpilot import _distributed as distributed
from lrpilot._state import cpu_clone
from lrpilot.errors import ConfigError
from lrpilot.train._builders import load_optimizer_state
from lrpilot.train._rng import capture_rng, restore_rng


def capture(run: Any, metrics_bytes: int) -> dict:
    """Everything a resume needs, as CPU copies (safe to write from another thread)."""
    engine = run.engine
    engine.resolve()  # lagged mode: the guard's state and the loss sums hold every step
    loop = engine.state.state_dict()
    loop["elapsed"] = engine.elapsed()
    guard = run.guard
    return {
        "step": engine.state.step,
        # unwrapped: the weights load into a bare model, whatever the world size
        "model": cpu_clone(distributed.unwrap(engine.model).state_dict()),
        "optimizer": cpu_clone(engine.optimizer.state_dict()),
        "schedule": engine.adapter.state_dict(),
        "guard": None if guard is None else guard.guard.state_dict(),
        "guard_snapshots": [] if guard is None else list(guard.snapshots),
        "scaler": None if engine.scaler is None else engine.scaler.state_dict(),
        "rng": capture_rng(),
        "loop": loop,
        "tracker": run.best.tracker.state_dict(),
        "best_model": run.best.best_model,
        "metrics_bytes": metrics_bytes,
        "noise": None if engine.noise is None else engine.noise.state_dict(),
        "world_size": distributed.current_env().world_size,
        "callbacks": [cpu_clone(cb.state_dict()) for cb in run.user],
        "identity": dict(run.identity),
        "outcomes": engine.outcomes_state(),  # read, not yet seen by the callbacks
    }


def load(run: Any, ckpt: dict) -> None:
    """Put a checkpoint (:func:`capture`) back into the run's engine, guard, best-epoch
    tracker and user callbacks; the RNGs last."""
    engine = run.engine
    distributed.check_resume_world_size(ckpt.get("world_size", 1))
    distributed.unwrap(engine.model).load_state_dict(ckpt["model"])
    load_optimizer_state(engine.optimizer, ckpt["optimizer"])
    engine.adapter.load_state_dict(ckpt["schedule"])
    if run.guard is not None and ckpt["guard"] is not None:
        run.guard.guard.load_state_dict(ckpt["guard"])
        run.guard.snapshots = list(ckpt["guard_snapshots"])
    if engine.scaler is not None and ckpt["scaler"] is not None:
        engine.scaler.load_state_dict(ckpt["scaler"])
    engine.state.load_state_dict(ckpt["loop"])
    run.best.tracker.load_state_dict(ckpt["tracker"])
    run.best.best_model = ckpt["best_model"]
    run.best.written = True  # best.pt was written together with that checkpoint
    if engine.noise is not None and ckpt.get("noise") is not None:
        engine.noise.load_state_dict(ckpt["noise"])
    states = ckpt.get("callbacks", [])
    if len(states) != len(run.user):
        raise ConfigError(
            f"cannot resume: the checkpoint holds {len(states)} callback state(s), "
            f"fit was given {len(run.user)} callback(s)"
        )
    for cb, state in zip(run.user, states, strict=True):
        cb.load_state_dict(state)
    engine.load_outcomes_state(ckpt.get("outcomes", []))
    restore_rng(ckpt["rng"])
