"""Ray Tune glue: one probe = one Tune trial whose function fits a Train V2 TorchTrainer.

The pattern of Ray's Train+Tune guide: `probe_trial` (the per-trial driver)
builds a `TorchTrainer` named after the trial id and forwards rank 0's reports
to Tune with `TuneReportCallback`; the Tuner stops a trial at the first report
whose verdict is not stable (`VerdictStopper`) and caps concurrency.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from slwtune import metrics as M
from slwtune import tracking
from slwtune.spec import JobSpec
from slwtune.train import make_trainer
from slwtune.train_loop import RunOptions
from slwtune.tuning.strategies import FAILED, Outcome, Probe

CHECKPOINT_PATH_KEY = "checkpoint_path"  # added to metrics by TuneReportCallback


def with_knobs(spec: JobSpec, start_length: int, duration_steps: int) -> JobSpec:
    """The spec with the two SLW knobs set (validated again: knobs come from a search)."""
    data = spec.to_dict()
    data["slw"].update(start_length=int(start_length), duration_steps=int(duration_steps), enabled=True)
    return JobSpec.model_validate(data)


class VerdictStopper:
    """Tune stopper on the library's verdict: stop at the first report that is not stable.

    The worker loop also ends itself on that report, so no step runs past it;
    the stopper makes Tune's own bookkeeping say so, whatever the loop does.
    """

    def __call__(self, trial_id: str, result: dict) -> bool:
        # A finished trial ends by itself; stopping it on `done` would cut its clean shutdown short.
        return result.get(M.VERDICT, "stable") != "stable"

    def stop_all(self) -> bool:
        return False


def _stopper():
    from ray import tune

    class _VerdictStopper(VerdictStopper, tune.Stopper):
        pass

    return _VerdictStopper()


def probe_trial(config: dict) -> None:
    """Tune trial function: a probe over the window with one (start length, T)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = with_knobs(JobSpec.model_validate(config["spec"]), config["start_length"], config["duration_steps"])
    trial_id = tune.get_context().get_trial_id()
    uri, run_id = config.get("mlflow_uri"), None
    if uri:
        run_id = tracking.create_run(
            uri, config["experiment"], f"probe-s{spec.slw.start_length}-T{spec.slw.duration_steps}-{trial_id}",
            parent_run_id=config.get("parent_run_id"), params=spec.flat(),
            tags={M.TAG_KIND: "probe", M.TAG_TRIAL_ID: trial_id, M.TAG_JOB_ID: config.get("job_id", ""),
                  M.TAG_ROUND: config.get("round", 0), "slw.start_length": spec.slw.start_length,
                  "slw.duration_steps": spec.slw.duration_steps})
    options = RunOptions(max_steps=config["probe_steps"], mlflow_uri=uri, mlflow_run_id=run_id,
                         stop_when_unstable=True)
    trainer = make_trainer(spec, options, name=f"{config['job_name']}-probe-{trial_id}",
                           storage=config["storage"], callbacks=[TuneReportCallback()])
    try:
        trainer.fit()
    except Exception as exc:  # the trial fails alone; the driver records it as `failed`
        if uri and run_id:
            if M.TAG_VERDICT not in tracking.get_tags(uri, run_id):  # keep a verdict the loop already gave
                tracking.set_tags(uri, run_id, {M.TAG_VERDICT: FAILED, M.TAG_REASON: str(exc)[:500]})
            tracking.end_run(uri, run_id, "FAILED")
        raise
    if uri and run_id:
        tracking.end_run(uri, run_id, "FINISHED")


@dataclass
class ProbeResult:
    """One finished probe, as the report and the selection see it."""

    start_length: int
    duration_steps: int
    verdict: str
    reason: str
    early: bool
    best_val_ppl: float | None
    final_val_ppl: float | None
    max_loss_ratio: float | None
    steps: int
    tokens: int
    wall_s: float
    checkpoint: str | None
    trial_id: str
    round: int
    curve: list = None  # [(step, val_ppl, loss_ratio)] of every report, for plots

    def outcome(self) -> Outcome:
        return Outcome(Probe(self.start_length, self.duration_steps), self.verdict, self.early, self.reason)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _num(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value >= M.NONFINITE_STANDIN:
        return None
    return float(value)


def result_to_probe(result, round_index: int) -> ProbeResult:
    """A Tune `Result` -> ProbeResult; a crashed trial becomes verdict `failed`."""
    metrics = dict(result.metrics or {})
    config = result.config or {}
    verdict, reason = metrics.get(M.VERDICT), metrics.get(M.REASON, "")
    if result.error is not None:
        verdict, reason = FAILED, f"{type(result.error).__name__}: {str(result.error)[:300]}"
    elif verdict is None:
        verdict, reason = FAILED, "the trial reported nothing"
    return ProbeResult(
        start_length=int(config["start_length"]), duration_steps=int(config["duration_steps"]),
        verdict=verdict, reason=reason, early=bool(metrics.get("early", False)),
        best_val_ppl=_num(metrics, M.BEST_VAL_PPL), final_val_ppl=_num(metrics, M.VAL_PPL),
        max_loss_ratio=_num(metrics, M.MAX_LOSS_RATIO), steps=int(metrics.get(M.STEP) or 0),
        tokens=int(metrics.get(M.TRAIN_TOKENS) or 0), wall_s=float(metrics.get(M.WALL_S) or 0.0),
        checkpoint=metrics.get(CHECKPOINT_PATH_KEY), trial_id=str(metrics.get("trial_id", "")),
        round=round_index, curve=_curve(result),
    )


def _curve(result) -> list:
    """(step, val ppl, loss ratio) of every report of a trial, from Tune's dataframe."""
    df = getattr(result, "metrics_dataframe", None)
    if df is None or M.STEP not in getattr(df, "columns", []):
        return []
    cols = [c for c in (M.STEP, M.VAL_PPL, M.TRAIN_LOSS_RATIO) if c in df.columns]
    return [[None if (v != v) else float(v) for v in row] for row in df[cols].itertuples(index=False)]


def base_config(spec: JobSpec, *, job_id: str, storage: str, parent_run_id: str | None,
                mlflow_uri: str | None, round_index: int) -> dict[str, Any]:
    return {"spec": spec.to_dict(), "probe_steps": spec.probe_steps(), "job_id": job_id,
            "job_name": spec.name, "storage": storage, "parent_run_id": parent_run_id,
            "mlflow_uri": mlflow_uri, "experiment": tracking.experiment_name(spec), "round": round_index}


def trial_resources(spec: JobSpec) -> dict:
    """The trial driver itself only waits on its TorchTrainer: give it a sliver of a CPU."""
    return {"CPU": 0.01}


def run_round(spec: JobSpec, probes: list[Probe], *, round_index: int, job_id: str, storage: str,
              parent_run_id: str | None, mlflow_uri: str | None) -> list[ProbeResult]:
    """Run one round of probes concurrently (up to tuning.max_concurrent_trials) on Ray Tune."""
    from ray import tune

    param_space = base_config(spec, job_id=job_id, storage=storage, parent_run_id=parent_run_id,
                              mlflow_uri=mlflow_uri, round_index=round_index)
    param_space["knobs"] = tune.grid_search([p.as_config() for p in probes])
    tuner = tune.Tuner(
        tune.with_resources(_flatten_knobs(probe_trial), trial_resources(spec)),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.tuning.max_concurrent_trials),
        run_config=tune.RunConfig(name=f"{spec.name}-{job_id}-round{round_index}", storage_path=storage,
                                  stop=_stopper(), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    start = time.time()
    grid = tuner.fit()
    results = [result_to_probe(_unflatten(r), round_index) for r in grid]
    for r in results:
        r.wall_s = r.wall_s or (time.time() - start)
    return results


def _flatten_knobs(fn):
    """Lift `config["knobs"]` (a grid_search of dicts) into the top-level config."""

    def trial(config: dict) -> None:
        merged = {**config, **config.get("knobs", {})}
        return fn(merged)

    trial.__name__ = fn.__name__
    return trial


class _ResultView:
    """A Tune Result with its knobs lifted into `config`."""

    def __init__(self, result):
        self.metrics = result.metrics
        self.error = result.error
        self.metrics_dataframe = getattr(result, "metrics_dataframe", None)
        self.config = {**(result.config or {}), **(result.config or {}).get("knobs", {})}


def _unflatten(result) -> _ResultView:
    return _ResultView(result)
