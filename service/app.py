"""The REST API: FastAPI routes over the job registry, the Ray Jobs API and MLflow.

Run with `slwtune serve` or `uvicorn service.app:app`. `app` is built on first
access (from the environment, see `service.settings`); tests build their own
with `create_app(Settings(...))`.
"""

# No `from __future__ import annotations`: route annotations use limits from the settings in scope.
import asyncio
import gc
import hashlib
import hmac
import logging
import math
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from slwtune.errors import SpecError
from slwtune.spec import list_presets, load_spec, parse_spec

from service import jobs
from service.db import JobRow, as_utc, create_tables, make_engine
from service.mlflow_reader import MlflowReader
from service.ray_jobs import BackendError, BackendTimer, BackendUnavailable, RayJobs
from service.schemas import (
    Check,
    Health,
    JobCreate,
    JobDetail,
    JobLinks,
    JobLogs,
    JobPublic,
    JobsPublic,
    JobState,
    Message,
    Readiness,
    SearchSpacePublic,
    SearchSpacesPublic,
    SearchSpaceSummary,
    TrialPublic,
    TrialsPublic,
    ValidationProblems,
)
from service.settings import Settings, get_settings

log = logging.getLogger("slwtune.service")

API_DESCRIPTION = """
Submit Sequence Length Warmup tuning jobs and follow them.

A job runs as one Ray job (its driver probes (start length, T) pairs, selects the knobs and
trains the full run); progress and trials come from the job's MLflow parent run.
Every endpoint except `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.
"""


# ---- error bodies ------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: show them as strings so a 422 can still name the bad value."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def spec_problems_detail(problems: list[dict]) -> list[dict]:
    """SpecError problems in FastAPI's 422 shape, located in the request body."""
    out = []
    for p in problems:
        field = str(p["loc"])
        loc = ["body", "preset"] if field == "preset" else ["body", "spec", *field.split(".")]
        out.append({"type": "spec", "loc": loc, "field": field, "msg": p["msg"], "input": _json_safe(p.get("value"))})
    return out


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg", "input")} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})


ERRORS = {
    401: {"model": Message, "description": "no or wrong bearer token"},
    404: {"model": Message, "description": "no such job (or another principal's)"},
}
BACKEND_ERRORS = {
    502: {"model": Message, "description": "Ray or MLflow refused the request"},
    503: {"model": Message, "description": "Ray or MLflow is unreachable"},
}


def backend_http_error(exc: BackendUnavailable | BackendError) -> HTTPException:
    code = 503 if isinstance(exc, BackendUnavailable) else 502
    return HTTPException(code, detail=str(exc), headers={"Retry-After": "5"} if code == 503 else None)


# ---- dependencies ----------------------------------------------------------------------------------


# Dependencies are `async def` (a sync one costs a thread-pool hop per request) and do not block.
async def get_session(request: Request) -> AsyncIterator[Session]:
    # Opening a Session does not touch the database; the routes do their I/O in the thread pool
    # (SQLite reads excepted, see read_job). Closing may roll back: a round trip on a network database.
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if request.app.state.inline_reads:
            session.close()
        else:
            await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]

bearer = HTTPBearer(auto_error=False, description="a token from SLWTUNE_API_TOKENS")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def get_principal(request: Request,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The principal whose token this is; 401 otherwise. Compares fixed-length digests in constant time."""
    if creds is None or not creds.credentials:
        raise HTTPException(401, detail="missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    given = _digest(creds.credentials)
    found = None
    for principal, digest in request.app.state.token_digests:  # no early exit: every token is compared
        if hmac.compare_digest(given, digest):
            found = principal
    if found is None:
        raise HTTPException(401, detail="invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return found


CurrentPrincipal = Annotated[str, Depends(get_principal)]


async def get_backends(request: Request) -> jobs.Backends:
    s = request.app.state
    return jobs.Backends(settings=s.settings, ray=s.ray, mlflow=s.mlflow, timer=BackendTimer(), clock=s.clock)


BackendsDep = Annotated[jobs.Backends, Depends(get_backends)]


def _own_job(session: Session, principal: str, job_id: str) -> JobRow:
    try:
        return jobs.get_job(session, principal, job_id)
    except jobs.JobNotFound:
        raise HTTPException(404, detail=f"no job {job_id!r}") from None


def _timing(response: Response, b: jobs.Backends) -> None:
    if b.timer.spent:
        response.headers["Server-Timing"] = b.timer.header()


def job_public(row: JobRow, b: jobs.Backends, detail: bool = False) -> JobPublic | JobDetail:
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


# ---- the app -------------------------------------------------------------------------------------


def warm_up() -> None:
    """Import what requests would otherwise import on first use (seconds: torch via the spec's model
    presets, the Ray and MLflow clients), so no request pays for it."""
    import mlflow.tracking  # noqa: F401
    import ray.job_submission  # noqa: F401

    parse_spec({})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(create_tables, app.state.engine)
        await run_in_threadpool(warm_up)
        b = jobs.Backends(settings=settings, ray=app.state.ray, mlflow=app.state.mlflow, timer=BackendTimer(),
                          clock=app.state.clock)

        def reconcile(only_stale: bool) -> int:
            with Session(app.state.engine, expire_on_commit=False) as session:
                return jobs.reconcile_all(session, b, only_stale=only_stale)

        n = await run_in_threadpool(reconcile, False)
        log.info("reconciled %d unfinished job(s) with Ray and MLflow", n)

        async def reconciler() -> None:
            # Keeps unfinished jobs fresh off the request path, so reads seldom wait on Ray or MLflow.
            while True:
                await asyncio.sleep(settings.refresh_interval_s)
                try:
                    await run_in_threadpool(reconcile, True)
                except Exception:  # noqa: BLE001 - a bad pass must not end the loop; the next one retries
                    log.exception("background reconciliation failed")

        task = asyncio.create_task(reconciler()) if settings.refresh_interval_s > 0 else None
        # Torch, Ray and MLflow leave ~350k objects that a full collection walks (~0.1-0.2 s, a pause
        # every request in flight waits for). They live as long as the process: take them out of the GC.
        gc.collect()
        gc.freeze()
        yield
        if task is not None:
            task.cancel()
        app.state.engine.dispose()

    app = FastAPI(
        title="slwtune", version="1", description=API_DESCRIPTION, lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
        openapi_tags=[{"name": "jobs", "description": "tuning jobs"},
                      {"name": "search-spaces", "description": "presets to start from"},
                      {"name": "health", "description": "liveness and readiness"}],
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.inline_reads = app.state.engine.dialect.name == "sqlite"
    app.state.ray = RayJobs(settings.ray_address, timeout=settings.backend_timeout_s,
                            token=settings.ray_token.get_secret_value() if settings.ray_token else None)
    app.state.mlflow = MlflowReader(timeout=settings.backend_timeout_s)
    app.state.clock = jobs.RefreshClock()
    app.state.token_digests = [(p, _digest(t.get_secret_value())) for p, t in settings.api_tokens.items()]
    app.add_exception_handler(RequestValidationError, validation_error_handler)

    # ---- jobs ----

    @app.post("/v1/jobs", response_model=JobDetail, status_code=status.HTTP_201_CREATED, tags=["jobs"],
              responses={200: {"model": JobDetail, "description": "replay of an earlier request with this "
                                                                  "Idempotency-Key"},
                         409: {"model": Message, "description": "Idempotency-Key reused for a different spec"},
                         413: {"model": Message, "description": "request body too large"},
                         422: {"model": ValidationProblems, "description": "invalid spec: every bad field and value"},
                         **ERRORS, **BACKEND_ERRORS})
    async def create_job(body: JobCreate, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                         response: Response,
                         idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> JobDetail:
        """Submit a job: a full `spec`, or a `preset` with dotted-key `overrides`."""
        try:
            row, replayed = await run_in_threadpool(jobs.submit, session, b, principal, body, idempotency_key)
        except SpecError as exc:
            raise HTTPException(422, detail=spec_problems_detail(exc.problems)) from None
        except jobs.IdempotencyConflict as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except (BackendUnavailable, BackendError) as exc:
            raise backend_http_error(exc) from None
        finally:
            _timing(response, b)
        if replayed:
            response.status_code = status.HTTP_200_OK
            response.headers["Idempotent-Replayed"] = "true"
        response.headers["Location"] = f"/v1/jobs/{row.id}"
        return job_public(row, b, detail=True)

    @app.get("/v1/jobs", response_model=JobsPublic, tags=["jobs"], responses=ERRORS)
    def read_jobs(principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                  state: JobState | None = None,
                  limit: Annotated[int, Query(ge=1, le=settings.max_page_size)] = 50,
                  offset: Annotated[int, Query(ge=0)] = 0) -> JobsPublic:
        """The caller's jobs, newest first."""
        rows, count = jobs.list_jobs(session, principal, state, limit, offset)
        for row in rows:
            jobs.refresh(session, row, b)
        return JobsPublic(data=[job_public(r, b) for r in rows], count=count)

    @app.get("/v1/jobs/{job_id}", response_model=JobDetail, tags=["jobs"], responses=ERRORS)
    async def read_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                       response: Response) -> JobDetail:
        """State, phase, progress, chosen knobs and links to the Ray dashboard and the MLflow run."""
        # The hot path. A SQLite primary-key read costs less than a thread-pool hop, so it runs on the
        # event loop; a network database, and any reconciliation with Ray/MLflow, go to the thread pool.
        if app.state.inline_reads:
            row = _own_job(session, principal, job_id)
        else:
            row = await run_in_threadpool(_own_job, session, principal, job_id)
        if jobs.needs_refresh(row, b, reader=True):
            await run_in_threadpool(jobs.refresh, session, row, b)
        _timing(response, b)
        return job_public(row, b, detail=True)

    @app.get("/v1/jobs/{job_id}/trials", response_model=TrialsPublic, tags=["jobs"],
             responses={**ERRORS, **BACKEND_ERRORS})
    def read_trials(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep) -> TrialsPublic:
        """Probe trials and the full run, from the job's MLflow parent run (oldest first)."""
        row = _own_job(session, principal, job_id)
        try:
            data = jobs.trials(session, row, b)
        except (BackendUnavailable, BackendError) as exc:
            raise backend_http_error(exc) from None
        return TrialsPublic(data=[TrialPublic(**t) for t in data], count=len(data))

    @app.get("/v1/jobs/{job_id}/logs", response_model=JobLogs, tags=["jobs"], responses={**ERRORS, **BACKEND_ERRORS})
    def read_logs(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep,
                  tail: Annotated[int, Query(ge=1, le=settings.logs_max_lines)] = 200) -> JobLogs:
        """The last `tail` lines of the driver's log (from Ray)."""
        row = _own_job(session, principal, job_id)
        try:
            lines, truncated = jobs.tail_logs(row, b, tail)
        except (BackendUnavailable, BackendError) as exc:
            raise backend_http_error(exc) from None
        return JobLogs(job_id=row.id, lines=lines, truncated=truncated)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobDetail, status_code=status.HTTP_202_ACCEPTED,
              tags=["jobs"], responses={409: {"model": Message, "description": "the job already ended"},
                                        **ERRORS, **BACKEND_ERRORS})
    def cancel_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, b: BackendsDep) -> JobDetail:
        """Stop the job's Ray job; its state becomes `cancelled` once Ray confirms (often before this returns)."""
        row = _own_job(session, principal, job_id)
        try:
            row = jobs.cancel(session, row, b)
        except jobs.JobFinished as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except (BackendUnavailable, BackendError) as exc:
            raise backend_http_error(exc) from None
        return job_public(row, b, detail=True)

    # ---- search spaces ----

    @app.get("/v1/search-spaces", response_model=SearchSpacesPublic, tags=["search-spaces"], responses=ERRORS)
    def read_search_spaces(principal: CurrentPrincipal) -> SearchSpacesPublic:
        """The presets a job can start from."""
        data = []
        for name in list_presets():
            try:
                spec = load_spec(name)
            except SpecError as exc:  # a broken preset file must not hide the others
                log.warning("preset %s is invalid: %s", name, exc)
                continue
            data.append(SearchSpaceSummary(name=name, model_preset=spec.model.preset,
                                           train_tokens=spec.budget.train_tokens, strategy=spec.tuning.strategy))
        return SearchSpacesPublic(data=data, count=len(data))

    @app.get("/v1/search-spaces/{name}", response_model=SearchSpacePublic, tags=["search-spaces"], responses=ERRORS)
    def read_search_space(name: str, principal: CurrentPrincipal) -> SearchSpacePublic:
        """A preset's full spec, defaults filled in."""
        if name not in list_presets():
            raise HTTPException(404, detail=f"no search space {name!r}; see GET /v1/search-spaces")
        try:
            spec = load_spec(name)
        except SpecError as exc:
            raise HTTPException(500, detail=f"preset {name!r} is invalid: {exc}") from None
        return SearchSpacePublic(name=name, spec=spec.to_dict())

    # ---- health ----

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up."""
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["health"],
             responses={503: {"model": Readiness, "description": "a dependency is unreachable"}})
    def readyz(request: Request, response: Response) -> Readiness:
        """The registry, the Ray Jobs API and the MLflow tracking server are all reachable."""
        state = request.app.state
        checks: dict[str, Check] = {}
        try:
            with state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = Check(ok=True, detail="ok")
        except SQLAlchemyError as exc:
            checks["database"] = Check(ok=False, detail=f"{type(exc).__name__}")
        probes = {"ray": state.ray.ping, "mlflow": lambda: state.mlflow.health(settings.mlflow_tracking_uri)}
        for name, probe in probes.items():
            try:
                probe()
                checks[name] = Check(ok=True, detail="ok")
            except (BackendUnavailable, BackendError) as exc:
                checks[name] = Check(ok=False, detail=str(exc))
        ready = all(c.ok for c in checks.values())
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="ready" if ready else "not_ready", checks=checks)

    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app` and `slwtune serve` look `app` up here; built once, from the environment.
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = create_app()
    return _app
