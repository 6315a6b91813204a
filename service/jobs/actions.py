"""What a principal does with its jobs once submitted: read, list, cancel, delete, logs, trials."""

from __future__ import annotations

import logging
import shutil
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from slwtune import storage
from slwtune.storage import job_prefix

from service import states as S
from service.backends import BackendError, Backends, BackendUnavailable
from service.db import JobRow, utcnow
from service.errors import JobFinished, JobNotFound, JobStillStopping
from service.jobs.reconciliation import experiment_of, refresh, submission_of
from service.jobs.results import job_dir

log = logging.getLogger("slwtune.service")

# How often a cancel asks Ray again while it waits for the stop to be confirmed.
CANCEL_POLL_S = 0.25


def get_job(session: Session, principal: str, job_id: str) -> JobRow:
    row = session.get(JobRow, job_id)
    # Another principal's job is indistinguishable from a missing one.
    if row is None or row.principal != principal:
        raise JobNotFound(job_id)
    return row


def list_jobs(session: Session, principal: str, state: str | None, limit: int, offset: int) -> tuple[list[JobRow], int]:
    where = [JobRow.principal == principal]
    if state:
        where.append(JobRow.state == state)
    count = session.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
    rows = session.scalars(select(JobRow).where(*where).order_by(JobRow.created_at.desc(), JobRow.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), count


def cancel(session: Session, row: JobRow, b: Backends) -> JobRow:
    """Ask Ray to stop the driver, then wait up to `cancel_wait_s` for Ray to report it STOPPED
    (the job is `cancelled` then); past the wait it stays as Ray last said, with `cancel_requested`."""
    refresh(session, row, b, force=True, restart_lost=False)
    if row.terminal:
        raise JobFinished(row.state)
    stop_driver(session, row, b)
    return row


def stop_driver(session: Session, row: JobRow, b: Backends) -> None:
    """Mark the cancel, stop the current driver, and wait up to `cancel_wait_s` for Ray to confirm.

    The mark comes first, so that a reconciliation pass that sees the driver STOPPED meanwhile
    takes it for a cancel, not for a lost driver to restart.
    """
    row.cancel_requested, row.updated_at = True, utcnow()
    session.commit()
    try:
        with b.timer.measure("ray"):
            b.ray.stop(submission_of(row))
    except BackendError:
        if row.ray_submission_id:
            raise
        # Never reached Ray: nothing runs, so the cancel is immediate.
        row.state, row.updated_at = S.CANCELLED, utcnow()
        session.commit()
        return
    deadline = time.monotonic() + b.settings.cancel_wait_s
    refresh(session, row, b, force=True)
    while not row.terminal and time.monotonic() < deadline:
        time.sleep(CANCEL_POLL_S)
        refresh(session, row, b, force=True)


def delete(session: Session, row: JobRow, b: Backends, delete_mlflow_runs: bool) -> dict:
    """Cancel the job if it runs, then remove its checkpoints, its job folder and its registry row.

    Its MLflow runs are kept unless `delete_mlflow_runs`. Ordered so that a refusal leaves the job
    whole (and a retry finishes the work): the driver must be stopped first (409 while Ray has not
    confirmed it, 503 when Ray cannot be reached), then MLflow (503 when it cannot be reached),
    then the files, then the row. Without its row the job cannot come back through reconciliation.
    """
    refresh(session, row, b, force=True, restart_lost=False)
    if not row.terminal:
        stop_driver(session, row, b)
        if not row.terminal:
            raise JobStillStopping()
    runs_deleted = 0
    if delete_mlflow_runs:
        runs_deleted = _delete_mlflow_runs(session, row, b)
    prefix = job_prefix(row.spec["name"], row.id)
    runs = storage.job_runs(b.settings.storage, prefix)
    freed = sum(storage.size_bytes(r) for r in runs)
    for run in runs:
        storage.delete(run)
    folder = job_dir(b.settings, row.id)
    freed += storage.size_bytes(str(folder))
    shutil.rmtree(folder, ignore_errors=True)
    session.delete(row)
    session.commit()
    b.clock.forget(row.id)
    log.info("job %s deleted: %d checkpoint run(s), %d bytes, %d MLflow run(s)", row.id, len(runs), freed,
             runs_deleted)
    return {"id": row.id, "checkpoint_runs_deleted": len(runs), "bytes_freed": freed,
            "mlflow_runs_deleted": runs_deleted}


def _delete_mlflow_runs(session: Session, row: JobRow, b: Backends) -> int:
    uri = b.tracking_uri(row)
    if not row.mlflow_parent_run_id or not row.mlflow_experiment_id:
        with b.timer.measure("mlflow"):
            parent = b.mlflow.parent_run(uri, experiment_of(row.spec), row.id)
        if parent is None:
            return 0
        row.mlflow_parent_run_id, row.mlflow_experiment_id = parent.run_id, parent.experiment_id
    with b.timer.measure("mlflow"):
        return b.mlflow.delete_runs(uri, row.mlflow_experiment_id, row.mlflow_parent_run_id)


def tail_logs(row: JobRow, b: Backends, lines: int) -> tuple[list[str], bool]:
    """The last `lines` lines of the driver's log, and whether older ones were left out."""
    with b.timer.measure("ray"):
        text = b.ray.logs(submission_of(row)) if row.ray_submission_id else ""
    all_lines = text.splitlines()
    return all_lines[-lines:], len(all_lines) > lines


def trials(session: Session, row: JobRow, b: Backends) -> tuple[list[dict], str | None]:
    """The job's trials from MLflow (empty until the driver has created its parent run), and None;
    while MLflow cannot be reached (down, or too slow to answer within the backend timeout: the
    probes share its cores), the trials as this process last read them and a note saying why and
    since when: a follower keeps its view instead of getting a 503."""
    try:
        data = _trials_from_mlflow(session, row, b)
    except BackendUnavailable as exc:
        b.outages.down("mlflow", str(exc))
        seen = b.last_trials.get(row.id)
        when = (f"as last read at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seen[0]))}" if seen
                else "none read yet")
        return (seen[1] if seen else []), f"{exc}; trials {when}"
    b.outages.up("mlflow")
    b.last_trials.put(row.id, list(data))
    return data, None


def _trials_from_mlflow(session: Session, row: JobRow, b: Backends) -> list[dict]:
    uri = b.tracking_uri(row)
    if not row.mlflow_parent_run_id or not row.mlflow_experiment_id:
        with b.timer.measure("mlflow"):
            parent = b.mlflow.parent_run(uri, experiment_of(row.spec), row.id)
        if parent is None:
            return []
        row.mlflow_parent_run_id, row.mlflow_experiment_id = parent.run_id, parent.experiment_id
        session.commit()
    with b.timer.measure("mlflow"):
        return b.mlflow.trials(uri, row.mlflow_experiment_id, row.mlflow_parent_run_id)
