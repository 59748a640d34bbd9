"""``lrpilot tune --backend ray``: the same trials as Ray Tune trials, ASHA early stopping.

Each Ray trial runs :func:`lrpilot.search._runner.run_trial` (a ``lrpilot fit`` child in
``OUT/trials/ray-TRIAL_ID``) and reports every epoch record to Ray Tune
(``{metric: value, "epoch": e + 1}``); the ASHA scheduler (``time_attr="epoch"``,
``max_t`` = the config's epochs, ``grace_period`` 1, reduction factor 3) stops the trials
that fall behind; the trials' values are drawn at random (seeded by ``--seed``). Ray runs locally (``ray.init()``) unless ``--ray-address`` or
``RAY_ADDRESS`` names a cluster, or Ray is already initialised (as in the tests, with
``ray.init(num_cpus=2)``). ``--workers K`` caps the concurrent trials (default: as many as
the CPUs allow, one CPU per trial). Running the same command again restores the
experiment in ``OUT/ray`` (unfinished and errored trials are resumed).

A trial that Ray stopped before its last epoch is reported as ``pruned``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.search._report import TrialRow
from lrpilot.search._runner import EpochReader, fit_argv, run_trial
from lrpilot.search._space import decode_values, space_from_dicts, to_ray


def ray_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one ``lrpilot fit`` child per trial."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(setup["out"]) / "trials" / f"ray-{trial_id}"
    space = space_from_dicts(setup["space"])
    values = decode_values(space, {k: config[k] for k in setup["keys"]})
    argv, _ = fit_argv(Path(setup["config"]), run_dir, values, setup["launcher"])

    last: dict[str, Any] = {}

    def on_epoch(epoch: int, value: float) -> bool:
        report = {setup["metric"]: value, "epoch": epoch + 1}
        if epoch + 1 >= setup["full_epochs"]:
            # the last epoch reaches ASHA's max_t, where Tune ends the trial at once: it is
            # reported after the child has finished its run (summary.json and all)
            last.update(report)
        else:
            tune.report(report)
        return False  # Ray's scheduler stops the trial itself

    outcome = run_trial(argv, run_dir, setup["metric"], on_epoch, env=setup["env"], fork=False)
    if outcome.state == "failed":
        raise RuntimeError(f"lrpilot fit failed: {outcome.message}")
    if last:
        tune.report(last)


def _progress_callback(total: int, quiet: bool) -> Any:
    from ray import tune
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    class Bar(tune.Callback):
        """A rich progress bar over finished Ray trials (made on first use: the Tuner
        pickles its callbacks, and a live bar holds a lock)."""

        def __init__(self) -> None:
            self.bar: Any = None
            self.task: Any = None

        def __getstate__(self) -> dict:
            return {"bar": None, "task": None}

        def _advance(self) -> None:
            if self.bar is None:
                self.bar = Progress(
                    "{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    console=Console(stderr=True),
                    disable=quiet,
                )
                self.task = self.bar.add_task("ray trials", total=total)
                self.bar.start()
            self.bar.advance(self.task)

        def on_trial_complete(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            self._advance()

        def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            self._advance()

        def on_experiment_end(self, trials, **info):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.stop()

    return Bar()


def run_ray(spec: Any, address: str | None, quiet: bool = False) -> list[TrialRow]:
    """Run (or resume) the study with Ray Tune; return one row per trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--ray-address {address!r}: cannot connect ({exc})") from None
    if any(p.kind == "auto_range" for p in spec.params):
        from lrpilot.search._space import resolve_auto

        spec.params = resolve_auto(spec.params, spec.base, spec.finder)
    setup = {
        "out": str(spec.out),
        "config": str(spec.config),
        "keys": [p.key for p in spec.params],
        "space": [p.to_dict() for p in spec.params],
        "metric": spec.metric,
        "launcher": spec.launcher,
        "full_epochs": spec.full_epochs,
        "env": dict(os.environ),
    }
    trainable = tune.with_resources(tune.with_parameters(ray_trial, setup=setup), {"cpu": 1})
    path = spec.out / "ray" / spec.study_name
    callbacks = [_progress_callback(spec.trials, quiet)]
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=spec.full_epochs, grace_period=1, reduction_factor=3
        )
        tuner = tune.Tuner(
            trainable,
            param_space=to_ray(spec.params),
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(random_state=spec.seed),
                metric=spec.metric,
                mode=spec.direction,
                num_samples=spec.trials,
                scheduler=scheduler,
                max_concurrent_trials=spec.workers if spec.workers > 1 else None,
            ),
            run_config=tune.RunConfig(
                name=spec.study_name,
                storage_path=str(spec.out / "ray"),
                verbose=0,
                callbacks=callbacks,
            ),
        )
    results = tuner.fit()
    return rows_from_results(results, spec)


def rows_from_results(results: Any, spec: Any) -> list[TrialRow]:
    """One ``TrialRow`` per Ray trial, numbered in trial-id order."""
    rows = []
    ordered = sorted(results, key=lambda r: str(r.metrics.get("trial_id", r.path)))
    for number, result in enumerate(ordered):
        metrics = result.metrics or {}
        reported = int(metrics.get("epoch", 0) or 0)
        value = metrics.get(spec.metric)
        trial_id = metrics.get("trial_id")
        run_dir = spec.out / "trials" / f"ray-{trial_id}" if trial_id else None
        # compute: the epochs the child trained (it may finish one more after the report
        # that made ASHA stop it), as the Optuna backend counts them
        records = EpochReader(run_dir / "metrics.jsonl").read() if run_dir else []
        epochs = len(records) if run_dir else reported
        if result.error is not None:
            state = "failed"
        elif reported >= spec.full_epochs or (
            run_dir is not None and (run_dir / "summary.json").exists()
        ):
            # a child told to stop at its next-to-last report may still finish its run
            # (summary.json written): that trial is complete, valued at its end
            state = "complete"
            if records and records[-1].get(spec.metric) is not None:
                value = records[-1][spec.metric]
        else:
            state = "pruned"
        rows.append(
            TrialRow(
                number=number,
                state=state,
                value=float(value) if value is not None else None,
                compute=epochs / spec.full_epochs,
                params=decode_values(
                    spec.params, {p.key: result.config[p.key] for p in spec.params}
                ),
                run_dir=str(run_dir) if run_dir else None,
                error=str(result.error).splitlines()[0][:200] if result.error else None,
            )
        )
    return rows
