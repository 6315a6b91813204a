"""/healthz (the process is up) and /readyz (the registry, Ray and MLflow answer); no token needed."""

# No `from __future__ import annotations`: route annotations use limits from the settings in scope.

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.backends import BackendError, BackendUnavailable
from service.schemas import Check, Health, Readiness
from service.settings import Settings

READINESS_RESPONSES = {503: {"model": Readiness, "description": "a dependency is unreachable"}}


def _check(probe) -> Check:
    try:
        probe()
    except (BackendUnavailable, BackendError) as exc:
        return Check(ok=False, detail=str(exc))
    return Check(ok=True, detail="ok")


def _database(engine) -> Check:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check(ok=False, detail=f"{type(exc).__name__}")
    return Check(ok=True, detail="ok")


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["health"])

    @r.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up."""
        return Health()

    @r.get("/readyz", response_model=Readiness, responses=READINESS_RESPONSES)
    def readyz(request: Request, response: Response) -> Readiness:
        """The registry, the Ray Jobs API and the MLflow tracking server are all reachable."""
        state = request.app.state
        checks = {"database": _database(state.engine),
                  "ray": _check(state.ray.ping),
                  "mlflow": _check(lambda: state.mlflow.health(settings.mlflow_tracking_uri))}
        ready = all(c.ok for c in checks.values())
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="ready" if ready else "not_ready", checks=checks)

    return r
