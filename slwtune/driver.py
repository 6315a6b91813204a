"""The job driver: probe phase -> selection -> decision (the race) -> full run, all logged to MLflow.

`run_job` is what `slwtune tune` runs, locally or as the Ray job the service
submits (`python -m slwtune.cli tune SPEC --job-id ID --out DIR`); the CLI owns
the exit-code contract (`slwtune.metrics.EXIT_*`). With `resume=True` it goes
on with the job persisted in the folder: finished rounds and probes are not
rerun, unfinished probes and the full run continue from their last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from slwtune import metrics as M
from slwtune import storage, tracking
from slwtune.export import export_model
from slwtune.files import MODEL_DIR
from slwtune.job import Job
from slwtune.raycluster import ensure_ray, local_cpus_for
from slwtune.spec import JobSpec, load_spec, parse_spec
from slwtune.train import fit_and_summarize, make_trainer
from slwtune.train_loop import RunOptions
from slwtune.tuning import race as R
from slwtune.tuning.decision import decide, full_run_plan, job_outcome, start_point
from slwtune.tuning.loop import run_search as search_loop
from slwtune.tuning.race import Arm
from slwtune.tuning.race_runs import run_race_round
from slwtune.tuning.report import build_report, write_plots, write_report
from slwtune.tuning.results import ProbeResult, probe_spec
from slwtune.tuning.searches import make_search
from slwtune.tuning.strategies import Probe, Search
from slwtune.tuning.tune_glue import run_round
from slwtune.user_loop import entrypoint_of, load_entrypoint


# ---- probe phase -----------------------------------------------------------------------


def run_search(job: Job, search: Search) -> tuple[list[ProbeResult], ProbeResult | None]:
    """The search loop (`slwtune.tuning.loop`) with rounds on Ray Tune, journaled in job.json.

    Round 1 also runs the control probe (SLW off, same window) when `tuning.control_probe` is on;
    it is returned apart and never told to the search. A probe that crashed is run once more
    before it counts as `failed` (a crash says nothing about SLW). Rounds that finished before a
    restart are told to the search again from the job's state instead of being rerun.
    """

    def on_round(index: int, batch: list[ProbeResult], replayed: bool) -> None:
        if replayed:
            job.status(progress=f"round {index}: finished before the restart, not rerun")
        else:
            job.save_round(batch)
        job.status(progress=f"round {index}: " + ", ".join(
            f"s={r.start_length} T={r.duration_steps} {r.verdict}" for r in batch if r.slw))

    run = search_loop(search, lambda probes, index: run_probes(job, probes, index),
                      control_length=job.spec.slw.full_length if job.spec.tuning.control_probe else None,
                      replay=job.done_rounds(), on_round=on_round)
    return run.results, run.control


def run_probes(job: Job, probes: list[Probe], round_index: int) -> list[ProbeResult]:
    """One round on Ray Tune; crashed probes run once more."""
    job.status(progress=f"round {round_index}: probing {[p.as_config() for p in probes]}")
    batch = probe_round(job, probes, round_index)
    crashed = [r for r in batch if r.verdict == M.FAILED]
    if crashed:
        job.notes.append(f"round {round_index}: retried {len(crashed)} crashed probe(s) once: "
                         + "; ".join(f"s={r.start_length} T={r.duration_steps}: {r.reason}" for r in crashed))
        job.status(progress=f"round {round_index}: retrying {len(crashed)} crashed probe(s)")
        retried = probe_round(job, [r.probe for r in crashed], round_index, attempt=2)
        batch = [r for r in batch if r.verdict != M.FAILED] + retried
    return batch


def probe_round(job: Job, probes: list[Probe], round_index: int, attempt: int = 1) -> list[ProbeResult]:
    """One round's probes on Ray Tune, each journaled in job.json as it reports and as it ends.

    After a driver restart, the probes of this round that had ended are reused (not rerun), and
    those that were training go on from their last checkpoint, in their own Train and MLflow runs
    (see `slwtune.tuning.tune_glue` for the rule, Ray Tune's per-trial restore).
    """
    journal = job.probe_journal(round_index, attempt)
    reused = {p: r for p in probes if (r := journal.finished(p)) is not None}
    todo = [p for p in probes if p not in reused]
    resume = {p: knobs for p in todo if (knobs := journal.resume(p))}
    if reused or resume:
        job.status(progress=f"round {round_index}: {len(reused)} probe(s) finished before the restart, not rerun; "
                            f"{len(resume)} go on from their last checkpoint")
    batch = []
    if todo:
        batch = run_round(job.spec, todo, round_index=round_index, job_id=job.job_id, storage=job.storage,
                          parent_run_id=job.parent_run_id, mlflow_uri=job.uri, attempt=attempt,
                          spill_dir=job.spill_dir, resume=resume, journal=journal)
        batch = [journal.done(r) for r in batch]
    ended = {r.probe: r for r in batch} | reused
    results = [ended[p] for p in probes]
    sync_probe_tags(job, results)  # the reused too: their driver may have died before it tagged them
    return results


def sync_probe_tags(job: Job, results: list[ProbeResult]) -> None:
    """Make each probe's MLflow run say what the report says (one source of truth): verdict tags
    and the status the UI shows (stable FINISHED, pruned KILLED, crashed FAILED)."""
    if not job.logs_to_mlflow:
        return
    for r in results:
        run = job.track("find a probe's run", tracking.find_child, job.parent_run_id, M.TAG_TRIAL_ID,
                        r.trial_id) if r.trial_id else None
        if run is not None:
            job.track("tag a probe", tracking.set_tags, run.info.run_id,
                      {M.TAG_VERDICT: r.verdict, M.TAG_REASON: r.reason or "-"})
            job.track("end a probe's run", tracking.end_run, run.info.run_id, tracking.run_status(r.verdict))


# ---- full run ---------------------------------------------------------------------------------


def run_full(job: Job, chosen: Probe | None, start_from: str | None) -> dict:
    """The full run with the chosen knobs (None: the baseline, SLW off): the report's `full_run`.

    It continues from `start_from` (the race winner's checkpoint, else the probe that ran these
    settings) when `tuning.reuse_probe_checkpoint` is on, so that compute is not thrown away. Its
    Ray run name is fixed by the job, so after a restart Ray Train resumes it from its last checkpoint.
    """
    if job.state.get("full_run"):  # finished before a restart
        return job.state["full_run"]
    spec = probe_spec(job.spec, chosen or Probe.control(job.spec.slw.full_length))
    init = start_from if spec.tuning.reuse_probe_checkpoint else None
    run_id = job.state.get("full_run_mlflow_run_id")
    if job.uri and not run_id:
        run_id = job.track("create the full run's run", tracking.create_run, tracking.experiment_name(spec),
                           f"full-run-{job.job_id}", parent_run_id=job.parent_run_id,
                           params=tracking.run_params(spec),
                           tags={M.TAG_KIND: M.KIND_FULL_RUN, M.TAG_JOB_ID: job.job_id,
                                 M.TAG_CONTINUED_FROM: init or "-", **tracking.knob_tags(spec)})
        job.state["full_run_mlflow_run_id"] = run_id
        job.save()
    job.status(phase=M.PHASE_FULL_RUN, progress="full run started")
    options = RunOptions(mlflow_uri=job.uri, mlflow_run_id=run_id, init_checkpoint=init, progress=True,
                         progress_run_id=job.parent_run_id, spill_dir=job.spill_dir)
    trainer = make_trainer(spec, options, f"{storage.job_prefix(spec.name, job.job_id)}full", job.storage)
    summary = fit_and_summarize(trainer)
    summary.update(continued_from_probe=bool(init), mlflow_run_id=run_id, slw_enabled=spec.slw.enabled,
                   model=None)
    # An entrypoint's checkpoint holds the user's own model, in the user's own format: it is the result as is.
    if summary["checkpoint"] and summary["verdict"] not in M.RUN_FAILED_VERDICTS and not spec.model.entrypoint:
        summary["model"] = str(export_model(spec, summary["checkpoint"], job.out / MODEL_DIR))
        if run_id:
            job.track("log the model", tracking.log_artifact, run_id, summary["model"], MODEL_DIR)
    if run_id:
        job.track("tag the full run", tracking.set_tags, run_id,
                  {M.TAG_VERDICT: summary["verdict"], M.TAG_REASON: summary["reason"] or "-"})
        job.track("end the full run", tracking.end_run, run_id,
                  tracking.training_run_status(summary["verdict"]))
    job.state["full_run"] = summary
    job.save()
    return summary


def drop_probe_checkpoints(job: Job, results: list[ProbeResult], keep: ProbeResult | None,
                           keep_checkpoint: str | None = None) -> int:
    """Delete the Train runs of the probes the full run does not continue from; returns how many."""
    dropped = 0
    for r in results:
        if r.checkpoint and r is not keep and r.checkpoint != keep_checkpoint:
            storage.delete(storage.run_folder(r.checkpoint))
            dropped += 1
    return dropped


# ---- decision: the race between the best SLW candidate and the control --------------------------------


def new_arms(job: Job, chosen: Probe, seed: ProbeResult, control: ProbeResult) -> dict[str, Arm]:
    """Both arms at their probes' ends, each with its own MLflow child run (same metric names)."""
    arms = R.start_arms(job.spec, chosen, seed, control)
    if not R.segment_milestones(max(seed.tokens, control.tokens), job.spec):
        return arms  # the probes already reach the race budget: nothing to train, no runs to show
    for arm in arms.values():
        spec = arm.spec(job.spec)
        name = f"race-{'slw' if arm.slw else 'control-no-slw'}-{job.job_id}"
        arm.mlflow_run_id = job.track("create a race arm's run", tracking.create_run, tracking.experiment_name(spec),
                                      name, parent_run_id=job.parent_run_id, params=tracking.run_params(spec),
                                      tags={M.TAG_KIND: M.KIND_RACE, M.TAG_JOB_ID: job.job_id,
                                            M.TAG_RACE_ARM: arm.name, M.TAG_CONTINUED_FROM: arm.checkpoint,
                                            **tracking.knob_tags(spec)})
    return arms


def run_race(job: Job, chosen: Probe, seed: ProbeResult, control: ProbeResult) -> tuple[dict, R.Decision]:
    """The race, journaled in job.json `race` after every segment: a restarted driver goes on from there."""
    state = job.state.get("race")
    if state:
        arms, done, decision = R.from_journal(state)
        if decision is not None:
            return arms, decision
        job.status(phase=M.PHASE_SELECTING, progress=f"race: {done} segment(s) finished before the restart, "
                                                      f"not rerun")
    else:
        arms, done = new_arms(job, chosen, seed, control), 0

    def save(journal: dict) -> None:
        """Journal first, then drop each arm's previous race run (its new checkpoint supersedes it)."""
        before = {k: a["checkpoint"] for k, a in (job.state.get("race") or {}).get("arms", {}).items()}
        job.state["race"] = journal
        job.save()
        if job.spec.tuning.keep_probe_checkpoints:
            return
        for name, old in before.items():
            if old and old != journal["arms"][name]["checkpoint"] and f"race-{name}-seg" in old:
                storage.delete(storage.run_folder(old))

    def segment(arms_: list[Arm], until: int, index: int) -> None:
        run_race_round(job.spec, arms_, until, index, job_id=job.job_id, storage=job.storage, mlflow_uri=job.uri,
                       spill_dir=job.spill_dir, trace_root=str(job.out.resolve()))

    job.status(phase=M.PHASE_SELECTING, progress=f"race: s={chosen.start_length} T={chosen.duration_steps} "
                                                  f"against the control, up to {job.spec.race_tokens():,} tokens")
    decision = R.race(job.spec, arms, segment, save=save, done_segments=done,
                      log=lambda line: job.status(progress=line))
    for arm in arms.values():
        if arm.mlflow_run_id:
            won = arm.name == decision.winner
            job.track("tag a race arm", tracking.set_tags, arm.mlflow_run_id,
                      {M.TAG_VERDICT: arm.verdict, M.TAG_DECISION: "won" if won else "lost",
                       M.TAG_REASON: decision.reason})
            job.track("end a race arm's run", tracking.end_run, arm.mlflow_run_id,
                      M.RUN_FAILED if arm.failed else (M.RUN_FINISHED if won else M.RUN_KILLED))
    return arms, decision


def drop_race_loser(job: Job, arms: dict | None, keep: str | None) -> None:
    """Delete the race runs the full run does not continue from (tuning.keep_probe_checkpoints: false)."""
    for arm in (arms or {}).values():
        if arm.checkpoint and arm.checkpoint != keep and arm.checkpoint.startswith(job.storage):
            storage.delete(storage.run_folder(arm.checkpoint))


def job_disk_bytes(job: Job) -> int:
    """What the job keeps on disk: its folder plus its Ray runs in storage."""
    runs = storage.job_runs(job.storage, storage.job_prefix(job.spec.name, job.job_id))
    return storage.size_bytes(str(job.out)) + sum(storage.size_bytes(r) for r in runs)


def run_job(spec: JobSpec | None, out_dir: str | Path, *, address: str | None = None, job_id: str | None = None,
            full_run: bool = True, resume: bool = False) -> dict:
    """The whole job; returns the report (also written to out_dir/report.json).

    `resume=True` goes on with the job persisted in `out_dir` (its spec, id and finished rounds).
    """
    job = Job.resume(out_dir, "resumed with --resume") if resume else Job(spec, Path(out_dir), job_id)
    spec = job.spec
    if spec.model.entrypoint:  # fail here, naming the field, rather than in every probe
        load_entrypoint(spec.model.entrypoint)
    ensure_ray(address, num_cpus=local_cpus_for(spec))
    job.start()
    status = M.RUN_FAILED
    try:
        search_spec, fit_note = spec.fitted_to_run()  # T that the run (and the race) can judge
        if fit_note and fit_note not in job.notes:
            job.notes.append(fit_note)
        search = make_search(search_spec, study_name=f"{spec.name}-{job.job_id}",
                             default_storage=f"sqlite:///{(job.out / 'optuna.db').resolve()}")
        results, control = run_search(job, search)
        chosen = search.chosen()
        job.status(phase=M.PHASE_SELECTING, progress=f"{len(results)} probes done")
        comparison, decision, arms = decide(spec, chosen, results, control, lambda *probes: run_race(job, *probes))
        baseline_wins = comparison[M.REPORT_BASELINE_WINS]
        outcome, error = job_outcome(results, chosen, None, baseline_wins)
        go, knobs, seed_probe = full_run_plan(spec, chosen, baseline_wins, control, results)
        start_from = start_point(arms, knobs, seed_probe)
        if not spec.tuning.keep_probe_checkpoints:
            dropped = drop_probe_checkpoints(job, results + [control] * (control is not None),
                                             None if arms else seed_probe, start_from)
            drop_race_loser(job, arms, start_from)
            if dropped:
                job.notes.append(f"deleted the checkpoints of {dropped} probe(s) the full run does not continue "
                                 f"from (tuning.keep_probe_checkpoints: false)")
        report = build_report(spec=spec, job_id=job.job_id, strategy=spec.tuning.strategy, probes=results,
                              chosen=chosen, notes=list(search.notes) + job.notes, violations=search.violations(),
                              reuse_probe=spec.tuning.reuse_probe_checkpoint, parent_run_id=job.parent_run_id,
                              outcome=outcome, error=error, control=control, comparison=comparison,
                              decision=decision)
        plots = write_plots(results, spec, chosen, job.out, decision=decision)
        outcome_tags = {M.TAG_VERDICT: M.CHOSEN if chosen else M.NONE_STABLE,
                        M.TAG_DECISION: decision["winner"] or "-"}
        if chosen:
            outcome_tags.update({M.TAG_CHOSEN_START: chosen.start_length,
                                 M.TAG_CHOSEN_DURATION: chosen.duration_steps})
        job.set_tags(outcome_tags)
        write_report(report, job.out)
        if go and full_run and outcome != M.OUTCOME_PROBES_CRASHED:
            report[M.REPORT_FULL_RUN] = run_full(job, knobs, start_from)
            report[M.REPORT_OUTCOME], report[M.REPORT_ERROR] = job_outcome(results, chosen, report[M.REPORT_FULL_RUN],
                                                                           baseline_wins)
        finish_report(job, report, results, control)
        report_files = write_report(report, job.out)
        job.set_tags({M.TAG_OUTCOME: report[M.REPORT_OUTCOME], M.TAG_REASON: report[M.REPORT_ERROR] or "-"})
        if job.logs_to_mlflow:
            for path in report_files + plots:
                job.track("log the report", tracking.log_artifact, job.parent_run_id, str(path))
        job.status(phase=M.PHASE_DONE, progress=report[M.REPORT_ERROR] or "done")
        status = M.RUN_FINISHED if report[M.REPORT_OUTCOME] in (M.OUTCOME_DONE, M.OUTCOME_NONE_STABLE) else M.RUN_FAILED
        return report
    finally:
        if job.logs_to_mlflow:
            job.track("end the job's run", tracking.end_run, job.parent_run_id, status)


def finish_report(job: Job, report: dict, results: list[ProbeResult], control: ProbeResult | None) -> None:
    """What the job learned around the search: restarts, warnings, metrics MLflow missed, disk use."""
    unsent = sum(r.mlflow_unsent for r in results + [control] * (control is not None))
    unsent += (report.get(M.REPORT_FULL_RUN) or {}).get("mlflow_unsent") or 0
    if unsent:
        job.warn(f"{unsent} metrics never reached MLflow; they are kept in {job.spill_dir}")
    report.update({M.REPORT_RESTARTS: list(job.restarts), M.REPORT_WARNINGS: list(job.warnings),
                   M.REPORT_DISK_BYTES: job_disk_bytes(job)})


def tune_function(train_fn: Callable, spec: JobSpec | dict | str, out_dir: str | Path = "slwtune-out",
                  **run_job_kwargs) -> dict:
    """Tune SLW for your own training function: probes, selection and full run, as `slwtune tune`.

    train_fn: a module-level function `train_fn(ctx)` (see `slwtune.user_loop`); spec: a
    `JobSpec`, a dict, or a spec file / preset name; its `model.entrypoint` is set from train_fn.
    Other keyword arguments go to `run_job` (address, job_id, full_run, ...).
    Returns the job's report (also written to out_dir/report.json).
    """
    entrypoint = entrypoint_of(train_fn)
    base = spec if isinstance(spec, (JobSpec, dict)) else load_spec(spec)
    data = base.to_dict() if isinstance(base, JobSpec) else dict(base)
    data["model"] = {**(data.get("model") or {}), "entrypoint": entrypoint}
    return run_job(parse_spec(data), out_dir, **run_job_kwargs)
