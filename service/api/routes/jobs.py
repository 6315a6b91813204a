"""/v1/jobs: submit, list, read, trials, logs, cancel, delete."""

# No `from __future__ import annotations`: route annotations use limits from the settings in scope.

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from slwtune import metrics as M

from service.api.deps import BackendsDep, CurrentPrincipal, SessionDep
from service.api.handlers import BACKEND_ERRORS, ERRORS
from service.backends import Backends
from service.db import JobRow, as_utc
from service.jobs import actions, reconciliation, submission
from service.schemas import (
    ControlProbe,
    Decision,
    Evaluation,
    FullRun,
    JobCreate,
    JobDeleted,
    JobDetail,
    JobLinks,
    JobLogs,
    JobPublic,
    JobsPublic,
    JobState,
    Message,
    TrialPublic,
    TrialsPublic,
    ValidationProblems,
)
from service.settings import Settings

CREATE_RESPONSES = {
    200: {"model": JobDetail, "description": "replay of an earlier request with this Idempotency-Key"},
    400: {"model": Message, "description": "the body cannot be parsed at all"},
    409: {"model": Message, "description": "Idempotency-Key reused for a different spec, or its first request "
                                           "still being submitted (retry after Retry-After)"},
    413: {"model": Message, "description": "request body too large"},
    422: {"model": ValidationProblems, "description": "invalid spec, or over a per-job limit of this service: "
                                                      "every bad field and value"},
    429: {"model": Message, "description": "over a per-principal limit (unfinished jobs, GPUs held): "
                                           "the limit and the value"},
    **ERRORS, **BACKEND_ERRORS,
}
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=255)]
CANCEL_RESPONSES = {409: {"model": Message, "description": "the job already ended"}, **ERRORS, **BACKEND_ERRORS}
DELETE_RESPONSES = {409: {"model": Message, "description": "the job's driver has not stopped yet; nothing was "
                                                           "deleted (retry after Retry-After)"},
                    **ERRORS, **BACKEND_ERRORS}
MAX_OFFSET = 1_000_000_000  # a larger offset is past any registry (and past what SQLite's integers hold)


def _part(model, data):
    """A report section as its schema, or None when it is missing or not what the schema expects
    (a report from another slwtune version must not break the job read)."""
    try:
        return model.model_validate(data) if isinstance(data, dict) else None
    except ValidationError:
        return None


def _typed(value, kind: type):
    """`value` when it is a `kind`, else None (a report from another slwtune version)."""
    return value if isinstance(value, kind) else None


def job_public(row: JobRow, b: Backends, detail: bool = False) -> JobPublic | JobDetail:
    settings = b.settings
    links = JobLinks(
        ray_dashboard=b.ray.dashboard_link(settings.ray_links_base(), row.ray_submission_id),
        mlflow_run=b.mlflow.run_link(settings.mlflow_links_base(row.mlflow_tracking_uri), row.mlflow_experiment_id,
                                     row.mlflow_parent_run_id),
    )
    result = row.result or {}
    warnings = result.get(M.REPORT_WARNINGS)
    fields = dict(id=row.id, name=row.name, state=row.state, phase=row.phase, progress=row.progress,
                  chosen=row.chosen, error=row.error, cancel_requested=row.cancel_requested,
                  created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
                  ray_submission_id=row.ray_submission_id, mlflow_parent_run_id=row.mlflow_parent_run_id, links=links,
                  outcome=row.outcome, full_run=_part(FullRun, result.get(M.REPORT_FULL_RUN)),
                  control=_part(ControlProbe, result.get(M.REPORT_CONTROL)),
                  decision=_part(Decision, result.get(M.REPORT_DECISION)),
                  evaluation=_part(Evaluation, result.get(M.REPORT_EVALUATION)),
                  baseline_wins=_typed(result.get(M.REPORT_BASELINE_WINS), bool),
                  message=_typed(result.get(M.REPORT_MESSAGE), str),
                  warnings=[str(w) for w in warnings] if isinstance(warnings, list) else [],
                  disk_bytes=_typed(result.get(M.REPORT_DISK_BYTES), int),
                  restarts=row.restarts or [],
                  unavailable={} if row.terminal else b.outages.current())
    return JobDetail(spec=row.spec, **fields) if detail else JobPublic(**fields)


def _timing(response: Response, b: Backends) -> None:
    if b.timer.spent:
        response.headers["Server-Timing"] = b.timer.header()


def router(settings: Settings) -> APIRouter:
    r = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @r.post("", response_model=JobDetail, status_code=status.HTTP_201_CREATED, responses=CREATE_RESPONSES)
    async def create_job(body: JobCreate, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                         response: Response, idempotency_key: IdempotencyKey = None) -> JobDetail:
        """Submit a job: a full `spec`, or a `preset` with dotted-key `overrides`."""
        row, replayed = await run_in_threadpool(submission.submit, session, b, principal, body, idempotency_key)
        _timing(response, b)
        if replayed:
            response.status_code = status.HTTP_200_OK
            response.headers["Idempotent-Replayed"] = "true"
        response.headers["Location"] = f"/v1/jobs/{row.id}"
        return job_public(row, b, detail=True)

    @r.get("", response_model=JobsPublic, responses=ERRORS)
    def read_jobs(principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                  state: JobState | None = None,
                  limit: Annotated[int, Query(ge=1, le=settings.max_page_size)] = 50,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> JobsPublic:
        """The caller's jobs, newest first."""
        rows, count = actions.list_jobs(session, principal, state, limit, offset)
        for row in rows:
            reconciliation.refresh(session, row, b)
        return JobsPublic(data=[job_public(row, b) for row in rows], count=count)

    @r.get("/{job_id}", response_model=JobDetail, responses=ERRORS)
    async def read_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                       request: Request, response: Response) -> JobDetail:
        """State, phase, progress, chosen knobs and links to the Ray dashboard and the MLflow run."""
        # The hot path. A SQLite primary-key read costs less than a thread-pool hop, so it runs on the
        # event loop; a network database, and any reconciliation with Ray/MLflow, go to the thread pool.
        if request.app.state.inline_reads:
            row = actions.get_job(session, principal, job_id)
        else:
            row = await run_in_threadpool(actions.get_job, session, principal, job_id)
        if reconciliation.needs_refresh(row, b, reader=True):
            await run_in_threadpool(reconciliation.refresh, session, row, b)
        _timing(response, b)
        return job_public(row, b, detail=True)

    @r.get("/{job_id}/trials", response_model=TrialsPublic, responses={**ERRORS, 502: BACKEND_ERRORS[502]})
    def read_trials(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep) -> TrialsPublic:
        """Probe trials and the full run, from the job's MLflow parent run (oldest first).

        While MLflow cannot be reached in time, the trials as last read, with `stale` and a `degraded` note."""
        row = actions.get_job(session, principal, job_id)
        data, degraded = actions.trials(session, row, b)
        return TrialsPublic(data=[TrialPublic(**t) for t in data], count=len(data), stale=degraded is not None,
                            degraded=degraded)

    @r.get("/{job_id}/logs", response_model=JobLogs, responses={**ERRORS, **BACKEND_ERRORS})
    def read_logs(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                  tail: Annotated[int, Query(ge=1, le=settings.logs_max_lines)] = 200) -> JobLogs:
        """The last `tail` lines of the driver's log (from Ray)."""
        row = actions.get_job(session, principal, job_id)
        lines, truncated = actions.tail_logs(row, b, tail)
        return JobLogs(job_id=row.id, lines=lines, truncated=truncated)

    @r.post("/{job_id}/cancel", response_model=JobDetail, status_code=status.HTTP_202_ACCEPTED,
            responses=CANCEL_RESPONSES)
    def cancel_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep) -> JobDetail:
        """Stop the job's Ray job; its state becomes `cancelled` once Ray confirms (often before this returns)."""
        row = actions.get_job(session, principal, job_id)
        return job_public(actions.cancel(session, row, b), b, detail=True)

    @r.delete("/{job_id}", response_model=JobDeleted, responses=DELETE_RESPONSES)
    def delete_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                   response: Response, delete_mlflow_runs: bool = False) -> JobDeleted:
        """Cancel the job if it runs, then delete its checkpoints and its job folder, and forget it.

        Its MLflow runs are kept (the record of what was tried) unless `delete_mlflow_runs=true`.
        """
        row = actions.get_job(session, principal, job_id)
        deleted = actions.delete(session, row, b, delete_mlflow_runs)
        _timing(response, b)
        return JobDeleted(**deleted)

    return r
