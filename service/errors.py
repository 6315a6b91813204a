"""The service's own refusals, raised by `service.jobs` and the routes; `service.api.handlers`
maps each class to its status code once (the library's `SpecError` and the backend errors of
`service.backends` are mapped there too)."""

from __future__ import annotations

from service.states import CANCELLED


class NotFound(Exception):
    """No such resource for this principal (404); the message names what was asked for."""


class JobNotFound(NotFound):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}")


class SearchSpaceNotFound(NotFound):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"no search space {name!r}; see GET /v1/search-spaces")


class Conflict(Exception):
    """The request contradicts the job's state or an earlier request (409)."""


class IdempotencyConflict(Conflict):
    """An Idempotency-Key was reused with a different request."""


class JobFinished(Conflict):
    """The job is already in a terminal state."""

    def __init__(self, state: str):
        self.state = state
        super().__init__(f"the job already {state}" if state != CANCELLED else "the job is already cancelled")


class IdempotencyInProgress(Conflict):
    """The first request with this Idempotency-Key has not finished submitting: retry shortly.

    Its job may still fail to reach Ray and be undone, so its id is not given out yet.
    """

    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is still being submitted; retry shortly")


class QuotaExceeded(Exception):
    """A principal would hold more than this service allows at once (429); the message names the
    limit, its setting and the value."""


class JobStillStopping(Conflict):
    """A delete asked Ray to stop the job's driver, which has not confirmed yet: nothing was deleted."""

    retry_after_s = 5

    def __init__(self) -> None:
        super().__init__("the job's driver is still stopping; nothing was deleted yet: retry shortly")
