"""What the service reads from MLflow: a job's parent run (phase, progress, chosen knobs) and its trials.

The job driver owns the run tree (see `slwtune.driver` and `slwtune.tracking`);
this module reads it, and writes only this: it ends as KILLED the runs a stopped or lost driver
left RUNNING, and deletes a job's runs when asked to (DELETE ?delete_mlflow_runs=true). MLflow
being down raises `BackendUnavailable`; the callers decide whether to fall back to what the
registry already has.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from slwtune import metrics as M

from service.backends import BackendError, BackendUnavailable
from service.states import RUN_KILLED, RUN_RUNNING

REPORT_ARTIFACT = "report.json"  # the driver logs its report at the root of the parent run's artifacts


@dataclass
class ParentRun:
    run_id: str
    experiment_id: str
    status: str
    phase: str | None
    progress: str | None
    verdict: str | None  # M.CHOSEN | M.NONE_STABLE, once the selection is done
    chosen: dict[str, int] | None
    outcome: str | None = None  # M.OUTCOME_*, set when the driver ends
    reason: str | None = None   # why the job failed, set with the outcome


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _knob(run, name: str) -> int | None:
    """A probe's knob: logged as a param (the flattened spec key) and as a tag of the same name."""
    return _int(run.data.params.get(name, run.data.tags.get(name)))


def _when(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class MlflowReader:
    """Read-only access to the runs the job driver writes, one cached MlflowClient per tracking URI."""

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        # MLflow's client retries a failed call 7 times with backoff (minutes when the server is down);
        # a web request must fail fast instead. These are read per call by mlflow.utils.rest_utils.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
        self._clients: dict[str, Any] = {}
        self._http: Any = None
        self._healthy: dict[str, float] = {}  # uri -> monotonic time of its last good /health
        self._lock = threading.Lock()

    def _client(self, uri: str):
        with self._lock:
            if uri not in self._clients:
                from mlflow.tracking import MlflowClient

                self._clients[uri] = MlflowClient(tracking_uri=uri)
            return self._clients[uri]

    def _call(self, uri: str, what: str, fn, *args, **kwargs):
        """Run one client call, translating failures into the service's backend errors."""
        import requests
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            text = str(exc)
            if "Max retries" in text or "Connection" in text or "timed out" in text.lower():
                raise BackendUnavailable("MLflow", f"cannot reach {uri} ({what})") from None
            raise BackendError("MLflow", f"{what}: {text[:300]}") from None
        except (requests.RequestException, OSError):
            raise BackendUnavailable("MLflow", f"cannot reach {uri} ({what})") from None

    def health(self, uri: str, max_age_s: float = 0.0) -> None:
        """Raise BackendUnavailable unless the tracking server answers /health (or did within `max_age_s`).

        Non-HTTP tracking stores pass."""
        if not _is_http(uri):
            return
        if max_age_s and time.monotonic() - self._healthy.get(uri, float("-inf")) < max_age_s:
            return
        import httpx

        with self._lock:
            if self._http is None:
                # One client for the process: httpx.get() would build a TLS context per call (~30 ms).
                self._http = httpx.Client(timeout=self.timeout)
        try:
            r = self._http.get(f"{uri.rstrip('/')}/health")
        except httpx.HTTPError as exc:
            raise BackendUnavailable("MLflow", f"cannot reach the tracking server at {uri}: "
                                               f"{type(exc).__name__}") from None
        if r.status_code >= 400:
            raise BackendUnavailable("MLflow", f"the tracking server at {uri} answered {r.status_code} on /health")
        self._healthy[uri] = time.monotonic()

    def parent_run(self, uri: str, experiment: str, job_id: str, run_id: str | None = None) -> ParentRun | None:
        """The job's parent run: by id when known, else by its `slwtune.job_id` tag; None before the driver made it."""
        client = self._client(uri)
        if run_id:
            run = self._call(uri, "get run", client.get_run, run_id)
        else:
            exp = self._call(uri, "get experiment", client.get_experiment_by_name, experiment)
            if exp is None:
                return None
            # The job id is ours (hex), safe inside the filter string.
            query = f"tags.`{M.TAG_JOB_ID}` = '{job_id}' and tags.`{M.TAG_KIND}` = '{M.KIND_JOB}'"
            # Newest first: a driver restarted from the start makes a new parent run with the same job id.
            runs = self._call(uri, "search runs", client.search_runs, [exp.experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1)
            run = runs[0] if runs else None
        if run is None:
            return None
        tags = run.data.tags
        chosen = None
        start, duration = _int(tags.get(M.TAG_CHOSEN_START)), _int(tags.get(M.TAG_CHOSEN_DURATION))
        if start is not None and duration is not None:
            chosen = {"start_length": start, "duration_steps": duration}
        return ParentRun(run_id=run.info.run_id, experiment_id=run.info.experiment_id, status=run.info.status,
                         phase=tags.get(M.TAG_PHASE), progress=tags.get(M.TAG_PROGRESS),
                         verdict=tags.get(M.TAG_VERDICT), chosen=chosen, outcome=tags.get(M.TAG_OUTCOME),
                         reason=None if tags.get(M.TAG_REASON) in (None, M.NO_REASON) else tags.get(M.TAG_REASON))

    def report(self, uri: str, run_id: str) -> dict | None:
        """The driver's report.json, logged on the job's parent run when the job ended; None when absent."""
        import json
        import tempfile

        client = self._client(uri)
        listed = self._call(uri, "list artifacts", client.list_artifacts, run_id) or []
        if REPORT_ARTIFACT not in {a.path for a in listed}:
            return None  # not logged (yet, or the upload failed): the parent run's tags still tell the outcome
        with tempfile.TemporaryDirectory(prefix="slwtune-report-") as tmp:
            path = self._call(uri, "download the report", client.download_artifacts, run_id, REPORT_ARTIFACT, tmp)
            if path is None:
                return None
            try:
                data = json.loads(open(path).read())
            except (OSError, ValueError):
                return None
        return data if isinstance(data, dict) else None

    def delete_runs(self, uri: str, experiment_id: str, parent_run_id: str) -> int:
        """Delete the job's parent run and its children (MLflow's soft delete); returns how many."""
        client = self._client(uri)
        ids = [t["run_id"] for t in self.trials(uri, experiment_id, parent_run_id)] + [parent_run_id]
        for run_id in ids:
            self._call(uri, "delete run", client.delete_run, run_id)
        return len(ids)

    def trials(self, uri: str, experiment_id: str, parent_run_id: str) -> list[dict]:
        """The parent's child runs (probes, then the full run), oldest first, as TrialPublic fields."""
        client = self._client(uri)
        runs = self._call(uri, "search runs", client.search_runs, [experiment_id],
                          filter_string=f"tags.`{M.TAG_PARENT}` = '{parent_run_id}'",
                          order_by=["attributes.start_time ASC"], max_results=1000) or []
        out = []
        for run in runs:
            tags = run.data.tags
            out.append({
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "kind": tags.get(M.TAG_KIND),
                "status": run.info.status,
                "round": _int(tags.get(M.TAG_ROUND)),
                "start_length": _knob(run, M.TAG_START_LENGTH),
                "duration_steps": _knob(run, M.TAG_DURATION_STEPS),
                "verdict": tags.get(M.TAG_VERDICT),
                "reason": None if tags.get(M.TAG_REASON) in (None, M.NO_REASON) else tags.get(M.TAG_REASON),
                "resumed_from_step": _int(tags.get(M.TAG_RESUMED_FROM_STEP)),
                "metrics": dict(run.data.metrics),
                "started_at": _when(run.info.start_time),
                "ended_at": _when(run.info.end_time),
            })
        return out

    def mark_killed(self, uri: str, experiment_id: str, parent_run_id: str, kinds: frozenset[str] | None = None) -> int:
        """End the parent run and its still-running children as KILLED (after a cancel, or the runs a
        lost driver left behind); with `kinds`, only the children of those kinds. Returns how many."""
        client = self._client(uri)
        children = [t["run_id"] for t in self.trials(uri, experiment_id, parent_run_id)
                    if t["status"] == RUN_RUNNING and (kinds is None or t["kind"] in kinds)]
        ended = 0
        for run_id in ([] if kinds else [parent_run_id]) + children:
            run = self._call(uri, "get run", client.get_run, run_id)
            if run is not None and run.info.status == RUN_RUNNING:
                self._call(uri, "end run", client.set_terminated, run_id, status=RUN_KILLED)
                ended += 1
        return ended

    def run_link(self, base: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
        """The job's runs in the MLflow UI (parent and children, the columns that matter); `run_id` is the parent."""
        if not (base and experiment_id and run_id):
            return None
        from slwtune.tracking import job_runs_link

        return job_runs_link(base, experiment_id, run_id)
