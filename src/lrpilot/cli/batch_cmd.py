"""``lrpilot batch``: what fits, what is useful, and the recommended batch plan.

Measures the largest per-device batch (:func:`lrpilot.batch.probe_memory`), probes the
gradient noise scale at initialisation (:func:`lrpilot.batch.noise_scale`), and plans
per-device batch, accumulation and learning rate for a nominal batch on N processes
(:func:`lrpilot.batch.plan_accumulation`), with the reasons in words.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

GiB = 2**30


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="memory limit, gradient noise scale and batch/accumulation/LR recommendation",
        description=(
            "Probe the largest per-device batch that fits, the gradient noise scale "
            "B_simple = tr(Σ)/|G|², and plan per-device batch, accumulation and learning rate."
        ),
    )
    parser.add_argument("--task", required=True, help="built-in task name or module:function")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="memory budget in GB (GiB): CUDA peak allocated, CPU peak resident set of the "
        "process; default: 0.9 x free device memory / this RSS + 0.9 x available memory",
    )
    parser.add_argument(
        "--nominal",
        type=int,
        default=None,
        help="nominal (effective) batch; default: the task's batch_size",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="number of processes (torchrun --nproc_per_node)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate tuned at --base-batch; default: the task's",
    )
    parser.add_argument(
        "--base-batch",
        type=int,
        default=None,
        help="batch the learning rate was tuned at; default: the task's batch_size",
    )
    parser.add_argument(
        "--rule",
        default=None,
        help="LR scaling rule (linear, sqrt, none); default: linear for SGD, sqrt for Adam",
    )
    parser.add_argument(
        "--conservative",
        type=float,
        default=0.0,
        help="trim a raised LR by this fraction (e.g. 0.1)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="upper limit for the memory probe; default: the training-set size",
    )
    parser.add_argument(
        "--noise-small",
        type=int,
        default=8,
        help="small batch of the noise-scale probe (default 8)",
    )
    parser.add_argument(
        "--noise-big",
        type=int,
        default=256,
        help="big batch of the noise-scale probe (default 256)",
    )
    parser.add_argument(
        "--noise-measurements",
        type=int,
        default=16,
        help="big batches drawn by the noise probe (default 16)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the model initialisation and data draws"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def _validate(args: argparse.Namespace) -> None:
    from lrpilot.batch.scaling import get_rule
    from lrpilot.errors import ConfigError, check_int, check_range

    if args.budget is not None:
        check_range("--budget", args.budget, low=0, low_inclusive=False)
    if args.nominal is not None:
        check_int("--nominal", args.nominal, low=1)
    check_int("--processes", args.processes, low=1)
    if args.lr is not None:
        check_range("--lr", args.lr, low=0, low_inclusive=False)
    if args.base_batch is not None:
        check_int("--base-batch", args.base_batch, low=1)
    if args.rule is not None:
        get_rule(args.rule)
    check_range("--conservative", args.conservative, low=0, high=1, high_inclusive=False)
    if args.max_batch is not None:
        check_int("--max-batch", args.max_batch, low=1)
    check_int("--noise-small", args.noise_small, low=1)
    check_int("--noise-big", args.noise_big, low=2)
    check_int("--noise-measurements", args.noise_measurements, low=1)
    if args.noise_big % args.noise_small or args.noise_big <= args.noise_small:
        raise ConfigError(
            f"--noise-big={args.noise_big} must be a multiple of --noise-small={args.noise_small} and larger"
        )
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        raise ConfigError(f"--device={args.device!r}; allowed: cpu, cuda, cuda:N")


def recommend(args: argparse.Namespace, status=None) -> dict:  # type: ignore[no-untyped-def]
    """Run the probes and build the recommendation (plain data)."""
    from lrpilot.batch import (
        has_batchnorm,
        noise_scale,
        plan_accumulation,
        probe_memory,
        rule_for_optimizer,
    )
    from lrpilot.errors import ConfigError
    from lrpilot.tasks import get_task

    task = get_task(args.task)
    defaults = task.defaults
    opt = dict(defaults.get("optimizer", {}))
    opt_name = str(opt.get("name", "sgd"))
    base_batch = args.base_batch or int(defaults.get("batch_size", 64))
    nominal = args.nominal or base_batch
    lr = args.lr if args.lr is not None else opt.get("lr")
    rule = args.rule or rule_for_optimizer(opt_name)
    budget = None if args.budget is None else args.budget * GiB

    if status:
        status("probing memory")

    def tried(b: int, added: int) -> None:
        if status:
            status(f"probing memory: batch {b} adds {added / 2**20:.0f} MiB at its peak")

    mem = probe_memory(
        task,
        device=args.device,
        budget=budget,
        max_batch=args.max_batch,
        optimizer=opt_name,
        progress=tried if args.device == "cpu" else None,
    )
    big = min(args.noise_big, len(task.train_set) - len(task.train_set) % args.noise_small)
    if big <= args.noise_small:
        raise ConfigError(
            f"the training set ({len(task.train_set)}) is too small for the noise probe"
        )
    if status:
        status("probing the gradient noise scale")
    noise = noise_scale(
        task,
        small_batch=args.noise_small,
        big_batch=big,
        measurements=args.noise_measurements,
        seed=args.seed,
        device=args.device,
    )
    import torch

    with torch.random.fork_rng(devices=[]):
        bn = has_batchnorm(task.build_model())
    plan = plan_accumulation(
        mem.batch_size,
        nominal,
        args.processes,
        lr=lr,
        base_batch=base_batch,
        rule=rule,
        conservative=args.conservative,
        batchnorm=bn,
        device=args.device,
    )
    reasons = list(mem.reasons)
    b_simple = noise.b_simple
    if math.isfinite(b_simple):
        reasons.append(
            f"gradient noise scale B_simple ≈ {b_simple:.0f} ± {noise.stderr:.0f} at initialisation "
            f"(small batch {noise.small_batch}, big batch {noise.big_batch}, "
            f"{noise.measurements} draws); it changes as training goes on (McCandlish et al. saw it "
            "grow; bench/batch_noise.py shows it falling on the MNIST-1D tasks), so follow it "
            "with noise_scale: true in lrpilot fit"
        )
        if nominal > 2 * b_simple:
            reasons.append(
                f"the nominal batch {nominal} is well above B_simple: larger batches mostly "
                "repeat the same gradient information (diminishing returns per sample)"
            )
        elif nominal < b_simple / 2:
            reasons.append(
                f"the nominal batch {nominal} is well below B_simple: a batch up to about "
                f"{b_simple:.0f} would cut the number of steps nearly in proportion, with the "
                f"learning rate scaled by the {rule!r} rule"
            )
        else:
            reasons.append(f"the nominal batch {nominal} is near B_simple: a balanced choice")
    else:
        reasons.append("the noise scale could not be estimated (|G|² estimate not positive)")
    reasons += plan.reasons
    return {
        "task": task.name,
        "device": args.device,
        "optimizer": opt_name,
        "memory": mem.to_dict(),
        "noise_scale": noise.to_dict(),
        "plan": plan.to_dict(),
        "reasons": reasons,
        "warnings": list(plan.warnings),
    }


def run(args: argparse.Namespace) -> int:
    _validate(args)
    if args.json:
        from lrpilot.finder.result import json_safe

        result = recommend(args)
        print(json.dumps(json_safe(result), indent=2, allow_nan=False))
        return 0
    from rich.console import Console

    err = Console(stderr=True)
    with err.status("lrpilot batch: starting") as spinner:
        result = recommend(args, status=lambda text: spinner.update(f"lrpilot batch: {text}"))
    mem, noise, plan = result["memory"], result["noise_scale"], result["plan"]
    out = sys.stdout
    print(f"task {result['task']} on {result['device']} ({result['optimizer']})", file=out)
    capped = " (capped; not a memory limit)" if mem["capped"] else ""
    print(
        f"  memory limit:   {mem['batch_size']} samples per device{capped}, "
        f"{mem['memory_bytes'] / GiB:.3f} GiB of a {mem['budget_bytes'] / GiB:.3f} GiB budget",
        file=out,
    )
    print(f"  noise scale:    B_simple ≈ {noise['b_simple']:.1f} ± {noise['stderr']:.1f}", file=out)
    lr = "-" if plan["lr"] is None else f"{plan['lr']:.6g}"
    print(
        f"  recommendation: {plan['per_device']} per device x {plan['processes']} process(es) "
        f"x accumulate {plan['accumulate']} = batch {plan['effective']}; "
        f"lr {lr} ({plan['rule']} rule from batch {plan['base_batch']})",
        file=out,
    )
    print("why:", file=out)
    for reason in result["reasons"]:
        print(f"  - {reason}", file=out)
    for warning in result["warnings"]:
        print(f"  ! {warning}", file=out)
    return 0
