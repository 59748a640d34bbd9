"""``lrpilot find``: run the LR range test on a task and recommend a peak learning rate.

The task's defaults give the optimizer settings (those ``lrpilot fit`` trains with) and the
training batch size; the probing protocol (``lrpilot.finder.protocol``) gives the probe
batch (training batch // 8), the number of steps (half an epoch of samples, at least 20
steps on a small training set) and the LR range. The suggestion is the peak LR for the
``--schedule`` (one-cycle or warmup+cosine) and the optimizer at the training batch size
(``lrpilot.finder.policy``); the work is :func:`lrpilot.finder.find_for_task`.

``--probe-batch`` and ``--budget-epochs`` override the protocol (for a sweep whose verdict is
``noisy``): the rule then uses the ratio training batch / probe batch, with which it was not
calibrated (``bench/results/finder_decision_history.md``).
"""

from __future__ import annotations

import argparse
import json

from lrpilot.cli._checks import check_png, int_flag
from lrpilot.cli._flags import as_flags, dashed
from lrpilot.errors import ConfigError

_FLAGS = dashed("batch_size", "probe_batch", "budget_epochs", "seed", "device", "repeats")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "find",
        help="LR range test: where training becomes unstable and the peak LR to use",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--task", required=True, help="built-in task name or module:function")
    p.add_argument("--optimizer", default=None, help="sgd, adamw or adam (default: task's)")
    p.add_argument(
        "--batch-size", type=int_flag("--batch-size"), default=None, help="training batch (task's)"
    )
    p.add_argument("--schedule", default="one_cycle", help="one_cycle (default) or cosine")
    p.add_argument(
        "--probe-batch",
        type=int_flag("--probe-batch"),
        default=None,
        metavar="N",
        help="sweep batch",
    )
    p.add_argument("--budget-epochs", type=float, default=None, metavar="E", help="(0, 10]")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--seed", type=int_flag("--seed"), default=0, help="seed (model, batches)")
    p.add_argument(
        "--repeats",
        type=int_flag("--repeats", low=1, high=10),
        default=1,
        metavar="N",
        help="sweeps on later batches, pooled; says whether they agree (default 1, max 10)",
    )
    p.add_argument("--png", default=None, help="write the plot to this PNG file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lrpilot.finder import find_for_task

    if args.png is not None:
        check_png(args.png)  # before any work: nothing is created for a bad path
    try:
        found = find_for_task(
            args.task,
            optimizer=args.optimizer,
            batch_size=args.batch_size,
            schedule=args.schedule,
            probe_batch=args.probe_batch,
            budget_epochs=args.budget_epochs,
            seed=args.seed,
            device=args.device,
            amp=args.amp,
            repeats=args.repeats,
        )
    except ConfigError as exc:  # name the flags, not the function's arguments
        raise ConfigError(as_flags(str(exc), _FLAGS)) from None
    if args.png:
        from lrpilot.finder.plot import plot_result

        plot_result(found.result, args.png)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
        return 0
    from rich.console import Console

    console = Console()
    for line in found.summary_lines():
        console.print(line, markup=False, highlight=False)
    if args.png:
        console.print(f"plot written to {args.png}", markup=False, highlight=False)
    return 0
