"""The job driver: probe phase -> selection -> full run, all logged to MLflow.

Run as a Ray job by the service (`python -m slwtune.driver --spec-file F --job-id ID --out DIR`)
or locally by `slwtune tune`. Exit code: 0 with a chosen config, 2 when no probe
was stable (the report says what to change), 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from slwtune import metrics as M
from slwtune import tracking
from slwtune.errors import SlwtuneError
from slwtune.raycluster import default_storage, ensure_ray, local_cpus_for
from slwtune.spec import JobSpec, load_spec
from slwtune.train import fit_and_summarize, make_trainer
from slwtune.train_loop import RunOptions
from slwtune.tuning.report import build_report, write_plots, write_report
from slwtune.tuning.strategies import (
    GridSearch,
    PaperSearch,
    Probe,
    choose_optuna,
    optuna_objective,
    start_length_choices,
)
from slwtune.tuning.tune_glue import (
    ProbeResult,
    _flatten_knobs,
    _stopper,
    _unflatten,
    base_config,
    probe_trial,
    result_to_probe,
    run_round,
    trial_resources,
    with_knobs,
)



class Job:
    """One job's context: ids, MLflow parent run, where things go."""

    def __init__(self, spec: JobSpec, out_dir: Path, job_id: str | None):
        self.spec, self.out = spec, out_dir
        self.job_id = job_id or uuid.uuid4().hex[:12]
        self.uri = tracking.tracking_uri(spec)
        self.storage = default_storage()
        self.parent_run_id: str | None = None

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "spec.yaml").write_text(self.spec.to_yaml())
        if self.uri:
            self.parent_run_id = tracking.create_run(
                self.uri, tracking.experiment_name(self.spec), f"{self.spec.name}-{self.job_id}",
                params=self.spec.flat(),
                tags={M.TAG_KIND: "job", M.TAG_PHASE: "probing", M.TAG_JOB_ID: self.job_id,
                      "slwtune.strategy": self.spec.tuning.strategy})
            tracking.share_job_view(self.uri, self.parent_run_id, self.job_id)  # what the job's MLflow link opens
        self.status(phase="probing", progress="starting")

    def status(self, **fields) -> None:
        """Phase and progress: a status.json beside the report and tags on the parent run."""
        path = self.out / "status.json"
        current = json.loads(path.read_text()) if path.exists() else {"job_id": self.job_id}
        current.update(fields, parent_run_id=self.parent_run_id, updated=time.time())
        path.write_text(json.dumps(current, indent=2, default=str))
        if self.uri and self.parent_run_id:
            tags = {}
            if "phase" in fields:
                tags[M.TAG_PHASE] = fields["phase"]
            if "progress" in fields:
                tags[M.TAG_PROGRESS] = fields["progress"]
            if tags:
                tracking.set_tags(self.uri, self.parent_run_id, tags)


# ---- probe phase -----------------------------------------------------------------------


def search_for(spec: JobSpec):
    t = spec.tuning
    if t.strategy == "grid":
        return GridSearch(list(t.start_lengths), list(t.durations))
    return PaperSearch(t_min=t.duration_min, t_max=t.duration_max, resolution=t.resolution, slots=t.slots,
                       max_rounds=t.max_rounds, start=spec.slw.start_length, max_start=t.max_start_length)


def run_rounds(job: Job) -> tuple[list[ProbeResult], Probe | None, list[str], list[str]]:
    """The paper (or grid) search: rounds of probes until the strategy is done."""
    search = search_for(job.spec)
    results: list[ProbeResult] = []
    round_index = 0
    while probes := search.next_round():
        round_index += 1
        job.status(progress=f"round {round_index}: probing {[p.as_config() for p in probes]}",
                   round=round_index)
        batch = run_round(job.spec, probes, round_index=round_index, job_id=job.job_id, storage=job.storage,
                          parent_run_id=job.parent_run_id, mlflow_uri=job.uri)
        results.extend(batch)
        sync_probe_tags(job, batch)
        search.tell(r.outcome() for r in batch)
        job.status(progress=f"round {round_index}: " + ", ".join(
            f"s={r.start_length} T={r.duration_steps} {r.verdict}" for r in batch), trials_done=len(results))
    return results, search.chosen(), list(search.notes), search.violations()


def run_optuna(job: Job) -> tuple[list[ProbeResult], Probe | None, list[str], list[str]]:
    """TPE over both knobs through Ray Tune's OptunaSearch; the study lives in an RDB."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    spec, t = job.spec, job.spec.tuning
    storage_url = t.optuna_storage or f"sqlite:///{(job.out / 'optuna.db').resolve()}"
    objective_kw = {"base_start": spec.slw.start_length, "t_max": t.duration_max}
    search = OptunaSearch(
        space={"start_length": optuna.distributions.CategoricalDistribution(
                   start_length_choices(spec.slw.start_length, t.max_start_length)),
               "duration_steps": optuna.distributions.IntDistribution(t.duration_min, t.duration_max)},
        metric="objective", mode="max", sampler=optuna.samplers.TPESampler(seed=spec.seed),
        study_name=f"{spec.name}-{job.job_id}", storage=optuna.storages.RDBStorage(storage_url))
    param_space = base_config(spec, job_id=job.job_id, storage=job.storage, parent_run_id=job.parent_run_id,
                              mlflow_uri=job.uri, round_index=1)
    param_space["objective"] = objective_kw
    job.status(progress=f"optuna: {t.n_trials} trials")
    tuner = tune.Tuner(
        tune.with_resources(_flatten_knobs(probe_trial), trial_resources(spec)),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=t.n_trials,
                                    max_concurrent_trials=t.max_concurrent_trials),
        run_config=tune.RunConfig(name=f"{spec.name}-{job.job_id}-optuna", storage_path=job.storage,
                                  stop=_stopper(), verbose=0),
    )
    results = [result_to_probe(_unflatten(r), 1) for r in tuner.fit()]
    sync_probe_tags(job, results)
    scores = {r.outcome().probe: optuna_objective(r.verdict, r.start_length, r.duration_steps,
                                                  best_val_ppl=r.best_val_ppl, **objective_kw) for r in results}
    chosen = choose_optuna([r.outcome() for r in results], scores)
    return results, chosen, [f"optuna study {spec.name}-{job.job_id} in {storage_url}"], []


def sync_probe_tags(job: Job, results: list[ProbeResult]) -> None:
    """Make each probe's MLflow run say what the report says (one source of truth): verdict tags
    and a terminal status; pruned probes are FINISHED runs told apart by their verdict tag."""
    if not (job.uri and job.parent_run_id):
        return
    for r in results:
        run = tracking.find_child(job.uri, job.parent_run_id, M.TAG_TRIAL_ID, r.trial_id) if r.trial_id else None
        if run is not None:
            tracking.set_tags(job.uri, run.info.run_id, {M.TAG_VERDICT: r.verdict, M.TAG_REASON: r.reason or "-"})
            if run.info.status == "RUNNING":  # a stopped trial never got to end its run
                tracking.end_run(job.uri, run.info.run_id, "FAILED" if r.verdict == "failed" else "FINISHED")


# ---- full run ---------------------------------------------------------------------------------


def run_full(job: Job, chosen: Probe, winner: ProbeResult | None) -> dict:
    spec = with_knobs(job.spec, chosen.start_length, chosen.duration_steps)
    init = winner.checkpoint if (winner and spec.tuning.reuse_probe_checkpoint) else None
    run_id = None
    if job.uri:
        run_id = tracking.create_run(job.uri, tracking.experiment_name(spec), f"full-run-{job.job_id}",
                                     parent_run_id=job.parent_run_id, params=spec.flat(),
                                     tags={M.TAG_KIND: "full_run", M.TAG_JOB_ID: job.job_id,
                                           "slwtune.continued_from": init or "-"})
    job.status(phase="full_run", progress="full run started", full_run_mlflow_run_id=run_id)
    options = RunOptions(mlflow_uri=job.uri, mlflow_run_id=run_id, init_checkpoint=init, progress=True)
    trainer = make_trainer(spec, options, f"{spec.name}-{job.job_id}-full", job.storage)
    summary = fit_and_summarize(trainer)
    summary.update(continued_from_probe=bool(init), mlflow_run_id=run_id)
    if job.uri and run_id:
        tracking.set_tags(job.uri, run_id, {M.TAG_VERDICT: summary["verdict"], M.TAG_REASON: summary.get("reason") or "-"})
        tracking.end_run(job.uri, run_id, "FAILED" if summary.get("error") else "FINISHED")
    return summary


def _winner(results: list[ProbeResult], chosen: Probe | None) -> ProbeResult | None:
    if chosen is None:
        return None
    return next((r for r in results if r.verdict == "stable" and r.start_length == chosen.start_length
                 and r.duration_steps == chosen.duration_steps), None)


def run_job(spec: JobSpec, out_dir: str | Path, *, address: str | None = None, job_id: str | None = None,
            full_run: bool = True) -> dict:
    """The whole job; returns the report (also written to out_dir/report.json)."""
    ensure_ray(address, num_cpus=local_cpus_for(spec))
    job = Job(spec, Path(out_dir), job_id)
    job.start()
    status = "FAILED"
    try:
        strategy = spec.tuning.strategy
        results, chosen, notes, violations = run_optuna(job) if strategy == "optuna" else run_rounds(job)
        job.status(phase="selecting", progress=f"{len(results)} probes done")
        winner = _winner(results, chosen)
        report = build_report(spec=spec, job_id=job.job_id, strategy=strategy, probes=results, chosen=chosen,
                              notes=notes, violations=violations, reuse_probe=spec.tuning.reuse_probe_checkpoint,
                              parent_run_id=job.parent_run_id)
        artifacts = write_report(report, job.out) + write_plots(results, spec, chosen, job.out)
        if job.uri and job.parent_run_id:
            tags = {M.TAG_VERDICT: "chosen" if chosen else "none_stable"}
            if chosen:
                tags.update({M.TAG_CHOSEN_START: chosen.start_length, M.TAG_CHOSEN_DURATION: chosen.duration_steps})
            tracking.set_tags(job.uri, job.parent_run_id, tags)
        job.status(chosen=report["chosen"])
        if chosen is not None and full_run:
            report["full_run"] = run_full(job, chosen, winner)
            artifacts = write_report(report, job.out) + artifacts[2:]
        if job.uri and job.parent_run_id:
            for path in artifacts:
                tracking.log_artifact(job.uri, job.parent_run_id, str(path))
        job.status(phase="done", progress="done")
        status = "FINISHED"
        return report
    finally:
        if job.uri and job.parent_run_id:
            tracking.end_run(job.uri, job.parent_run_id, status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slwtune.driver", description=__doc__)
    parser.add_argument("--spec-file", required=True, help="job spec YAML/JSON (or a preset name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--job-id", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--no-full-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec_file, args.overrides)
        report = run_job(spec, args.out, address=args.address, job_id=args.job_id, full_run=not args.no_full_run)
    except SlwtuneError as exc:
        print(f"slwtune driver: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"chosen": report["chosen"], "tuning_fraction": report["tuning_fraction"]}))
    return 0 if report["chosen"] else 2


if __name__ == "__main__":
    sys.exit(main())
