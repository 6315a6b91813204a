"""/v1/jobs: submit, list, read, trials, logs, cancel."""

# No `from __future__ import annotations`: route annotations use limits from the settings in scope.

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import BackendsDep, CurrentPrincipal, SessionDep
from service.api.handlers import BACKEND_ERRORS, ERRORS
from service.backends import Backends
from service.db import JobRow, as_utc
from service.jobs import actions, reconciliation, submission
from service.schemas import (
    JobCreate,
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


def job_public(row: JobRow, b: Backends, detail: bool = False) -> JobPublic | JobDetail:
    settings = b.settings
    links = JobLinks(
        ray_dashboard=b.ray.dashboard_link(settings.ray_links_base(), row.ray_submission_id),
        mlflow_run=b.mlflow.run_link(settings.mlflow_links_base(row.mlflow_tracking_uri), row.mlflow_experiment_id,
                                     row.mlflow_parent_run_id),
    )
    fields = dict(id=row.id, name=row.name, state=row.state, phase=row.phase, progress=row.progress,
                  chosen=row.chosen, error=row.error, cancel_requested=row.cancel_requested,
                  created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
                  ray_submission_id=row.ray_submission_id, mlflow_parent_run_id=row.mlflow_parent_run_id, links=links)
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
                  offset: Annotated[int, Query(ge=0)] = 0) -> JobsPublic:
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

    @r.get("/{job_id}/trials", response_model=TrialsPublic, responses={**ERRORS, **BACKEND_ERRORS})
    def read_trials(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep) -> TrialsPublic:
        """Probe trials and the full run, from the job's MLflow parent run (oldest first)."""
        row = actions.get_job(session, principal, job_id)
        data = actions.trials(session, row, b)
        return TrialsPublic(data=[TrialPublic(**t) for t in data], count=len(data))

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

    return r
