"""Loop overhead in CPU instructions: a deterministic companion to ``loop_overhead.py``.

Wall-clock ratios on a shared VM move by several percent between runs of the same code, more
than the overhead being measured. Instruction counts do not: this script runs the same bare
loop and ``lrpilot.fit`` as ``loop_overhead.py`` (mnist1d-cnn, batch 64, warmup+cosine, one
thread) under ``valgrind --tool=callgrind``, counting only the training call (instrumentation
is switched on and off around it through callgrind's client requests, from a tiny C helper
compiled here), at two epoch counts, and splits lrpilot's extra instructions into a fixed part
(set-up, final checkpoint, diagnosis, summary) and a per-epoch part (steps, validation,
logging, snapshots). The time-triggered work (checkpoints every 60 s, TensorBoard bursts every
20 s) is switched off in both, as in a real run of a second or two: under valgrind a run
takes minutes and would trigger it.

What instructions do not show: Python's instructions run at a lower rate (instructions per
cycle) than the convolution kernels, and they cost instruction-cache misses (``--cache-sim``
adds the simulated L1/LL misses). So the wall-clock share of the overhead is about 2-3x its
instruction share.

Needs ``valgrind`` (with ``valgrind/callgrind.h``) and a C compiler. Cost: about 5 minutes per
valgrind run on this machine (7 with ``--cache-sim``), two runs at a time (``--epochs 2,4``:
about 10 minutes; ``--guard-off`` and ``--for-loop`` add a variant each).

Run: ``.venv/bin/python bench/loop_instructions.py [--epochs 2,4] [--cache-sim] [--guard-off]
[--for-loop]`` (``--for-loop``: lrpilot with the bare loop's optimizer kernel, like for like).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

HELPER_C = """
#include <valgrind/callgrind.h>
void lrpilot_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void lrpilot_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""

# Runs inside valgrind: warm up both loops (imports, caches), then count one call.
CHILD = """
import ctypes, os, sys
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, {bench!r})
helper = ctypes.CDLL({helper!r})
import torch
torch.set_num_threads(1)
import lrpilot.train._builtin as loop
import lrpilot.train._runlog as runlog
loop.CHECKPOINT_SECONDS = 1e9
runlog.RunLogger.TB_SECONDS = 1e9
runlog.RunLogger.FLUSH_SECONDS = 1e9
from loop_overhead import bare_loop, lrpilot_loop
from lrpilot.tasks import get_task
get_task("mnist1d-cnn")
bare_loop(2, 64, 0)
lrpilot_loop(2, 64, 0)
variant, epochs = sys.argv[1], int(sys.argv[2])
helper.lrpilot_start()
if variant == "bare":
    bare_loop(epochs, 64, 0)
else:
    extra = {{
        "lrpilot": {{}},
        "guard-off": {{"guard": {{"enabled": False}}}},
        "for-loop": {{"optimizer": {{"implementation": "for-loop"}}}},
    }}[variant]
    lrpilot_loop(epochs, 64, 0, **extra)
helper.lrpilot_stop()
"""


def build_helper(workdir: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("loop_instructions: needs a C compiler (cc or gcc)")
    source = workdir / "helper.c"
    source.write_text(HELPER_C)
    library = workdir / "libhelper.so"
    result = subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(
            "loop_instructions: cannot build the callgrind helper (is valgrind's "
            f"callgrind.h installed?):\n{result.stderr}"
        )
    return library


def count(workdir: Path, variant: str, epochs: int, cache_sim: bool) -> dict[str, int]:
    """Run one variant under callgrind; return the collected event counts."""
    script = workdir / "child.py"
    out = workdir / f"callgrind.{variant}.{epochs}.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--cache-sim={'yes' if cache_sim else 'no'}",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(script),
        variant,
        str(epochs),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    match = re.search(r"Events *: *(.*)\n.*Collected *: *([\d ]+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"loop_instructions: valgrind run failed:\n{result.stderr[-2000:]}")
    names = match.group(1).split()
    return dict(zip(names, (int(v) for v in match.group(2).split()), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="2,4", help="two epoch counts, e.g. 2,4")
    parser.add_argument("--cache-sim", action="store_true", help="also simulate caches")
    parser.add_argument("--guard-off", action="store_true", help="add lrpilot with guard off")
    parser.add_argument(
        "--for-loop",
        action="store_true",
        help="add lrpilot with the bare loop's optimizer kernel (optimizer.implementation: "
        "for-loop; the default is fused)",
    )
    args = parser.parse_args()
    try:
        low, high = (int(v) for v in args.epochs.split(","))
    except ValueError:
        parser.error(f"--epochs {args.epochs!r}: two integers, e.g. 2,4")
    if not 2 <= low < high:  # the warmup takes the first epoch: the cosine needs a second
        parser.error(f"--epochs {args.epochs!r}: need 2 <= first < second")
    if shutil.which("valgrind") is None:
        raise SystemExit("loop_instructions: needs valgrind (apt install valgrind)")
    variants = ["bare", "lrpilot"] + (["guard-off"] if args.guard_off else [])
    variants += ["for-loop"] if args.for_loop else []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        helper = build_helper(workdir)
        (workdir / "child.py").write_text(CHILD.format(bench=str(HERE), helper=str(helper)))
        jobs = [(v, e) for e in (low, high) for v in variants]
        print(f"{len(jobs)} valgrind runs, two at a time (about 5 minutes each) ...", flush=True)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(
                zip(jobs, pool.map(lambda j: count(workdir, *j, args.cache_sim), jobs), strict=True)
            )
    events = list(results[("bare", low)])
    print(
        "\nmnist1d-cnn, batch 64, warmup+cosine, 1 thread; callgrind counts of the training "
        "call only, time-triggered checkpoints off\n"
    )
    print(
        f"{'variant':<12}{'epochs':>7}" + "".join(f"{e:>16}" for e in events) + f"{'Ir ratio':>10}"
    )
    for variant in variants:
        for epochs in (low, high):
            counts = results[(variant, epochs)]
            base = results[("bare", epochs)]["Ir"]
            print(
                f"{variant:<12}{epochs:>7}"
                + "".join(f"{counts[e]:>16,}" for e in events)
                + f"{counts['Ir'] / base:>10.4f}"
            )
    for variant in variants[1:]:
        extra = {e: results[(variant, e)]["Ir"] - results[("bare", e)]["Ir"] for e in (low, high)}
        per_epoch = (extra[high] - extra[low]) / (high - low)
        fixed = extra[low] - per_epoch * low
        bare_per_epoch = (results[("bare", high)]["Ir"] - results[("bare", low)]["Ir"]) / (
            high - low
        )
        at15 = (fixed + 15 * per_epoch) / (15 * bare_per_epoch)
        print(
            f"\n{variant}: extra instructions fixed {fixed / 1e6:+.1f} M, {per_epoch / 1e6:+.2f} M "
            f"per epoch (bare: {bare_per_epoch / 1e6:.0f} M per epoch); at 15 epochs "
            f"{100 * at15:+.2f}% instructions (ratio {1 / (1 + at15):.4f})"
        )


if __name__ == "__main__":
    main()
