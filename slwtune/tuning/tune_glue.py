"""Ray Tune glue: one probe = one Tune trial whose function fits a Train V2 TorchTrainer.

The pattern of Ray's Train+Tune guide: `probe_trial` (the per-trial driver)
builds a `TorchTrainer` named after the trial id and forwards rank 0's reports
to Tune with `TuneReportCallback`; the Tuner stops a trial at the first report
whose verdict is not stable (`VerdictStopper`) and caps concurrency.

Resume per probe follows Ray Tune's own restore (`Tuner.restore(resume_unfinished=True)`):
finished trials are kept, unfinished ones continue from their latest checkpoint. Tune's
experiment snapshot is written at most every 10 s (`_ExperimentCheckpointManager`, "auto"
period), so a probe that ended just before its driver died would run again; instead a
`JournalCallback` hands each report and each end to the job's journal (job.json) as it
happens. A probe that was training goes on under its first trial's id (`RESUME_TRIAL_KEY`):
the same Train V2 run name, which Train resumes from its latest checkpoint, and the same
MLflow run, tagged with the step it went on from.
"""

from __future__ import annotations

import time
from typing import Any

from slwtune import metrics as M
from slwtune import tracking
from slwtune.spec import JobSpec
from slwtune.storage import job_prefix
from slwtune.train import make_trainer
from slwtune.train_loop import RunOptions
from slwtune.tuning.results import (
    RESUME_STEP_KEY,
    RESUME_TRIAL_KEY,
    ProbeResult,
    curve_row,
    probe_from,
    probe_of,
    probe_spec,
    report_checkpoint,
)
from slwtune.tuning.strategies import Probe


def probe_trial_id(config: dict, tune_trial_id: str) -> str:
    """The id a probe's Train run and MLflow run are named after: its first trial's, across driver restarts."""
    return config.get(RESUME_TRIAL_KEY) or tune_trial_id


class VerdictStopper:
    """Tune stopper on the library's verdict: stop at the first report that is not stable.

    The worker loop also ends itself on that report, so no step runs past it;
    the stopper makes Tune's own bookkeeping say so, whatever the loop does.
    """

    def __call__(self, trial_id: str, result: dict) -> bool:
        # A finished trial ends by itself; stopping it on `done` would cut its clean shutdown short.
        return result.get(M.VERDICT, M.STABLE) != M.STABLE

    def stop_all(self) -> bool:
        return False


def verdict_stopper():
    """A `VerdictStopper` that Tune accepts (its Stopper base class is imported lazily)."""
    from ray import tune

    class _VerdictStopper(VerdictStopper, tune.Stopper):
        pass

    return _VerdictStopper()


def probe_trial(config: dict) -> None:
    """Tune trial function: a probe over the window with one (start length, T)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    control = not config.get("slw", True)
    spec = probe_spec(config["spec"], probe_of(config))  # the job's JobSpec, as validated when it entered
    trial_id = probe_trial_id(config, tune.get_context().get_trial_id())
    name = "control-no-slw" if control else f"probe-s{spec.slw.start_length}-T{spec.slw.duration_steps}"
    uri, run_id = config.get("mlflow_uri"), None
    if uri and config.get(RESUME_TRIAL_KEY):  # the same MLflow run goes on: the probe shows once
        run_id = reopen_probe_run(uri, config, trial_id)
    if uri and not run_id:
        tags = {M.TAG_KIND: M.KIND_CONTROL if control else M.KIND_PROBE, M.TAG_TRIAL_ID: trial_id,
                M.TAG_JOB_ID: config.get("job_id", ""), M.TAG_ROUND: config.get("round", 0),
                **tracking.knob_tags(spec)}
        if config.get(RESUME_TRIAL_KEY):
            tags[M.TAG_RESUMED_FROM_STEP] = config.get(RESUME_STEP_KEY) or 0
        run_id = tracking.best_effort(
            "create the probe's run", tracking.create_run, uri, config["experiment"], f"{name}-{trial_id}",
            parent_run_id=config.get("parent_run_id"), params=tracking.run_params(spec), tags=tags)
    options = RunOptions(max_steps=config["probe_steps"], mlflow_uri=uri, mlflow_run_id=run_id,
                         stop_when_unstable=True, spill_dir=config.get("spill_dir"))
    trainer = make_trainer(spec, options, name=f"{config['job_name']}probe-{trial_id}",
                           storage=config["storage"], callbacks=[TuneReportCallback()])
    try:
        trainer.fit()
    except Exception as exc:  # the trial fails alone; the driver records it as `failed` (and retries it once)
        if uri and run_id:
            tracking.best_effort("tag the crashed probe", tracking.set_tags, uri, run_id,
                                 {M.TAG_VERDICT: M.FAILED, M.TAG_REASON: f"{type(exc).__name__}: {exc}"[-500:]})
            tracking.best_effort("end the crashed probe", tracking.end_run, uri, run_id,
                                 tracking.run_status(M.FAILED))
        raise


def reopen_probe_run(uri: str, config: dict, trial_id: str) -> str | None:
    """The MLflow run of the probe's first trial, RUNNING again and tagged with the step it goes on
    from; None when it cannot be found (MLflow down, or never created)."""
    parent = config.get("parent_run_id")
    run = tracking.best_effort("find the probe's run", tracking.find_child, uri, parent, M.TAG_TRIAL_ID,
                               trial_id) if parent else None
    if run is None:
        return None
    run_id = run.info.run_id
    tracking.best_effort("reopen the probe's run", tracking.reopen_run, uri, run_id)
    tracking.best_effort("tag the resumed probe", tracking.set_tags, uri, run_id,
                         {M.TAG_RESUMED_FROM_STEP: config.get(RESUME_STEP_KEY) or 0})
    return run_id


def result_to_probe(result, round_index: int) -> ProbeResult:
    """A Tune `Result` -> ProbeResult (`results.probe_from`); a crashed trial becomes verdict `failed`."""
    metrics = dict(result.metrics or {})
    return probe_from(metrics, result.config or {}, round_index=round_index, error=result.error,
                      curve=_curve(result), trial_id=str(metrics.get("trial_id", "")))


def _curve(result) -> list:
    """The `curve_row` of every report of a trial."""
    df = getattr(result, "metrics_dataframe", None)
    if df is None or M.STEP not in getattr(df, "columns", []):
        return []
    return [curve_row(dict(rec)) for _, rec in df.iterrows()]


class JournalCallback:
    """Hands each probe's reports and its end to `journal` as they happen, in the driver (a Tune
    callback): `journal.progress(probe, trial_id, row, checkpoint)` per report (`row` a
    `curve_row`, `checkpoint` the report's or None) and `journal.done(result)` when a trial ends.

    A journal that fails (a full disk) warns and leaves the probes running: resume is a bonus.
    """

    def __init__(self, journal, round_index: int):
        self.journal, self.round_index = journal, round_index

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        config = lifted(trial.config)
        self._call(self.journal.progress, probe_of(config), probe_trial_id(config, trial.trial_id), curve_row(result), report_checkpoint(result, config))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        config = lifted(trial.config)
        metrics = {**(trial.last_result or {}), "trial_id": trial.trial_id}
        self._call(self.journal.done, probe_from(metrics, config, round_index=self.round_index,
                                                 trial_id=trial.trial_id))

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            print(f"slwtune: warning: the probe journal failed: {type(exc).__name__}: {exc}", flush=True)


def journal_callback(journal, round_index: int):
    """A `JournalCallback` that Tune accepts (its Callback base class is imported lazily)."""
    from ray import tune

    class _JournalCallback(JournalCallback, tune.Callback):
        pass

    return _JournalCallback(journal, round_index)


def base_config(spec: JobSpec, *, job_id: str, storage: str, parent_run_id: str | None,
                mlflow_uri: str | None, round_index: int, spill_dir: str | None = None) -> dict[str, Any]:
    return {"spec": spec, "probe_steps": spec.probe_steps(), "job_id": job_id,
            "job_name": job_prefix(spec.name, job_id), "storage": storage, "parent_run_id": parent_run_id,
            "mlflow_uri": mlflow_uri, "experiment": tracking.experiment_name(spec), "round": round_index,
            "spill_dir": spill_dir}


def trial_resources(spec: JobSpec) -> dict:
    """The trial driver itself only waits on its TorchTrainer: give it a sliver of a CPU."""
    return {"CPU": 0.01}


def run_round(spec: JobSpec, probes: list[Probe], *, round_index: int, job_id: str, storage: str,
              parent_run_id: str | None, mlflow_uri: str | None, attempt: int = 1,
              spill_dir: str | None = None, resume: dict[Probe, dict] | None = None,
              journal=None) -> list[ProbeResult]:
    """Run one round of probes concurrently (up to tuning.max_concurrent_trials) on Ray Tune.

    `resume`: per probe that was training when an earlier driver died, the knobs that make it go on
    (`RESUME_TRIAL_KEY`, `RESUME_STEP_KEY`); `journal`: told each report and end (`JournalCallback`).
    """
    from ray import tune

    resume = resume or {}
    param_space = base_config(spec, job_id=job_id, storage=storage, parent_run_id=parent_run_id,
                              mlflow_uri=mlflow_uri, round_index=round_index, spill_dir=spill_dir)
    param_space["knobs"] = tune.grid_search([{**p.as_config(), **resume.get(p, {})} for p in probes])
    tuner = tune.Tuner(
        tune.with_resources(lift_knobs(probe_trial), trial_resources(spec)),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.tuning.max_concurrent_trials),
        run_config=tune.RunConfig(name=f"{job_prefix(spec.name, job_id)}round{round_index}"
                                  + (f"-attempt{attempt}" if attempt > 1 else ""), storage_path=storage,
                                  stop=verdict_stopper(), verbose=0,
                                  callbacks=[journal_callback(journal, round_index)] if journal else None,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    start = time.time()
    grid = tuner.fit()
    results = [result_to_probe(KnobsResult(r), round_index) for r in grid]
    for r in results:
        r.wall_s = r.wall_s or (time.time() - start)
    return results


def lifted(config: dict | None) -> dict:
    """A trial's config with its knobs (one grid_search dict) at the top level."""
    return {**(config or {}), **(config or {}).get("knobs", {})}


def lift_knobs(fn):
    """Wrap a trial function so `config["knobs"]` (one grid_search dict) sits at the top level."""

    def trial(config: dict) -> None:
        return fn(lifted(config))

    trial.__name__ = fn.__name__
    return trial


class KnobsResult:
    """A Tune Result whose `config` has its knobs lifted to the top level, as `lift_knobs` sees it."""

    def __init__(self, result):
        self.metrics = result.metrics
        self.error = result.error
        self.metrics_dataframe = getattr(result, "metrics_dataframe", None)
        self.config = lifted(result.config)
