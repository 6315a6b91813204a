"""What a principal does with its jobs once submitted: read, list, cancel, logs, trials."""

from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.backends import BackendError, Backends
from service.db import JobRow, utcnow
from service.errors import JobFinished, JobNotFound
from service.jobs.reconciliation import experiment_of, refresh

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
    refresh(session, row, b, force=True)
    if row.terminal:
        raise JobFinished(row.state)
    try:
        with b.timer.measure("ray"):
            b.ray.stop(row.id)
    except BackendError:
        if row.ray_submission_id:
            raise
        # Never reached Ray: nothing runs, so the cancel is immediate.
        row.state, row.cancel_requested, row.updated_at = "cancelled", True, utcnow()
        session.commit()
        return row
    row.cancel_requested, row.updated_at = True, utcnow()
    session.commit()
    deadline = time.monotonic() + b.settings.cancel_wait_s
    refresh(session, row, b, force=True)
    while not row.terminal and time.monotonic() < deadline:
        time.sleep(CANCEL_POLL_S)
        refresh(session, row, b, force=True)
    return row


def tail_logs(row: JobRow, b: Backends, lines: int) -> tuple[list[str], bool]:
    """The last `lines` lines of the driver's log, and whether older ones were left out."""
    with b.timer.measure("ray"):
        text = b.ray.logs(row.id) if row.ray_submission_id else ""
    all_lines = text.splitlines()
    return all_lines[-lines:], len(all_lines) > lines


def trials(session: Session, row: JobRow, b: Backends) -> list[dict]:
    """The job's trials from MLflow (empty until the driver has created its parent run)."""
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
