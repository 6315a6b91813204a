"""The registry brought up to date with Ray (state), MLflow (phase, progress, chosen knobs) and the
driver's report (outcome, error, the full run); a lost driver is resubmitted (`restarts`)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from slwtune import metrics as M

from service.backends import BackendError, Backends, BackendUnavailable
from service import states as S
from service.db import JobRow, as_utc, utcnow
from service.jobs.restarts import lost_reason, restart
from service.jobs.results import STOPPED_OUTSIDE, cli_error, failure_reason, load_report, outcome_of, view_fields
from service.mlflow_reader import ParentRun
from service.ray_jobs import RayJobInfo

log = logging.getLogger("slwtune.service")

# Reconciling more unfinished jobs than this at once lists Ray's jobs in one call.
BATCH_STATUS_AT = 10
# A row that never got its Ray submission (the API died between insert and submit) is failed after this.
SUBMIT_GRACE = timedelta(minutes=2)
WORKING_PHASES = (M.PHASE_PROBING, M.PHASE_SELECTING, M.PHASE_FULL_RUN)


def experiment_of(spec: dict) -> str:
    """The MLflow experiment of a stored spec: `tracking.experiment`, else the job name."""
    return (spec.get("tracking") or {}).get("experiment") or spec["name"]


def api_phase(driver_phase: str | None, chosen: dict | None, current: str | None) -> str | None:
    """The driver's phase tag as the API's phase; its final `done` keeps the last working phase."""
    if driver_phase in WORKING_PHASES:
        return driver_phase
    if driver_phase == M.PHASE_DONE:
        return M.PHASE_FULL_RUN if chosen else (current or M.PHASE_SELECTING)
    return current


def needs_refresh(row: JobRow, b: Backends, *, reader: bool = False) -> bool:
    """Whether to ask Ray and MLflow about this job now: non-terminal and not asked lately.

    The background reconciler keeps unfinished jobs within `refresh_interval_s`; a read waits for a
    refresh only when a job is twice that stale (just after start-up, or when the reconciler lags).
    """
    if row.terminal:
        return False
    return b.clock.age(row.id) >= b.settings.refresh_interval_s * (2 if reader else 1)


ASK_RAY = object()  # refresh() asks Ray itself
RAY_DOWN = object()  # the caller found Ray unreachable: leave the state as it is


def submission_of(row: JobRow) -> str:
    """The Ray submission of the job's current driver (the job id, or `<id>-r<n>` after restarts)."""
    return row.ray_submission_id or row.id


def _ray_info(row: JobRow, b: Backends, ray_info: RayJobInfo | None | object) -> tuple[RayJobInfo | None, bool]:
    """(Ray's answer, whether Ray answered): the caller's, or asked now."""
    if ray_info is RAY_DOWN:
        return None, False
    if ray_info is not ASK_RAY:
        return ray_info, True  # type: ignore[return-value]
    try:
        with b.timer.measure("ray"):
            info = b.ray.info(submission_of(row))
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: Ray status unknown: %s", row.id, exc)
        if isinstance(exc, BackendUnavailable):
            b.outages.down("ray", str(exc))
        return None, False
    b.outages.up("ray")
    return info, True


def _parent_run(row: JobRow, b: Backends, info: RayJobInfo | None) -> ParentRun | None:
    """The job's MLflow parent run, or None (not made yet, or MLflow down: noted in `b.outages`)."""
    # A PENDING driver has not started, so it has no MLflow run yet: skip the lookup.
    if info is not None and info.status == S.RAY_PENDING:
        return None
    try:
        with b.timer.measure("mlflow"):
            parent = b.mlflow.parent_run(b.tracking_uri(row), experiment_of(row.spec), row.id,
                                         row.mlflow_parent_run_id)
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: MLflow progress unknown: %s", row.id, exc)
        if isinstance(exc, BackendUnavailable):
            b.outages.down("mlflow", str(exc))
        return None
    b.outages.up("mlflow")
    return parent


def _follow_parent(row: JobRow, parent: ParentRun) -> None:
    row.mlflow_parent_run_id, row.mlflow_experiment_id = parent.run_id, parent.experiment_id
    if parent.chosen:
        row.chosen = parent.chosen
    row.phase = api_phase(parent.phase, parent.chosen, row.phase)
    row.progress = parent.progress or row.progress


def _settle(row: JobRow, b: Backends, info: RayJobInfo, parent: ParentRun | None) -> None:
    """A driver that ended the job itself: the state from Ray, what happened from its report."""
    row.state = info.state
    if row.state == S.CANCELLED:
        if not row.cancel_requested:
            row.error = STOPPED_OUTSIDE  # stopped on purpose by someone else: said, not restarted
        _close_runs(b, row)
        return
    report = load_report(row, b, ended=True)
    if report is not None:
        row.result = view_fields(report)
    row.outcome = outcome_of(report, parent)
    if row.state == S.FAILED:
        row.error = failure_reason(info, report, parent, _log_tail(row, b, info))


def _log_tail(row: JobRow, b: Backends, info: RayJobInfo) -> str | None:
    """The driver's log, read only for an invalid-input exit whose error line is not in Ray's message."""
    if info.driver_exit_code != M.EXIT_INVALID or cli_error(info.message):
        return None
    try:
        with b.timer.measure("ray"):
            return b.ray.logs(submission_of(row))[-20_000:]
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: could not read the driver's log: %s", row.id, exc)
        return None


def _fields(row: JobRow) -> tuple:
    return (row.state, row.phase, row.progress, row.chosen, row.error, row.outcome, row.result,
            row.mlflow_parent_run_id, row.ray_submission_id, row.restarts)


def refresh(session: Session, row: JobRow, b: Backends, *, force: bool = False,
            ray_info: RayJobInfo | None | object = ASK_RAY, restart_lost: bool = True) -> JobRow:
    """Bring a non-terminal job up to date with Ray (state), MLflow (phase, progress, chosen) and
    the driver's report (outcome, error, the full run); resubmit a lost driver (`restarts`).

    Skipped while the job was refreshed recently (see `needs_refresh`) unless `force`; `ray_info`
    is Ray's answer when the caller already has it (None: Ray does not know the job). A backend that
    does not answer leaves its fields as the registry has them. `restart_lost=False` leaves a lost
    driver for the caller (a cancel or delete about to stop the job anyway).
    """
    if not force and not needs_refresh(row, b, reader=True):
        return row
    if row.terminal:
        return row
    now = utcnow()
    before = _fields(row)
    info, ray_answered = _ray_info(row, b, ray_info)
    parent = _parent_run(row, b, info)
    if parent is not None:
        _follow_parent(row, parent)

    lost = lost_reason(row, info) if ray_answered else None
    if lost and not restart_lost:
        pass
    elif lost:
        restart(session, row, b, lost)
        if row.terminal:  # cancelled meanwhile, or past the restart limit: its runs end too
            _close_runs(b, row)
    elif info is not None:
        row.ray_status = info.status
        if info.state in S.TERMINAL_STATES:
            _settle(row, b, info, parent)
        else:
            # A restarted driver waiting for Ray to start it is still the same running job.
            row.state = S.RUNNING if (info.state == S.QUEUED and row.restarts) else info.state
            report = load_report(row, b, ended=False)  # control and comparison, once selected
            if report is not None:
                row.result = view_fields(report)
    elif ray_answered and not row.ray_submission_id and now - as_utc(row.created_at) > SUBMIT_GRACE:
        # Ray has no such job and the submit never finished (the API died between insert and submit).
        row.state, row.error = S.FAILED, "the submission to Ray did not complete"

    b.clock.mark(row.id)
    if _fields(row) == before:
        return row
    row.updated_at = now
    try:
        session.commit()
    except StaleDataError:  # the row went away meanwhile (its submission failed and was undone, or deleted)
        session.rollback()
    if row.terminal:
        b.clock.forget(row.id)
    return row


def _close_runs(b: Backends, row: JobRow) -> None:
    """A stopped driver cannot end its MLflow runs; mark them KILLED (best effort, for the MLflow UI)."""
    if not row.mlflow_parent_run_id or not row.mlflow_experiment_id:
        return
    try:
        b.mlflow.mark_killed(b.tracking_uri(row), row.mlflow_experiment_id, row.mlflow_parent_run_id)
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: could not mark its MLflow runs KILLED: %s", row.id, exc)


def _listed_ray_jobs(b: Backends) -> tuple[dict[str, RayJobInfo] | None, bool]:
    """(every job Ray knows, Ray down): one call for all instead of one per job."""
    try:
        with b.timer.measure("ray"):
            listed = b.ray.all_jobs()
        b.outages.up("ray")
        return listed, False
    except BackendUnavailable as exc:
        log.warning("Ray is unreachable; job states stay as they are: %s", exc)
        b.outages.down("ray", str(exc))
        return None, True
    except BackendError as exc:
        log.warning("listing Ray jobs failed, asking one by one: %s", exc)
        return None, False


def reconcile_all(session: Session, b: Backends, *, only_stale: bool = False) -> int:
    """Refresh every non-terminal job (at start-up), or those not refreshed within the interval
    (the background reconciler); returns how many were refreshed."""
    rows = session.scalars(select(JobRow).where(JobRow.state.not_in(S.TERMINAL_STATES))).all()
    rows = [r for r in rows if not only_stale or needs_refresh(r, b)]
    known: dict[str, RayJobInfo] | None = None
    ray_down = False  # one unreachable answer is enough: do not wait a timeout per job
    if len(rows) > BATCH_STATUS_AT:
        known, ray_down = _listed_ray_jobs(b)
    for row in rows:
        if known is not None:
            info = known.get(submission_of(row))
        elif ray_down:
            info = RAY_DOWN
        else:
            try:
                with b.timer.measure("ray"):
                    info = b.ray.info(submission_of(row))
                b.outages.up("ray")
            except BackendUnavailable as exc:
                log.warning("Ray is unreachable; job states stay as they are: %s", exc)
                b.outages.down("ray", str(exc))
                ray_down, info = True, RAY_DOWN
            except BackendError as exc:
                log.warning("job %s: Ray status unknown: %s", row.id, exc)
                info = RAY_DOWN
        refresh(session, row, b, force=True, ray_info=info)
    return len(rows)
