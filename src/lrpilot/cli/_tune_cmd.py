"""``lrpilot tune CONFIG.yaml --space SPACE.yaml --trials N``: hyper-parameter search whose
trials are ordinary ``lrpilot fit`` runs (see :mod:`lrpilot.search`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError, check_int, check_seed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="hyper-parameter search (Optuna or Ray Tune); each trial is a `lrpilot fit` run",
        description=(
            "Search the dotted config keys of SPACE.yaml around CONFIG.yaml. Each trial is "
            "a `lrpilot fit` run directory under the study directory, trained in a child "
            "process; running the same command again resumes the study up to --trials."
        ),
    )
    parser.add_argument("config", help="base `lrpilot fit` config (YAML)")
    parser.add_argument("--space", required=True, help="search space YAML (dotted config keys)")
    parser.add_argument("--trials", type=int, required=True, help="finished trials wanted")
    parser.add_argument("--workers", type=int, default=1, help="parallel trials on this machine")
    parser.add_argument(
        "--storage",
        default=None,
        help="SQLAlchemy URL (e.g. postgresql://...) or journal file (*.log); default: "
        "OUT/study.db with one worker, OUT/journal.log with several",
    )
    parser.add_argument("--study", default=None, help="study name (default: the config's stem)")
    _add_optuna_options(parser)
    parser.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument("--out", default=None, help="study directory (default runs/tune-STUDY)")
    parser.add_argument(
        "--metric", default="val_loss", help="epoch metric to optimise (default val_loss)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=None,
        help="seconds between trial heartbeats on an RDB storage; a trial silent for 3x "
        "this is failed and retried (default 10)",
    )
    parser.add_argument(
        "--launcher",
        default=None,
        help="command that runs a trial's `-m lrpilot.cli fit ...` (default: this Python; "
        "e.g. 'torchrun --nproc-per-node 2' for one DDP job per trial)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _add_optuna_options(parser: argparse.ArgumentParser) -> None:
    """The Optuna backend's sampler, pruner and seed-trial options."""
    from lrpilot.search._study import PRUNERS, SAMPLERS

    parser.add_argument(
        "--sampler", choices=SAMPLERS, default=None, help="Optuna sampler (default tpe)"
    )
    parser.add_argument(
        "--pruner", choices=PRUNERS, default=None, help="Optuna pruner (default median)"
    )
    parser.add_argument(
        "--sampler-startup",
        type=int,
        default=None,
        help="tpe/cmaes: random trials before the sampler's model is used (Optuna's default: "
        "10 for tpe, 1 for cmaes)",
    )
    parser.add_argument(
        "--prune-warmup",
        type=int,
        default=None,
        help="epochs every trial trains before it may be pruned (median: n_warmup_steps; "
        "hyperband: min_resource); 1..epochs-1, default 0 (median) / 1 (hyperband)",
    )
    parser.add_argument(
        "--prune-startup",
        type=int,
        default=None,
        help="median pruner: completed trials before any pruning (default: 5, or a quarter "
        "of --trials when smaller, at least 1)",
    )
    parser.add_argument(
        "--seed-trial",
        choices=("finder",),
        default=None,
        help="finder: with optimizer.lr: auto_range, the study's first trial is the base "
        "config at the finder's suggested LR (other searched keys at their base values)",
    )


def _check_options(args: argparse.Namespace) -> None:
    """Options that contradict the backend, sampler or pruner raise; the Optuna defaults
    are filled in (sampler tpe, pruner median, heartbeat 10 s)."""
    optuna_only = {
        "--storage": args.storage,
        "--sampler": args.sampler,
        "--pruner": args.pruner,
        "--heartbeat": args.heartbeat,
        "--prune-warmup": args.prune_warmup,
        "--prune-startup": args.prune_startup,
        "--sampler-startup": args.sampler_startup,
        "--seed-trial": args.seed_trial,
    }
    if args.backend == "ray":
        given = [name for name, value in optuna_only.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply to --backend optuna; Ray Tune uses its own "
                "experiment directory and the ASHA scheduler"
            )
    elif args.ray_address is not None:
        raise ConfigError("--ray-address applies to --backend ray")
    args.sampler = args.sampler or "tpe"
    args.pruner = args.pruner or "median"
    args.heartbeat = 10 if args.heartbeat is None else args.heartbeat
    check_int("--trials", args.trials, low=1)
    check_int("--workers", args.workers, low=1)
    check_int("--heartbeat", args.heartbeat, low=1)
    check_seed(args.seed, "--seed", high=2**32 - 1)  # the samplers' numpy seeds
    if args.pruner == "none" and args.prune_warmup is not None:
        raise ConfigError("--prune-warmup applies to --pruner median or hyperband")
    if args.pruner != "median" and args.prune_startup is not None:
        raise ConfigError(f"--prune-startup applies to --pruner median, not {args.pruner}")
    if args.prune_startup is not None:
        check_int("--prune-startup", args.prune_startup, low=0)
    if args.sampler_startup is not None:
        if args.sampler == "random":
            raise ConfigError("--sampler-startup applies to --sampler tpe or cmaes, not random")
        check_int("--sampler-startup", args.sampler_startup, low=0)


def build_spec(args: argparse.Namespace) -> Any:
    """Validate everything before anything is written; return the ``TuneSpec``."""
    from lrpilot.search._space import load_space_yaml, parse_space, validate_space
    from lrpilot.search._study import TuneSpec
    from lrpilot.tasks import get_task
    from lrpilot.tasks.base import dataset_len
    from lrpilot.train import parse_config
    from lrpilot.train._config import default_mode, monitor_names
    from lrpilot.train._sources import load_yaml

    _check_options(args)
    config = Path(args.config).resolve()
    base = load_yaml(config)
    cfg = parse_config(base)
    if args.prune_warmup is not None:
        check_int("--prune-warmup", args.prune_warmup, low=1, high=cfg.epochs - 1)
    task = get_task(cfg.task)
    names = monitor_names(task)
    if args.metric not in names:
        raise ConfigError(f"--metric {args.metric!r} is not recorded; valid: {', '.join(names)}")
    params = parse_space(load_space_yaml(args.space))
    validate_space(params, base, n_train=dataset_len(task.train_set))
    if args.seed_trial == "finder" and not any(p.kind == "auto_range" for p in params):
        raise ConfigError("--seed-trial finder needs optimizer.lr: auto_range in the space")
    study = args.study or config.stem
    if not study.strip():
        raise ConfigError("--study must not be empty")
    out = Path(args.out or Path("runs") / f"tune-{study}").resolve()
    return TuneSpec(
        config=config,
        base=base,
        params=params,
        trials=args.trials,
        out=out,
        study_name=study,
        metric=args.metric,
        direction=default_mode(args.metric),
        full_epochs=cfg.epochs,
        storage=args.storage,
        workers=args.workers,
        sampler=args.sampler,
        pruner=args.pruner,
        prune_warmup=args.prune_warmup,
        prune_startup=args.prune_startup,
        sampler_startup=args.sampler_startup,
        seed=args.seed,
        heartbeat=args.heartbeat,
        launcher=args.launcher,
        seed_trial=args.seed_trial,
    )


def run(args: argparse.Namespace) -> int:
    from lrpilot.search import require

    spec = build_spec(args)
    task = str(spec.base.get("task", ""))
    if ":" not in task:  # a built-in task: its data set is built once for all trials
        os.environ.setdefault("LRPILOT_TUNE_PRELOAD_TASK", task)
    if args.backend == "ray":
        require("ray.tune")
        require("optuna")  # the importances
        from lrpilot.search._ray_backend import run_ray

        rows = run_ray(spec, args.ray_address, quiet=args.json)
        return finish(spec, rows, storage=None, as_json=args.json)
    require("optuna")
    from lrpilot.search._report import rows_from_optuna
    from lrpilot.search._space import resolve_auto
    from lrpilot.search._study import is_journal, open_study, reclaim_orphans, storage_spec, work

    worker = int(os.environ.get("LRPILOT_TUNE_WORKER", "0"))
    study = open_study(
        spec, worker=worker, resolve=lambda p: resolve_auto(p, spec.base, spec.finder)
    )
    if args.worker:
        work(study, spec)
        return 0
    storage = storage_spec(spec)
    if is_journal(storage):
        reclaim_orphans(study)
    with _progress(spec, args.json) as advance:
        if spec.workers > 1:
            codes = run_workers_for(spec, args.space, study, advance)
            if any(codes):
                print(f"lrpilot tune: worker exit codes {codes}", file=sys.stderr)
        else:
            from lrpilot.search._study import count_finished

            work(study, spec, on_trial=lambda t: advance(count_finished(study.trials)))
    return finish(spec, rows_from_optuna(study, spec.params), storage=storage, as_json=args.json)


def run_workers_for(spec: Any, space: str, study: Any, advance: Any) -> list[int]:
    from lrpilot.search._study import run_workers

    return run_workers(spec, Path(space).resolve(), study, advance)


class _progress:  # noqa: N801 - used as a context manager
    """A rich progress bar over finished trials (on stderr); ``advance(finished)``."""

    def __init__(self, spec: Any, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.total = spec.trials
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=quiet,
        )
        self.task = self.bar.add_task(f"study {spec.study_name}: trials", total=spec.trials)

    def __enter__(self) -> Any:
        self.bar.start()
        return lambda n: self.bar.update(self.task, completed=min(n, self.total))

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def finish(spec: Any, rows: list, storage: str | None, as_json: bool) -> int:
    """Write best.yaml and history.png, print the table (or JSON)."""
    from collections import Counter

    from lrpilot.search._report import (
        best_row,
        dashboard_command,
        importances,
        plot_history,
        print_report,
        write_best_yaml,
    )

    spec.out.mkdir(parents=True, exist_ok=True)
    best = best_row(rows, spec.direction)
    best_yaml = None
    if best is not None:
        best_yaml = str(write_best_yaml(spec.base, best.params, spec.out / "best.yaml"))
    imp, note = importances(rows, spec.params, spec.direction)
    png = str(plot_history(rows, spec.direction, spec.metric, spec.out / "history.png"))
    summary = {
        "study": spec.study_name,
        "out": str(spec.out),
        "storage": storage,
        "metric": spec.metric,
        "direction": "minimize" if spec.direction == "min" else "maximize",
        "trials_wanted": spec.trials,
        "states": dict(Counter(r.state for r in rows)),
        # the auto_range finder sweep is charged to the study (full runs of the base config)
        "compute": sum(r.compute for r in rows) + float(spec.finder.get("compute", 0.0)),
        "finder": spec.finder or None,
        "best": best.to_dict() if best is not None else None,
        "best_yaml": best_yaml,
        "importances": imp,
        "importances_note": note,
        "history_png": png,
        "dashboard": dashboard_command(storage) if storage else None,
        "space": [p.to_dict() for p in spec.params],
        "trials": [r.to_dict() for r in rows],
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        from rich.console import Console

        print_report(Console(), summary)
    return 0
