"""What the service needs from Ray and MLflow, independent of either client: their two errors,
the per-request timer, the in-memory refresh clock and the `Backends` bundle a request carries.

Both clients (`service.ray_jobs`, `service.mlflow_reader`) raise the errors defined here, so
neither imports the other; the routes turn them into 503 / 502 (see `service.api.handlers`).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from service.db import JobRow
    from service.mlflow_reader import MlflowReader
    from service.ray_jobs import RayJobs
    from service.settings import Settings


class BackendUnavailable(Exception):
    """Ray or MLflow cannot be reached (or refused our credentials)."""

    def __init__(self, backend: str, message: str):
        self.backend = backend
        super().__init__(f"{backend} is unavailable: {message}")


class BackendError(Exception):
    """Ray or MLflow answered, but refused the request."""

    def __init__(self, backend: str, message: str):
        self.backend = backend
        super().__init__(f"{backend} refused the request: {message}")


class BackendTimer:
    """Seconds spent waiting on each backend during one request (for the Server-Timing header)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t0

    def header(self) -> str:
        return ", ".join(f"{name};dur={secs * 1000:.2f}" for name, secs in self.spent.items())


class RefreshClock:
    """When this process last reconciled each job (monotonic seconds).

    Kept in memory, not in the registry: writing a timestamp per job per pass made the background
    reconciler the main writer of the database. Another API process keeps its own clock; the cost
    is at most one extra look per job and interval.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def age(self, job_id: str) -> float:
        with self._lock:
            return time.monotonic() - self._last.get(job_id, float("-inf"))

    def mark(self, job_id: str) -> None:
        with self._lock:
            self._last[job_id] = time.monotonic()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._last.pop(job_id, None)


class Outages:
    """Which backend this process last found unreachable, since when and why (in memory, like the clock).

    A job read answers from the registry when Ray or MLflow is down; this says so in the job's
    `unavailable` field instead of failing the read. Cleared by the next call that gets through.
    """

    def __init__(self) -> None:
        self._down: dict[str, tuple[float, str]] = {}  # backend -> (wall time it went down, message)
        self._lock = threading.Lock()

    def down(self, backend: str, message: str) -> None:
        with self._lock:
            since = self._down.get(backend, (time.time(), ""))[0]
            self._down[backend] = (since, message)

    def up(self, backend: str) -> None:
        with self._lock:
            self._down.pop(backend, None)

    def current(self) -> dict[str, str]:
        """{backend: "<message> (since <UTC time>); ..."} for every backend now known to be down."""
        with self._lock:
            items = list(self._down.items())
        return {name: f"{message} (since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))}); what "
                      f"depends on it is as last seen" for name, (since, message) in items}


class LastKnown:
    """Each job's last answer from a backend (its trials from MLflow), kept in memory for the reads
    that must answer while that backend is slow or down: they serve it marked stale instead of a 503.

    Bounded (the `size` most recently stored jobs); like the clock, per process.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._seen: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._seen[key] = (time.time(), value)
            self._seen.move_to_end(key)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def get(self, key: str) -> tuple[float, Any] | None:
        """(wall time it was stored, value), or None when nothing was stored for `key`."""
        with self._lock:
            return self._seen.get(key)


@dataclass
class Backends:
    """The clients one request may need; `timer` collects the time spent waiting on them."""

    settings: Settings
    ray: RayJobs
    mlflow: MlflowReader
    timer: BackendTimer
    clock: RefreshClock
    outages: Outages = field(default_factory=Outages)
    last_trials: LastKnown = field(default_factory=LastKnown)

    def tracking_uri(self, row: JobRow) -> str:
        """The MLflow server a job logs to: the one stored at submit, else the server's."""
        return row.mlflow_tracking_uri or self.settings.mlflow_tracking_uri
