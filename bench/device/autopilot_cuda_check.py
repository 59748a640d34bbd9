"""Device check (one CUDA GPU): ``lrpilot auto`` end to end on CUDA, twice with the same
seed (are the decisions and the final weights identical?), plus the GRU and the transformer
LM of ``bench/heldout_tasks.py`` for a few epochs. Prints one JSON line per run."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrpilot  # noqa: E402


def one(task, optimizer, epochs, seed, out):  # type: ignore[no-untyped-def]
    t0 = time.time()
    r = lrpilot.auto(task, optimizer=optimizer, epochs=epochs, seed=seed, out_dir=out,
                     progress="none")
    s = r.summary
    best = torch.load(Path(out) / "checkpoints" / "best.pt", weights_only=True)["model"]
    return {
        "task": task, "device": s["device"], "seconds": round(time.time() - t0, 1),
        "decisions": s["autopilot"]["decisions"], "compute": s["compute_multiple"],
        "final": {k: v for k, v in s["final"].items() if k.startswith("val_")},
        "rescues": s["guard"]["rescues"],
    }, best


def main() -> int:
    print(json.dumps({"cuda": torch.cuda.is_available(),
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
    with tempfile.TemporaryDirectory() as tmp:
        a, wa = one("digits-cnn", {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}, 6, 0,
                    f"{tmp}/a")
        print(json.dumps(a), flush=True)
        b, wb = one("digits-cnn", {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}, 6, 0,
                    f"{tmp}/b")
        same = a["decisions"] == b["decisions"] and all(torch.equal(wa[k], wb[k]) for k in wa)
        print(json.dumps({"repeat_identical": same, "b_final": b["final"]}), flush=True)
        for task, epochs in (("heldout_tasks:gru_mnist1d", 3), ("heldout_tasks:tiny_lm", 3)):
            try:
                c, _ = one(task, "adamw", epochs, 0, f"{tmp}/{task.split(':')[1]}")
                print(json.dumps(c), flush=True)
            except Exception as exc:  # e.g. mnist1d not installed there
                print(json.dumps({"task": task, "error": f"{type(exc).__name__}: {exc}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
