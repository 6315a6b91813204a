"""A small client around Ray's `JobSubmissionClient`: submit, status, stop, logs.

Failures to reach the cluster (refused, timed out, auth rejected) become
`BackendUnavailable`, which the routes turn into 503; anything else Ray
refuses becomes `BackendError`. Every call has a timeout.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from service.backends import BackendError, BackendUnavailable
from service.states import RAY_TO_STATE, RUNNING


@dataclass
class RayJobInfo:
    status: str  # service.states.RAY_*: PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str | None = None
    driver_exit_code: int | None = None
    error_type: str | None = None  # Ray's JobErrorType when it FAILED (e.g. RUNTIME_ENV_SETUP_FAILURE)

    @property
    def state(self) -> str:
        return RAY_TO_STATE.get(self.status, RUNNING)


def _client_class(timeout: float):
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        """The SDK sends requests without a timeout; a hung dashboard must not hang the API."""

        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", timeout)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


class RayJobs:
    """The Ray Jobs API of one cluster, with a cached SDK client."""

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 5.0):
        self.address, self.timeout = address, timeout
        # An explicit token wins; without one, Ray's own lookup applies (RAY_AUTH_MODE=token + token file).
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client: Any = None
        self._last_ok = float("-inf")  # monotonic time of the last call Ray answered
        self._lock = threading.Lock()

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            self._client = None  # reconnect (and re-check the version) next time
            raise BackendUnavailable("Ray", f"cannot reach the Jobs API at {self.address} ({what}): "
                                            f"{type(exc).__name__}") from None
        except AuthenticationError:
            self._client = None
            raise BackendUnavailable("Ray", f"the Jobs API at {self.address} rejected the auth token; "
                                            "set SLWTUNE_RAY_TOKEN or RAY_AUTH_MODE=token") from None
        except RuntimeError as exc:
            raise BackendError("Ray", f"{what}: {str(exc)[:300]}") from None
        else:
            self._last_ok = time.monotonic()

    def client(self):
        """The cached SDK client; creating one checks the connection and version."""
        with self._lock:
            if self._client is None:
                with self._calls("connect"):
                    self._client = _client_class(self.timeout)(self.address, headers=self._headers)
            return self._client

    def ping(self, max_age_s: float = 0.0) -> None:
        """Raise BackendUnavailable unless the Jobs API answers (or answered within `max_age_s`)."""
        if max_age_s and time.monotonic() - self._last_ok < max_age_s:
            return
        client = self.client()
        with self._calls("version"):
            client.get_version()

    def submit(self, job_id: str, entrypoint: str, *, runtime_env: dict | None = None,
               metadata: dict[str, str] | None = None) -> str:
        client = self.client()
        with self._calls("submit"):
            return client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                                     metadata=metadata)

    def info(self, job_id: str) -> RayJobInfo | None:
        """The status of submission `job_id`, or None when Ray does not know it."""
        client = self.client()
        try:
            with self._calls("status"):
                details = client.get_job_info(job_id)
        except BackendError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise
        return self._info(details)

    def all_jobs(self) -> dict[str, RayJobInfo]:
        """Every submission the cluster knows, by submission id (one call)."""
        client = self.client()
        with self._calls("list"):
            listed = client.list_jobs()
        return {d.submission_id: self._info(d) for d in listed if d.submission_id}

    @staticmethod
    def _info(details) -> RayJobInfo:
        error_type = getattr(details, "error_type", None)
        return RayJobInfo(status=str(getattr(details.status, "value", details.status)), message=details.message,
                          driver_exit_code=getattr(details, "driver_exit_code", None),
                          error_type=str(getattr(error_type, "value", error_type)) if error_type else None)

    def stop(self, job_id: str) -> bool:
        client = self.client()
        with self._calls("stop"):
            return bool(client.stop_job(job_id))

    def logs(self, job_id: str) -> str:
        client = self.client()
        with self._calls("logs"):
            return client.get_job_logs(job_id)

    def dashboard_link(self, base: str, submission_id: str | None) -> str | None:
        return f"{base}/#/jobs/{submission_id}" if submission_id else None
