"""Every error the routes let through, mapped to its status code once, and the bodies they get.

SpecError -> 422 (every bad field and value), NotFound -> 404, Conflict -> 409,
QuotaExceeded -> 429, BackendUnavailable -> 503 (with Retry-After), BackendError -> 502. `ERRORS` and
`BACKEND_ERRORS` document the same codes in the OpenAPI schema.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from slwtune.errors import SpecError

from service.backends import BackendError, BackendUnavailable
from service.errors import Conflict, NotFound, QuotaExceeded
from service.schemas import Message

ERRORS = {
    401: {"model": Message, "description": "no or wrong bearer token"},
    404: {"model": Message, "description": "no such job (or another principal's)"},
}
BACKEND_ERRORS = {
    502: {"model": Message, "description": "Ray or MLflow refused the request"},
    503: {"model": Message, "description": "Ray or MLflow is unreachable"},
}
RETRY_AFTER_S = 5  # told to clients when a backend is unreachable


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: show them as strings so a 422 can still name the bad value."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def spec_problems_detail(problems: list[dict]) -> list[dict]:
    """SpecError problems in FastAPI's 422 shape, located in the request body."""
    out = []
    for p in problems:
        field = str(p["loc"])
        loc = ["body", "preset"] if field == "preset" else ["body", "spec", *field.split(".")]
        out.append({"type": "spec", "loc": loc, "field": field, "msg": p["msg"], "input": json_safe(p.get("value"))})
    return out


def _reply(request: Request, code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    timer = getattr(request.state, "backend_timer", None)
    if timer is not None and timer.spent:
        headers["Server-Timing"] = timer.header()
    return JSONResponse(status_code=code, content={"detail": detail}, headers=headers or None)


async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg", "input")} for e in exc.errors()]
    return _reply(request, 422, json_safe(jsonable_encoder(errors)))


async def spec_error(request: Request, exc: SpecError) -> JSONResponse:
    return _reply(request, 422, spec_problems_detail(exc.problems))


async def not_found(request: Request, exc: NotFound) -> JSONResponse:
    return _reply(request, 404, str(exc))


async def conflict(request: Request, exc: Conflict) -> JSONResponse:
    retry = getattr(exc, "retry_after_s", None)
    return _reply(request, 409, str(exc), {"Retry-After": str(retry)} if retry else None)


async def quota_exceeded(request: Request, exc: QuotaExceeded) -> JSONResponse:
    return _reply(request, 429, str(exc))


async def backend_unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
    return _reply(request, 503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})


async def backend_error(request: Request, exc: BackendError) -> JSONResponse:
    return _reply(request, 502, str(exc))


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(SpecError, spec_error)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(Conflict, conflict)
    app.add_exception_handler(QuotaExceeded, quota_exceeded)
    app.add_exception_handler(BackendUnavailable, backend_unavailable)
    app.add_exception_handler(BackendError, backend_error)
