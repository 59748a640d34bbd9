"""``lrpilot batch``: what fits, what is useful, and the recommended batch plan.

Measures the largest per-device batch, probes the gradient noise scale at initialisation and
plans per-device batch, accumulation and learning rate for a nominal batch on N processes,
with the reasons in words (:func:`lrpilot.batch.recommend_batch`).
"""

from __future__ import annotations

import argparse
import json

from lrpilot.cli._flags import as_flags, dashed
from lrpilot.errors import ConfigError

GiB = 2**30
_ARGS: tuple[str, ...] = (
    "device",
    "nominal",
    "processes",
    "lr",
    "base_batch",
    "rule",
    "conservative",
)
_ARGS += ("max_batch", "noise_small", "noise_big", "noise_measurements", "seed")
_FLAGS = {"budget_gib": "--budget", **dashed(*_ARGS)}  # recommend_batch's names -> flags
_OPTIONS = [  # flag, type, default, help
    ("--budget", float, None, "memory budget in GiB (default: 0.9 x free memory)"),
    ("--nominal", int, None, "nominal (effective) batch; default: the task's batch_size"),
    ("--processes", int, 1, "number of processes (torchrun --nproc_per_node)"),
    ("--lr", float, None, "learning rate tuned at --base-batch; default: the task's"),
    ("--base-batch", int, None, "batch the LR was tuned at; default: the task's batch_size"),
    ("--rule", str, None, "LR scaling rule (linear, sqrt, none); default: by optimizer"),
    ("--conservative", float, 0.0, "trim a raised LR by this fraction (e.g. 0.1)"),
    ("--max-batch", int, None, "upper limit for the memory probe; default: training set"),
    ("--noise-small", int, 8, "small batch of the noise-scale probe (default 8)"),
    ("--noise-big", int, 256, "big batch of the noise-scale probe (default 256)"),
    ("--noise-measurements", int, 16, "big batches drawn by the noise probe (default 16)"),
    ("--seed", int, 0, "seed of the model initialisation and data draws"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="memory limit, gradient noise scale and batch/accumulation/LR recommendation",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--task", required=True, help="built-in task name or module:function")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    for flag, kind, default, text in _OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def _recommend(args: argparse.Namespace, status=None):  # type: ignore[no-untyped-def]
    from lrpilot.batch import recommend_batch

    kwargs = {name: getattr(args, name) for name in _ARGS}
    try:
        return recommend_batch(args.task, budget_gib=args.budget, status=status, **kwargs)
    except ConfigError as exc:  # name the flags, not the function's arguments
        raise ConfigError(as_flags(str(exc), _FLAGS)) from None


def run(args: argparse.Namespace) -> int:
    if args.json:
        from lrpilot.finder.result import json_safe

        print(json.dumps(json_safe(_recommend(args).to_dict()), indent=2, allow_nan=False))
        return 0
    from rich.console import Console

    with Console(stderr=True).status("lrpilot batch: starting") as spinner:
        rec = _recommend(args, lambda text: spinner.update(f"lrpilot batch: {text}"))
    mem, noise, plan = rec.memory, rec.noise, rec.plan
    capped = " (capped; not a memory limit)" if mem.capped else ""
    lr = "-" if plan.lr is None else f"{plan.lr:.6g}"
    print(f"task {rec.task} on {rec.device} ({rec.optimizer})")
    print(
        f"  memory limit:   {mem.batch_size} samples per device{capped}, "
        f"{mem.memory_bytes / GiB:.3f} GiB of a {mem.budget_bytes / GiB:.3f} GiB budget"
    )
    print(f"  noise scale:    B_simple ≈ {noise.b_simple:.1f} ± {noise.stderr:.1f}")
    print(
        f"  recommendation: {plan.per_device} per device x {plan.processes} process(es) "
        f"x accumulate {plan.accumulate} = batch {plan.effective}; "
        f"lr {lr} ({plan.rule} rule from batch {plan.base_batch})"
    )
    print("why:")
    print("\n".join([*(f"  - {r}" for r in rec.reasons), *(f"  ! {w}" for w in rec.warnings)]))
    if rec.config:
        import yaml

        print("lrpilot fit config (add to your YAML; every key is one fit accepts):")
        text = yaml.safe_dump(rec.config, sort_keys=False, default_flow_style=False)
        print("\n".join(f"  {line}" for line in text.splitlines()))
    if plan.processes > 1:
        print(f"  (run it with torchrun --nproc_per_node {plan.processes})")
    return 0
