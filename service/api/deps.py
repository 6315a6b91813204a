"""The typed dependencies every route declares: the DB session, the calling principal, the backends.

All `async def`: a sync dependency costs a thread-pool hop per request, and none of these blocks.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, AsyncIterator

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.backends import Backends, BackendTimer


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


def token_digest(token: str) -> bytes:
    """Tokens are kept and compared as SHA-256 digests: fixed length, so the comparison leaks no length."""
    return hashlib.sha256(token.encode()).digest()


async def get_principal(request: Request,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The principal whose token this is; 401 otherwise. Compares fixed-length digests in constant time."""
    if creds is None or not creds.credentials:
        raise HTTPException(401, detail="missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    given = token_digest(creds.credentials)
    found = None
    for principal, digest in request.app.state.token_digests:  # no early exit: every token is compared
        if hmac.compare_digest(given, digest):
            found = principal
    if found is None:
        raise HTTPException(401, detail="invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return found


CurrentPrincipal = Annotated[str, Depends(get_principal)]


async def get_backends(request: Request) -> Backends:
    s = request.app.state
    b = Backends(settings=s.settings, ray=s.ray, mlflow=s.mlflow, timer=BackendTimer(), clock=s.clock,
                 outages=s.outages, last_trials=s.last_trials)
    request.state.backend_timer = b.timer  # the error handlers report it too (Server-Timing)
    return b


BackendsDep = Annotated[Backends, Depends(get_backends)]
