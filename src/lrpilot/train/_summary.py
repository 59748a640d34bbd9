"""The end of a run: ``summary.json`` (:func:`finish_run`) and the diagnosis of its
metrics (:func:`diagnose_run`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lrpilot import _distributed as distributed
from lrpilot._atomic_io import atomic_write_bytes
from lrpilot.batch.scaling import lr_scale_factor
from lrpilot.history import History
from lrpilot.train._builders import implementation_of


def diagnose_run(run: Any) -> tuple[History | None, list[dict]]:
    """``(history, findings)``: ``lrpilot.diagnose`` of the run's ``metrics.jsonl`` (through
    the prepare step's ``qualify_findings`` when it gave one), printed and returned as
    dicts (a failure of the diagnosis is reported, never fatal to the run)."""
    from lrpilot.diagnosis import diagnose

    history = None
    try:
        if run.log is not None:
            run.log.flush()
        # every record is written by now: the same history is returned by run()
        history = History.read_jsonl(run.run_dir / "metrics.jsonl")
        findings = diagnose(history)
        if run.qualify_findings is not None:
            findings = run.qualify_findings(findings)
    except Exception as exc:  # the run itself is done; say why there is no diagnosis
        error = f"diagnosis failed: {type(exc).__name__}: {exc}"
        if run.progress_mode != "none":
            run.progress.message(f"lrpilot fit: {error}")
        return history, [{"error": error}]
    if run.progress_mode != "none":
        for finding in findings:
            run.progress.message(f"lrpilot fit: diagnosis: {finding.describe()}")
    return history, [f.to_dict() for f in findings]


def atomic_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    import json

    atomic_write_bytes((json.dumps(obj, indent=2) + "\n").encode("utf-8"), path)


def steps_rewound(rescues: list[dict]) -> int:
    """Optimizer steps run again because of guard rescues: a rescue at step ``s`` back to
    the snapshot taken at step ``r`` discards the steps since that state was last current,
    ``r`` or the step of an earlier rescue back to the same snapshot. A rescue that put
    back only the weights (``"replayed": false``, ``guard.max_replay``) runs nothing again.

    >>> steps_rewound([{"step": 20, "restored_step": 16}, {"step": 24, "restored_step": 16}])
    8
    >>> steps_rewound([{"step": 20, "restored_step": 16, "replayed": False},
    ...                {"step": 24, "restored_step": 16}])
    8
    """
    current_at: dict[int, int] = {}
    total = 0
    for event in rescues:
        if event.get("replayed") is False:
            continue
        step, restored = int(event["step"]), int(event["restored_step"])
        total += step - current_at.get(restored, restored)
        current_at[restored] = step
    return total


def _restore_best(trainer: Any, status: str) -> bool:
    """Load the best weights into the model when early stopping asks for them (not after
    an abort); whether it did."""
    es = trainer.cfg.early_stopping
    if (
        es is not None
        and es.restore_best
        and trainer.best.best_model is not None
        and status != "aborted"
    ):
        distributed.unwrap(trainer.engine.model).load_state_dict(trainer.best.best_model)
        return True
    return False


def _best_record(trainer: Any) -> dict[str, Any] | None:
    """The best epoch's record with the monitored value (``None`` before any)."""
    state = trainer.engine.state
    if state.best_record is None:
        return None
    return {
        "monitor": trainer.best.tracker.monitor,
        "mode": trainer.best.tracker.mode,
        "value": trainer.best.tracker.best,
        **{k: v for k, v in state.best_record.items() if k != "type"},
    }


def _noise_value(engine: Any) -> float | None:
    """The online noise scale's estimate, ``None`` when off or not yet finite."""
    noise = engine.noise
    return noise.value if noise is not None and math.isfinite(noise.value) else None


def finish_run(trainer: Any, status: str) -> dict[str, Any]:
    """The end of a run: restore best weights if asked, build ``summary.json``.

    Counting: ``epochs_run`` is the number of epochs completed; the ``epoch`` fields of
    records (``final``, ``best``, guard actions, ``metrics.jsonl``) are 0-based indices
    (the run's text says ``epoch k/N`` with ``k = index + 1``). ``steps_run`` counts every
    optimizer step taken, including the ones a guard rescue ran again:
    ``steps_run = steps_planned + steps_rewound`` for a run that trained to its end, where
    ``steps_rewound`` is :func:`steps_rewound` of the rescues."""
    cfg, engine = trainer.cfg, trainer.engine
    state = engine.state
    restored = _restore_best(trainer, status)
    wall = engine.elapsed()
    final = {k: v for k, v in (state.last_epoch_record or {}).items() if k not in ("type",)}
    rescues = [e for e in state.events if e.get("action") == "guard_rescue"]
    rewound = steps_rewound(rescues)
    identity = getattr(trainer, "identity", {}) or {}
    return {
        "task": cfg.task,
        "status": status,
        "epochs_run": state.epoch,
        "epochs_planned": cfg.epochs,
        "steps_run": state.step,
        "steps_planned": engine.total_steps,
        "steps_rewound": rewound,
        "steps_per_epoch": engine.steps_per_epoch,
        "optimizer_steps_skipped": state.skipped_steps,
        "samples_seen": state.samples,
        "effective_batch_size": distributed.effective_batch(cfg.batch_size, cfg.accumulate),
        "optimizer_implementation": implementation_of(engine.optimizer),
        "world_size": distributed.current_env().world_size,
        "lr_scale_factor": lr_scale_factor(
            cfg.lr_scaling, distributed.effective_batch(cfg.batch_size, cfg.accumulate)
        ),
        "noise_scale": _noise_value(engine),
        "wall_time_s": wall,
        "train_time_s": state.train_time,
        "samples_per_s": state.samples / state.train_time if state.train_time > 0 else None,
        "eval_time_s": state.eval_time,
        "final": final,
        "best": _best_record(trainer),
        "restored_best_weights": restored,
        "stop_reason": trainer.stop_reason or None,
        "device": str(engine.device),
        "run_id": identity.get("run_id"),
        "torch_threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "notes": list(getattr(trainer, "notes", [])),
        "guard": {
            "enabled": cfg.guard.enabled,
            "rescues": len(rescues),
            "lr_scale": engine.adapter.lr_scale,
            "actions": [dict(e) for e in state.events],
        },
        "run_dir": str(trainer.run_dir),
        "tensorboard_dir": str(trainer.run_dir / "tensorboard"),
    }
