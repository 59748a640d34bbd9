"""Sections of ``bench/gpu_check.sh``: every CUDA path of lrpilot, run on a real GPU.

``python3 bench/gpu_check.py SECTION [--device cuda|cpu] [--workdir DIR]`` runs one
section and prints its evidence, then a last line ``RESULT <section> PASS|FAIL|SKIP
<reason>``. Without a CUDA device every section says SKIP; ``--device cpu`` runs the
same logic on the CPU (bf16 autocast instead of fp16, gloo instead of nccl) to prove the
script before GPU time is spent. Only public API is used: ``lrpilot.fit`` (and the
``lrpilot fit`` CLI), ``lrpilot.find_lr`` and ``lrpilot.batch.probe_memory``.

Sections:

* ``fit_resume``: ``lrpilot fit`` with AMP (fp16 + GradScaler on CUDA) run twice without
  interruption (the determinism control) and once SIGKILLed after its first checkpoint
  and resumed; the final weights of the three must be bit-identical.
* ``finder``: ``find_lr`` with and without AMP; afterwards the model's weights and
  gradients, the optimizer state and LRs, the GradScaler's state and every RNG (Python,
  NumPy, torch CPU and CUDA, the loader's generator) must equal what they were before.
* ``memory``: a real limit (``torch.cuda.set_per_process_memory_fraction``), the memory
  probe's batch, then an independent search (fresh model, 3 training steps per try,
  doubling then bisection on real OOMs) for the largest batch that really fits. PASS when
  the probed batch trains and is >= 90% of the largest that fits.
* ``ddp``: ``torchrun --standalone --nproc_per_node=1 -m lrpilot.cli fit`` on a task with
  BatchNorm (digits-cnn): nccl, SyncBatchNorm conversion, a completed run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SECTIONS = ("fit_resume", "finder", "memory", "ddp")
GiB = 2**30


def result(section: str, status: str, reason: str) -> int:
    print(f"RESULT {section} {status} {reason}", flush=True)
    return 0 if status in ("PASS", "SKIP") else 1


def equal_states(a: object, b: object, where: str = "") -> list[str]:
    """Paths where two nested states (dicts, lists, tensors, numbers) differ bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a.cpu(), b.cpu())
        )
        return [] if ok else [where or "<tensor>"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in equal_states(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in equal_states(x, y, f"{where}[{i}]")
        ]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [where]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return [] if same else [f"{where}: {a!r} != {b!r}"]


# ------------------------------------------------------------------ fit + SIGKILL + resume
RUNNER = """
import sys, torch, lrpilot
config, out, resume, weights = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
result = lrpilot.fit(config, out, resume=resume, progress="none")
torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, weights)
print("summary", {k: result.summary.get(k) for k in ("steps_run", "optimizer_steps_skipped")})
"""


def fit_resume(device: str, work: Path) -> int:
    epochs = 12
    config = work / "fit.yaml"
    config.write_text(
        "task: mnist1d-mlp\n"
        f"device: {device}\n"
        "amp: true\n"
        f"epochs: {epochs}\n"
        "seed: 3\n"
        "checkpoint_every: 40\n"
        "optimizer: {name: adamw, lr: 3e-3}\n"
        "schedule: {name: cosine, warmup: {steps: 50}}\n"
    )
    runner = work / "runner.py"
    runner.write_text(RUNNER)
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONUNBUFFERED="1")

    def run(out: str, resume: bool) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(runner), str(config), str(work / out), "1" if resume else "0"]
        cmd.append(str(work / f"{out}{'-resumed' if resume else ''}.pt"))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        print(
            f"  {out}{' --resume' if resume else ''}: rc={proc.returncode} {proc.stdout.strip()[-200:]}"
        )
        if proc.returncode != 0:
            print("  stderr:", proc.stderr.strip()[-1500:])
        return proc

    t0 = time.perf_counter()
    for name in ("A", "B"):
        if run(name, False).returncode != 0:
            return result("fit_resume", "FAIL", f"uninterrupted run {name} failed")
    print(f"  two uninterrupted runs: {time.perf_counter() - t0:.1f} s")
    # The killed run: SIGKILL once its first mid-run checkpoint is on disk.
    out = work / "K"
    cmd = [sys.executable, str(runner), str(config), str(out), "0", str(work / "K-killed.pt")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    latest = out / "checkpoints" / "latest.pt"
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)  # land somewhere inside the run, not at the checkpoint
    killed_at = None
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lines = (
            (out / "metrics.jsonl").read_text().splitlines()
            if (out / "metrics.jsonl").exists()
            else []
        )
        killed_at = next(
            (
                json.loads(line).get("step")
                for line in reversed(lines)
                if line.strip().startswith("{") and line.strip().endswith("}")
            ),
            None,
        )
    if killed_at is None or (out / "summary.json").exists():
        print(proc.stdout.read().decode()[-1500:] if proc.stdout else "")
        return result("fit_resume", "FAIL", "the run ended before the SIGKILL (no mid-run kill)")
    total = epochs * 63
    print(f"  SIGKILL at about step {killed_at} of {total}")
    if run("K", True).returncode != 0:
        return result("fit_resume", "FAIL", "resume after SIGKILL failed")
    a, b, k = (torch.load(work / n, weights_only=True) for n in ("A.pt", "B.pt", "K-resumed.pt"))
    control = equal_states(a, b)
    resumed = equal_states(a, k)
    summary = json.loads((work / "K" / "summary.json").read_text())
    print(f"  fp16 steps skipped by the GradScaler: {summary.get('optimizer_steps_skipped')}")
    print(f"  uninterrupted A vs B: {'identical' if not control else 'DIFFER ' + str(control[:3])}")
    print(f"  A vs killed+resumed: {'identical' if not resumed else 'DIFFER ' + str(resumed[:3])}")
    if control:
        return result(
            "fit_resume", "FAIL", "two uninterrupted runs differ (non-deterministic kernels)"
        )
    if resumed:
        return result("fit_resume", "FAIL", f"resumed weights differ: {resumed[:3]}")
    kind = "fp16+GradScaler" if device == "cuda" else "bf16 (CPU)"
    return result(
        "fit_resume", "PASS", f"{kind}: SIGKILL at step {killed_at}/{total}, resume bit-identical"
    )


# ---------------------------------------------------------------------------- finder
def rng_state(loader_gen: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def finder(device: str, work: Path) -> int:
    from torch.utils.data import DataLoader

    import lrpilot
    from lrpilot.tasks import get_task

    task = get_task("mnist1d-cnn")
    failures = []
    for amp in (False, True):
        torch.manual_seed(0)
        model = task.build_model().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        # a real state to restore: one step (momentum buffers, gradients)
        x, y = (t.to(device) for t in next(iter(DataLoader(task.train_set, batch_size=8))))
        task.loss_fn(model(x), y).backward()
        optimizer.step()
        scaler = torch.amp.GradScaler(device, init_scale=2.0**12) if amp else None
        gen = torch.Generator().manual_seed(1)
        loader = DataLoader(
            task.train_set, batch_size=8, shuffle=True, drop_last=True, generator=gen
        )
        random.seed(5)
        np.random.seed(5)
        before = {
            "model": copy.deepcopy(model.state_dict()),
            "grads": [p.grad.clone() for p in model.parameters()],
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "lrs": [g["lr"] for g in optimizer.param_groups],
            "scaler": copy.deepcopy(scaler.state_dict()) if scaler else None,
            "rng": rng_state(gen),
        }
        t0 = time.perf_counter()
        res = lrpilot.find_lr(
            model,
            optimizer,
            task.loss_fn,
            loader,
            steps=250,
            amp=amp,
            scaler=scaler,
            batch_ratio=8,
        )
        seconds = time.perf_counter() - t0
        after = {
            "model": model.state_dict(),
            "grads": [p.grad for p in model.parameters()],
            "optimizer": optimizer.state_dict(),
            "lrs": [g["lr"] for g in optimizer.param_groups],
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rng_state(gen),
        }
        diff = equal_states(before, after)
        on = next(model.parameters()).device
        print(
            f"  amp={amp}: verdict {res.verdict}, lr_unstable {res.lr_unstable}, suggestion "
            f"{res.suggestion}, skipped steps {getattr(res, 'skipped_steps', '?')}, "
            f"{seconds:.1f} s; model on {on}; restored: {'everything' if not diff else diff[:4]}"
        )
        if diff:
            failures.append(f"amp={amp}: {diff[:3]}")
        if str(on.type) != torch.device(device).type:
            failures.append(f"amp={amp}: model moved to {on}")
    if failures:
        return result("finder", "FAIL", "; ".join(failures))
    return result(
        "finder",
        "PASS",
        f"{device}, amp off and on: model, grads, optimizer, scaler, RNGs restored",
    )


# ---------------------------------------------------------------------------- memory
class ActivationNet(nn.Module):
    """A CNN whose activations dominate memory (several MiB per 64x64 sample in training)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def trains(b: int, device: str, steps: int = 3) -> bool:
    """Independent reference: does a fresh model train ``steps`` steps at batch ``b``?"""
    model = opt = x = y = None
    try:
        torch.manual_seed(0)
        model = ActivationNet().to(device)
        opt = torch.optim.AdamW(model.parameters())
        x = torch.randn(b, 3, 64, 64, device=device)
        y = torch.randint(0, 10, (b,), device=device)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        torch.cuda.synchronize()
        return True
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or cuDNN's own OOM text
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            return False
        raise
    finally:
        del model, opt, x, y
        torch.cuda.empty_cache()


def largest_that_trains(device: str, start: int) -> tuple[int, int]:
    """Doubling then bisection on real OOMs; returns (largest batch, tries)."""
    tries = 0
    lo, hi = 0, start
    while True:
        tries += 1
        if not trains(hi, device):
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tries += 1
        if trains(mid, device):
            lo = mid
        else:
            hi = mid
    return lo, tries


def memory(device: str, work: Path) -> int:
    from lrpilot.batch import probe_memory

    if device != "cuda":
        return result(
            "memory", "SKIP", "the CUDA probe needs a GPU (the CPU probe is tested in tests/)"
        )
    limit = 4 * GiB
    total = torch.cuda.get_device_properties(0).total_memory
    # cuBLAS/cuBLASLt keep their workspaces (about 65 MiB on an H200) in PyTorch's caching
    # allocator from the first matrix product on: "everything freed" means back to this level
    warm = nn.Linear(8, 8).cuda()
    warm(torch.ones(4, 8, device="cuda")).sum().backward()
    del warm
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(limit / total)
    try:
        t0 = time.perf_counter()
        probe = probe_memory(
            ActivationNet(),
            (torch.randn(3, 64, 64), torch.tensor(1)),
            device="cuda",
            loss_fn=nn.functional.cross_entropy,
            optimizer="adamw",
            max_batch=1 << 16,
        )
        probe_s = time.perf_counter() - t0
        print(
            f"  limit {limit / GiB:.1f} GiB of {total / GiB:.1f} GiB (set_per_process_memory_fraction)"
        )
        print(
            f"  probe: batch {probe.batch_size} in {probe_s:.1f} s, {len(probe.points)} tries, "
            f"peak {probe.memory_bytes / GiB:.2f} GiB; points {list(probe.points)[:12]}"
        )
        for line in probe.reasons:
            print(f"    {line}")
        left = torch.cuda.memory_allocated() - baseline
        fits = trains(probe.batch_size, "cuda", steps=5)
        t0 = time.perf_counter()
        largest, tries = largest_that_trains("cuda", 64)
        print(
            f"  independent search: largest batch that trains 3 steps: {largest} "
            f"({tries} tries, {time.perf_counter() - t0:.1f} s)"
        )
        print(
            f"  probed batch trains 5 steps: {fits}; left allocated by the probe: {left / 2**20:.1f} MiB"
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    ratio = probe.batch_size / max(largest, 1)
    detail = f"probe {probe.batch_size} vs largest {largest} (ratio {ratio:.3f})"
    if not fits:
        return result("memory", "FAIL", f"the probed batch runs out of memory: {detail}")
    if ratio < 0.9 or left > 2**20:
        return result("memory", "FAIL", f"{detail}; {left / 2**20:.0f} MiB left allocated")
    return result("memory", "PASS", detail)


# ------------------------------------------------------------------------------- ddp
DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch import nn
device = sys.argv[1]
use_cuda = device == "cuda"
if use_cuda:
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group(backend="nccl" if use_cuda else "gloo")
print("backend", dist.get_backend(), "world", dist.get_world_size())
dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
torch.manual_seed(0)
make = lambda: nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 6 * 6, 10))
plain = make().to(dev)
ddp_model = make().to(dev)
ddp_model.load_state_dict(plain.state_dict())
try:
    from lrpilot._distributed import current_env, wrap_ddp
    ddp_model = wrap_ddp(ddp_model, dev, current_env())
    how = "lrpilot._distributed.wrap_ddp"
except ImportError:
    from torch.nn.parallel import DistributedDataParallel
    if use_cuda:
        ddp_model = nn.SyncBatchNorm.convert_sync_batchnorm(ddp_model)
    ddp_model = DistributedDataParallel(ddp_model, device_ids=[dev.index] if use_cuda else None)
    how = "torch (wrap_ddp not found)"
sync = sum(isinstance(m, nn.SyncBatchNorm) for m in ddp_model.modules())
opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, ddp_model)]
x, y = torch.randn(32, 1, 8, 8, device=dev), torch.randint(0, 10, (32,), device=dev)
for _ in range(3):
    for m, o in zip((plain, ddp_model), opts):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
inner = ddp_model.module
diff = max((a - b).abs().max().item() for a, b in zip(plain.state_dict().values(),
                                                       inner.state_dict().values()))
print(f"wrapped by {how}; SyncBatchNorm layers {sync}; max |plain - ddp| after 3 steps {diff:.3g}")
dist.destroy_process_group()
sys.exit(0 if (sync > 0 or not use_cuda) and diff < 1e-4 else 3)
"""


def ddp(device: str, work: Path) -> int:
    """(a) ``lrpilot fit`` under torchrun; (b) nccl + SyncBatchNorm + DDP under torchrun."""
    out = work / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    cmd = [
        *launcher,
        "-m",
        "lrpilot.cli",
        "fit",
        "--task",
        "digits-cnn",
        "--out",
        str(out),
        "--set",
        "epochs=2",
        "--set",
        f"device={device}",
        "--progress",
        "none",
    ]
    print("  (a) $ torchrun", " ".join(cmd[len(launcher) :]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    text = proc.stdout + proc.stderr
    for line in [ln for ln in text.splitlines() if "SyncBatchNorm" in ln or "rror" in ln][:6]:
        print("     ", line[:200])
    summary = out / "summary.json"
    if proc.returncode != 0 or not summary.exists():
        print(text[-2000:])
        return result("ddp", "FAIL", f"lrpilot fit under torchrun: exit {proc.returncode}")
    data = json.loads(summary.read_text())
    acc = (data.get("final") or {}).get("val_accuracy")
    converted = "converted to SyncBatchNorm" in text
    world = data.get("world_size")
    print(
        f"      completed: val_accuracy {acc}, steps {data.get('steps_run')}, world_size "
        f"{world}, SyncBatchNorm conversion announced: {converted}"
    )
    script = work / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    print("  (b) $ torchrun ddp_check.py (process group, DDP and SyncBatchNorm on one GPU)")
    proc = subprocess.run(
        [*launcher, str(script), device], capture_output=True, text=True, timeout=240, env=env
    )
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-6:]:
        print("     ", line[:200])
    if proc.returncode != 0:
        return result("ddp", "FAIL", f"nccl/SyncBatchNorm check exit {proc.returncode}")
    backend = "nccl + SyncBatchNorm" if device == "cuda" else "gloo (CPU: BatchNorm kept)"
    note = (
        ""
        if converted
        else "; note: lrpilot fit ran single-process (WORLD_SIZE=1 starts no process group)"
    )
    return result(
        "ddp",
        "PASS",
        f"torchrun 1 process: fit completed, {backend} trains like the plain model{note}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=SECTIONS)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        return result(args.section, "SKIP", "no CUDA device on this machine")
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"gpu_check_{args.section}_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return globals()[args.section](args.device, work)
    except Exception as exc:  # a section that breaks reports it and the script goes on
        import traceback

        traceback.print_exc()
        return result(
            args.section, "FAIL", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
