"""The REST API: `create_app` wires the routers, dependencies and handlers of `service.api`.

Run with `slwtune serve` or `uvicorn service.app:app`. `app` is built on first
access (from the environment, see `service.settings`); tests build their own
with `create_app(Settings(...))`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from slwtune.spec import parse_spec

from service.api.deps import token_digest
from service.api.handlers import register_exception_handlers
from service.api.routes import health, jobs, search_spaces
from service.backends import Backends, BackendTimer, LastKnown, Outages, RefreshClock
from service.db import create_tables, make_engine
from service.jobs.reconciliation import reconcile_all
from service.mlflow_reader import MlflowReader
from service.ray_jobs import RayJobs
from service.settings import Settings, get_settings

log = logging.getLogger("slwtune.service")

API_DESCRIPTION = """
Submit Sequence Length Warmup tuning jobs and follow them.

A job runs as one Ray job (its driver probes (start length, T) pairs, selects the knobs and
trains the full run); progress and trials come from the job's MLflow parent run.
Every endpoint except `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.
"""
OPENAPI_TAGS = [{"name": "jobs", "description": "tuning jobs"},
                {"name": "search-spaces", "description": "presets to start from"},
                {"name": "health", "description": "liveness and readiness"}]


def warm_up() -> None:
    """Import what requests would otherwise import on first use (the spec model's dependencies,
    the Ray and MLflow clients), so no request pays for it."""
    import mlflow.tracking  # noqa: F401
    import ray.job_submission  # noqa: F401

    parse_spec({})


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Tables, warm-up and a first reconciliation before serving; the background reconciler while serving."""
    settings: Settings = app.state.settings
    await run_in_threadpool(create_tables, app.state.engine)
    await run_in_threadpool(warm_up)
    b = Backends(settings=settings, ray=app.state.ray, mlflow=app.state.mlflow, timer=BackendTimer(),
                 clock=app.state.clock, outages=app.state.outages, last_trials=app.state.last_trials)

    def reconcile(only_stale: bool) -> int:
        with Session(app.state.engine, expire_on_commit=False) as session:
            return reconcile_all(session, b, only_stale=only_stale)

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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="slwtune", version="1", description=API_DESCRIPTION, lifespan=lifespan,
                  max_body_size=settings.max_body_bytes, openapi_tags=OPENAPI_TAGS)
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.inline_reads = app.state.engine.dialect.name == "sqlite"
    app.state.ray = RayJobs(settings.ray_address, timeout=settings.backend_timeout_s,
                            token=settings.ray_token.get_secret_value() if settings.ray_token else None)
    app.state.mlflow = MlflowReader(timeout=settings.backend_timeout_s)
    app.state.clock = RefreshClock()
    app.state.outages = Outages()
    app.state.last_trials = LastKnown()
    app.state.token_digests = [(p, token_digest(t.get_secret_value())) for p, t in settings.api_tokens.items()]
    register_exception_handlers(app)
    for resource in (jobs, search_spaces, health):
        app.include_router(resource.router(settings))
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
