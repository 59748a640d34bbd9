"""``lrpilot find``: run the LR range test on a task and recommend a peak learning rate.

The task's defaults give the optimizer settings and the training batch size; the probing
protocol (``lrpilot.finder.protocol``) gives the probe batch (training batch // 8), the
number of steps (half an epoch of samples, at least 20 steps on a small training set) and
the LR range. The suggestion is the peak LR
for the ``--schedule`` (one-cycle or warmup+cosine) and the optimizer at the training batch
size (``lrpilot.finder.decision``: the instability point is carried from the probe batch to
the training batch linearly for SGD and by the square root for AdamW).

``--probe-batch`` and ``--budget-epochs`` override the protocol (for a sweep whose verdict is
``noisy``): the rule then uses the ratio training batch / probe batch, with which it was not
calibrated. Measured on the one task with noisy sweeps (``bench/heldout_tasks.py``,
synth-mlp-ln): probe batch 16 instead of 8 gave usable curves on 5 of 5 seeds; with AdamW
the one-cycle suggestion matched the grid-best accuracy, with SGD every suggestion was about
15x below the best LR (2.4 points below its accuracy).
"""

from __future__ import annotations

import argparse
import json
import math

from lrpilot.cli.checks import check_png, int_flag
from lrpilot.errors import ConfigError, check_int

OPTIMIZERS = ("sgd", "adamw")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "find",
        help="LR range test: where training becomes unstable and the peak LR to use",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("--task", required=True, help="built-in task name or module:function")
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None, help="default: the task's optimizer"
    )
    parser.add_argument(
        "--batch-size",
        type=int_flag("--batch-size"),
        default=None,
        help="training batch size (default: the task's)",
    )
    parser.add_argument(
        "--schedule",
        default="one_cycle",
        help="intended schedule the peak LR is for: one_cycle or cosine (default one_cycle)",
    )
    parser.add_argument(
        "--probe-batch",
        type=int_flag("--probe-batch"),
        default=None,
        metavar="N",
        help="batch of the sweep (default: training batch // 8, the calibrated protocol; "
        "larger: less noise, fewer tested LRs)",
    )
    parser.add_argument(
        "--budget-epochs",
        type=float,
        default=None,
        metavar="E",
        help="epochs of compute for the sweep, in (0, 10] (default 0.5, raised on a small "
        "training set to give the sweep 20 steps)",
    )
    parser.add_argument(
        "--seed",
        type=int_flag("--seed"),
        default=0,
        help="seed for the model and batches",
    )
    parser.add_argument("--png", default=None, help="write the plot to this PNG file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _make_optimizer(name: str, params, settings: dict):
    import torch

    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=float(settings.get("lr", 0.1)),
            momentum=float(settings.get("momentum", 0.9)),
            weight_decay=float(settings.get("weight_decay", 0.0)),
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=float(settings.get("lr", 1e-3)),
            weight_decay=float(settings.get("weight_decay", 1e-2)),
        )
    raise ConfigError(f"optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}")


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from lrpilot.finder import find_lr
    from lrpilot.finder.decision import schedule_fraction
    from lrpilot.finder.protocol import (
        MAX_BUDGET_EPOCHS,
        MIN_SWEEP_STEPS,
        default_probe_batch,
        probe_plan,
    )
    from lrpilot.tasks import get_task

    schedule_fraction(args.schedule)  # validate before any work
    check_int("--seed", args.seed, low=0, high=2**63 - 1)
    if args.png is not None:
        check_png(args.png)
    task = get_task(args.task)
    defaults = dict(task.defaults)
    opt_settings = dict(defaults.get("optimizer", {}))
    opt_name = args.optimizer or str(opt_settings.get("name", "sgd")).lower()
    if opt_name != str(opt_settings.get("name", opt_name)).lower():
        opt_settings = {}  # another family than the task's: its defaults do not apply
    if opt_name not in OPTIMIZERS:
        raise ConfigError(f"optimizer={opt_name!r} is not one of {', '.join(OPTIMIZERS)}")
    batch_size = args.batch_size if args.batch_size is not None else defaults.get("batch_size", 64)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size!r} is out of range; allowed: [1, inf]")
    if batch_size > len(task.train_set):
        raise ConfigError(
            f"--batch-size={batch_size} is larger than the training set ({len(task.train_set)})"
        )
    try:  # probe_plan validates --probe-batch and --budget-epochs
        plan = probe_plan(
            len(task.train_set),
            batch_size,
            budget_epochs=args.budget_epochs,
            probe_batch=args.probe_batch,
        )
    except ConfigError as exc:  # name the flags, not the function's arguments
        message = str(exc).replace("budget_epochs", "--budget-epochs")
        raise ConfigError(message.replace("probe_batch", "--probe-batch")) from None
    budget_epochs = plan.samples_budget / len(task.train_set)

    torch.manual_seed(args.seed)
    model = task.build_model()
    optimizer = _make_optimizer(opt_name, model.parameters(), opt_settings)
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        task.train_set,
        batch_size=plan.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
    )
    result = find_lr(
        model,
        optimizer,
        task.loss_fn,
        loader,
        start_lr=plan.start_lr,
        end_lr=plan.end_lr,
        steps=plan.steps,
        schedule=args.schedule,
        batch_ratio=batch_size / plan.batch_size,
    )
    if args.png:
        from lrpilot.finder.plot import plot_result

        plot_result(result, args.png)
    payload = result.to_dict()
    payload.update(
        {
            "task": task.name,
            "optimizer": opt_name,
            "batch_size": batch_size,
            "probe_batch_size": plan.batch_size,
            "epochs_of_compute": result.samples / len(task.train_set),
            "budget_raised": plan.raised,
        }
    )
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    from rich.console import Console

    console = Console()
    if plan.raised:
        console.print(
            f"note: half an epoch of {len(task.train_set)} samples is too few for a sweep of "
            f"{MIN_SWEEP_STEPS} steps of batch {plan.batch_size}; this one uses "
            f"{plan.samples_budget} samples ({budget_epochs:.2f} epochs)"
        )
    compute = (
        f"{result.samples} samples = {payload['epochs_of_compute']:.2f} epoch at probe batch "
        f"{plan.batch_size}"
    )
    if result.verdict != "ok":
        console.print(
            f"[bold]{task.name}[/]: no suggestion, verdict [red]{result.verdict}[/]: "
            f"{result.message} ({compute})"
        )
        larger = min(2 * plan.batch_size, batch_size)
        if result.verdict == "noisy" and larger > plan.batch_size:
            budget = min(math.ceil(20 * budget_epochs) / 10, MAX_BUDGET_EPOCHS)
            console.print(
                f"hint: --probe-batch {larger} lowers the noise (add --budget-epochs "
                f"{budget:g} to keep the number of tested LRs); the rule was calibrated at "
                f"probe batch {default_probe_batch(batch_size)}, so check its suggestion with "
                f"a short run"
            )
    else:
        lo, hi = result.suggestion_interval or (math.nan, math.nan)
        console.print(
            f"[bold]{task.name}[/] ({opt_name}, batch {batch_size}): training becomes "
            f"unstable at lr ~ {result.lr_unstable:.3g}; suggested peak LR for "
            f"{result.schedule}: [green]{result.suggestion:.3g}[/] "
            f"(interval {lo:.3g}..{hi:.3g}, confidence {result.confidence}; {compute})"
        )
    if args.png:
        console.print(f"plot written to {args.png}")
    return 0
