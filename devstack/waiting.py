"""Waiting on a busy service: retries with backoff, polling until a state is reached.

A service on a busy machine is slow, not broken: a 5xx, a timeout or a refused connection is
tried again with exponential backoff (doubling from FIRST_BACKOFF_S up to MAX_BACKOFF_S, or the
server's Retry-After when it names one) until a deadline, as urllib3's `Retry` does
(backoff_factor * 2**n, capped by backoff_max, respecting Retry-After). Anything else (a 4xx, a
wrong answer) fails at once.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

import httpx

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


def transient(exc: BaseException) -> bool:
    """An error worth trying again: no connection, a timeout, a dropped answer, a 5xx, or a 409 that
    names a Retry-After (the API's "still being submitted / still stopping")."""
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or (code == 409 and "retry-after" in exc.response.headers)
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            return float(exc.response.headers.get("retry-after", ""))
        except ValueError:
            return None
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def retrying(call, what: str, deadline_s: float, say=None):
    """`call()`, tried again after transient errors (see `transient`) with backoff until `deadline_s`
    has passed; `say` (e.g. print) is told once per wait what is awaited and why. The last transient
    error is raised as TimeoutError naming `what`; other errors are raised at once."""
    deadline, wait = time.monotonic() + deadline_s, FIRST_BACKOFF_S
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sorted by `transient`
            left = deadline - time.monotonic()
            if not transient(exc):
                raise
            if left <= 0:
                raise TimeoutError(f"gave up after {deadline_s:.0f}s waiting for {what}: {_describe(exc)}") from exc
            pause = min(max(wait, _retry_after(exc) or 0.0), MAX_BACKOFF_S, left)
            if say is not None:
                say(f"   (waiting for {what}: {_describe(exc)}; trying again in {pause:.1f}s)")
            time.sleep(pause)
            wait = min(wait * 2, MAX_BACKOFF_S)


def get_json(client: httpx.Client, path: str, what: str, deadline_s: float = 300, say=None, **kw):
    """GET `path` on `client` and return its JSON, retrying transient errors (see `retrying`)."""
    return retrying(lambda: client.get(path, **kw).raise_for_status().json(), what, deadline_s, say)


def wait_for(fetch, done, timeout: float, what: str = "", every: float = 1.0):
    """Call `fetch` every `every` s until `done(result)`; returns that result, or fails naming `what`
    and the last result seen (the end-to-end tests and drills wait on a job's state this way).

    A transient error from `fetch` (a 5xx, a timeout, no connection: see `transient`) is waited out
    with backoff like any unfinished state; any other error is raised at once."""
    deadline, last, backoff = time.time() + timeout, None, FIRST_BACKOFF_S
    while time.time() < deadline:
        try:
            last = fetch()
        except Exception as exc:  # noqa: BLE001 - sorted by `transient`
            if not transient(exc):
                raise
            last = f"(transient error) {_describe(exc)}"
            time.sleep(min(backoff, max(0.0, deadline - time.time())))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        backoff = FIRST_BACKOFF_S
        if done(last):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {str(last)[-2000:]}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "",
              headers: dict | None = None) -> None:
    """Poll `url` until it answers 2xx; fail early when `proc` exits."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what or url} not ready after {timeout:.0f}s ({last})")
