"""The registry brought up to date with Ray (state) and MLflow (phase, progress, chosen knobs)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from slwtune import metrics as M

from service.backends import BackendError, Backends, BackendUnavailable
from service.db import TERMINAL_STATES, JobRow, as_utc, utcnow
from service.ray_jobs import RayJobInfo

log = logging.getLogger("slwtune.service")

NO_STABLE = "no stable configuration"
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


def failure_reason(info: RayJobInfo, verdict: str | None) -> str:
    """Why a FAILED driver failed: nothing stable (the parent run's verdict or the exit code), else Ray's message."""
    if verdict == M.NONE_STABLE or info.driver_exit_code == M.EXIT_NONE_STABLE:
        return NO_STABLE
    return (info.message or "the job driver failed")[:2000]


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


def _ray_info(row: JobRow, b: Backends, ray_info: RayJobInfo | None | object) -> tuple[RayJobInfo | None, bool]:
    """(Ray's answer, whether Ray answered): the caller's, or asked now."""
    if ray_info is RAY_DOWN:
        return None, False
    if ray_info is not ASK_RAY:
        return ray_info, True  # type: ignore[return-value]
    try:
        with b.timer.measure("ray"):
            return b.ray.info(row.id), True
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: Ray status unknown: %s", row.id, exc)
        return None, False


def refresh(session: Session, row: JobRow, b: Backends, *, force: bool = False,
            ray_info: RayJobInfo | None | object = ASK_RAY) -> JobRow:
    """Bring a non-terminal job up to date with Ray (state) and MLflow (phase, progress, chosen).

    Skipped while the job was refreshed recently (see `needs_refresh`) unless `force`; `ray_info`
    is Ray's answer when the caller already has it (None: Ray does not know the job). A backend that
    does not answer leaves its fields as the registry has them.
    """
    if not force and not needs_refresh(row, b, reader=True):
        return row
    if row.terminal:
        return row
    now = utcnow()

    before = (row.state, row.phase, row.progress, row.chosen, row.error, row.mlflow_parent_run_id)
    info, ray_answered = _ray_info(row, b, ray_info)

    parent = None
    # A PENDING driver has not started, so it has no MLflow run yet: skip the lookup.
    if not (info is not None and info.status == "PENDING"):
        try:
            with b.timer.measure("mlflow"):
                parent = b.mlflow.parent_run(b.tracking_uri(row), experiment_of(row.spec), row.id,
                                             row.mlflow_parent_run_id)
        except (BackendUnavailable, BackendError) as exc:
            log.warning("job %s: MLflow progress unknown: %s", row.id, exc)

    if parent is not None:
        row.mlflow_parent_run_id, row.mlflow_experiment_id = parent.run_id, parent.experiment_id
        if parent.chosen:
            row.chosen = parent.chosen
        row.phase = api_phase(parent.phase, parent.chosen, row.phase)
        row.progress = parent.progress or row.progress

    if info is not None:
        row.ray_status = info.status
        row.state = info.state
        if row.state == "failed":
            row.error = failure_reason(info, parent.verdict if parent is not None else None)
        if row.state == "cancelled":
            _close_runs(b, row)
    elif ray_answered:
        # Ray answered but has no such job: never submitted (API died mid-submit) or a cluster restarted.
        if row.ray_submission_id or now - as_utc(row.created_at) > SUBMIT_GRACE:
            row.state = "failed"
            row.error = ("Ray has no record of this job (was the cluster restarted?)" if row.ray_submission_id
                         else "the submission to Ray did not complete")

    b.clock.mark(row.id)
    if (row.state, row.phase, row.progress, row.chosen, row.error, row.mlflow_parent_run_id) == before:
        return row
    row.updated_at = now
    try:
        session.commit()
    except StaleDataError:  # the row went away meanwhile (its submission failed and was undone)
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
            return b.ray.all_jobs(), False
    except BackendUnavailable as exc:
        log.warning("Ray is unreachable; job states stay as they are: %s", exc)
        return None, True
    except BackendError as exc:
        log.warning("listing Ray jobs failed, asking one by one: %s", exc)
        return None, False


def reconcile_all(session: Session, b: Backends, *, only_stale: bool = False) -> int:
    """Refresh every non-terminal job (at start-up), or those not refreshed within the interval
    (the background reconciler); returns how many were refreshed."""
    rows = session.scalars(select(JobRow).where(JobRow.state.not_in(TERMINAL_STATES))).all()
    rows = [r for r in rows if not only_stale or needs_refresh(r, b)]
    known: dict[str, RayJobInfo] | None = None
    ray_down = False  # one unreachable answer is enough: do not wait a timeout per job
    if len(rows) > BATCH_STATUS_AT:
        known, ray_down = _listed_ray_jobs(b)
    for row in rows:
        if known is not None:
            info = known.get(row.id)
        elif ray_down:
            info = RAY_DOWN
        else:
            try:
                with b.timer.measure("ray"):
                    info = b.ray.info(row.id)
            except BackendUnavailable as exc:
                log.warning("Ray is unreachable; job states stay as they are: %s", exc)
                ray_down, info = True, RAY_DOWN
            except BackendError as exc:
                log.warning("job %s: Ray status unknown: %s", row.id, exc)
                info = RAY_DOWN
        refresh(session, row, b, force=True, ray_info=info)
    return len(rows)
