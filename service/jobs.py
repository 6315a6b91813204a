"""Job lifecycle: validate and submit, reconcile with Ray and MLflow, cancel.

No HTTP here: these functions raise the library's `SpecError`, the backend
errors of `service.ray_jobs`, or the small exceptions below, and the routes
turn them into status codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from slwtune.errors import SpecError
from slwtune.plan import planned_probes
from slwtune.spec import JobSpec, apply_overrides, parse_spec, preset_data, presets_dir
from slwtune.tuning.strategies import start_length_choices

from service.db import TERMINAL_STATES, JobRow, as_utc, utcnow
from service.mlflow_reader import MlflowReader
from service.ray_jobs import BackendError, BackendTimer, BackendUnavailable, RayJobInfo, RayJobs
from service.schemas import JobCreate
from service.settings import Settings

log = logging.getLogger("slwtune.service")

NO_STABLE = "no stable configuration"
# Reconciling more unfinished jobs than this at once lists Ray's jobs in one call.
BATCH_STATUS_AT = 10
# A row that never got its Ray submission (the API died between insert and submit) is failed after this.
SUBMIT_GRACE = timedelta(minutes=2)


class JobNotFound(Exception):
    """No such job for this principal."""


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request."""


class JobFinished(Exception):
    """The job is already in a terminal state."""

    def __init__(self, state: str):
        self.state = state
        super().__init__(f"the job already {state}" if state != "cancelled" else "the job is already cancelled")


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


@dataclass
class Backends:
    """The clients one request may need; `timer` collects the time spent waiting on them."""

    settings: Settings
    ray: RayJobs
    mlflow: MlflowReader
    timer: BackendTimer
    clock: RefreshClock


# ---- validation ------------------------------------------------------------------------------


def planned_trials(spec: JobSpec) -> int:
    """Upper bound of the probe trials a spec may run (the paper search repeats per start length)."""
    _, trials, _ = planned_probes(spec)
    if spec.tuning.strategy == "paper":
        trials *= max(1, len(start_length_choices(spec.slw.start_length, spec.tuning.max_start_length)))
    return trials


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def service_rules(spec: JobSpec, settings: Settings) -> tuple[JobSpec, list[dict]]:
    """The limits this service puts on top of the spec model; returns the spec with data paths made absolute."""
    problems: list[dict] = []
    if spec.budget.train_tokens > settings.max_train_tokens:
        problems.append({"loc": "budget.train_tokens", "value": spec.budget.train_tokens,
                         "msg": f"exceeds this service's limit of {settings.max_train_tokens}"})
    trials = planned_trials(spec)
    if trials > settings.max_trials:
        loc = {"grid": "tuning.durations", "optuna": "tuning.n_trials"}.get(spec.tuning.strategy, "tuning.max_rounds")
        value = {"tuning.durations": spec.tuning.durations, "tuning.n_trials": spec.tuning.n_trials,
                 "tuning.max_rounds": spec.tuning.max_rounds}[loc]
        problems.append({"loc": loc, "value": value,
                         "msg": f"plans up to {trials} trials; this service allows {settings.max_trials}"})
    entrypoint = spec.model.entrypoint
    if entrypoint and entrypoint not in settings.allowed_entrypoints:  # user code runs on the cluster
        problems.append({"loc": "model.entrypoint", "value": entrypoint,
                         "msg": "is not allowed by this service (its operator lists the allowed ones in "
                                "SLWTUNE_ALLOWED_ENTRYPOINTS)"})

    root = settings.data_root.expanduser().resolve()
    updates: dict[str, Any] = {}
    path = spec.data.path
    if not path.startswith("builtin:"):
        # Relative paths are relative to the data root; resolve() follows symlinks, so a link out is caught.
        resolved = (root / Path(path).expanduser()).resolve()
        if not _inside(resolved, root):
            problems.append({"loc": "data.path", "value": path, "msg": f"must lie inside the data root {root}"})
        else:
            updates["data"] = spec.data.model_copy(update={"path": str(resolved)})
    storage = spec.tuning.optuna_storage
    if storage and storage.startswith("sqlite"):
        db_file = storage.split(":///", 1)[-1] if ":///" in storage else ""
        resolved = (root / Path(db_file).expanduser()).resolve() if db_file else None
        if resolved is None or not _inside(resolved, root):
            problems.append({"loc": "tuning.optuna_storage", "value": storage,
                             "msg": f"a SQLite study must lie inside the data root {root}"})
    if updates and not problems:
        spec = spec.model_copy(update=updates)
    return spec, problems


@lru_cache(maxsize=64)
def _preset_cached(name: str, mtime_ns: int) -> dict:
    return preset_data(name)


def preset(name: str) -> dict:
    """A preset's data, parsed once per file version (YAML parsing is most of a submit's CPU otherwise).

    Callers must not mutate it: `apply_overrides` copies before it writes.
    """
    path = presets_dir() / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return preset_data(name)  # raises SpecError naming the presets there are
    return _preset_cached(name, path.stat().st_mtime_ns)


def spec_yaml(spec: JobSpec) -> str:
    """`spec.to_yaml()`, with libyaml's emitter when PyYAML has it (10x faster than the pure-Python one)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(spec.to_dict(), Dumper=dumper, sort_keys=False)


def resolve_spec(body: JobCreate, settings: Settings) -> JobSpec:
    """The request's spec (or preset + overrides), validated by the spec model and the service limits."""
    data = preset(body.preset) if body.preset is not None else body.spec
    spec = parse_spec(apply_overrides(data, body.overrides))
    spec, problems = service_rules(spec, settings)
    if problems:
        raise SpecError(problems)
    return spec


def request_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


# ---- submission -------------------------------------------------------------------------------


def new_job_id() -> str:
    return "slw-" + uuid.uuid4().hex[:20]


def tracking_uri_of(spec: dict | JobSpec, settings: Settings) -> str:
    uri = spec.tracking.tracking_uri if isinstance(spec, JobSpec) else (spec.get("tracking") or {}).get("tracking_uri")
    return uri or settings.mlflow_tracking_uri


def experiment_of(spec: dict) -> str:
    return (spec.get("tracking") or {}).get("experiment") or spec["name"]


def driver_command(job_id: str, job_dir: Path, tracking_uri: str, settings: Settings) -> tuple[str, dict]:
    """The Ray job's entrypoint and runtime_env.

    path: the driver reads the spec from the job folder (a local head, or a disk the cluster shares).
    working_dir: Ray uploads the job folder with the submission, so any cluster can run it; the
    driver's output then stays on the cluster (the report also goes to MLflow).
    """
    import os

    env = {"MLFLOW_TRACKING_URI": tracking_uri, "TOKENIZERS_PARALLELISM": "false"}
    env.update({k: os.environ[k] for k in settings.driver_env if os.environ.get(k)})
    runtime_env: dict[str, Any] = {"env_vars": env}
    if settings.spec_transport == "working_dir":
        runtime_env["working_dir"] = str(job_dir)
        spec_file, out = "spec.yaml", "out"
    else:
        spec_file, out = str(job_dir / "spec.yaml"), str(job_dir / "out")
    argv = [settings.driver_python, "-m", "slwtune.driver", "--spec-file", spec_file, "--job-id", job_id,
            "--out", out]
    return shlex.join(argv), runtime_env


def _find_by_key(session: Session, principal: str, key: str) -> JobRow | None:
    return session.scalar(select(JobRow).where(JobRow.principal == principal, JobRow.idempotency_key == key))


def _replay(row: JobRow, digest: str) -> JobRow:
    if row.request_hash != digest:
        raise IdempotencyConflict("this Idempotency-Key was used for a different job spec")
    return row


def submit(session: Session, b: Backends, principal: str, body: JobCreate,
           idempotency_key: str | None) -> tuple[JobRow, bool]:
    """Validate, check idempotency and the backends, insert `queued`, submit to Ray. Returns (row, replayed).

    A failure at any step leaves the registry (and the jobs folder) as it was.
    """
    settings = b.settings
    spec = resolve_spec(body, settings)
    digest = request_hash(spec)
    if idempotency_key and (existing := _find_by_key(session, principal, idempotency_key)):
        return _replay(existing, digest), True

    uri = tracking_uri_of(spec, settings)
    # A backend that answered within the last moments is taken as up; if it went down since,
    # the submit below fails and is undone just the same.
    with b.timer.measure("ray"):
        b.ray.ping(max_age_s=settings.reachability_cache_s)
    with b.timer.measure("mlflow"):
        b.mlflow.health(uri, max_age_s=settings.reachability_cache_s)

    job_id = new_job_id()
    job_dir = settings.jobs_dir.expanduser().resolve() / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "spec.yaml").write_text(spec_yaml(spec))
    now = utcnow()
    row = JobRow(id=job_id, principal=principal, name=spec.name, spec=spec.to_dict(), state="queued",
                 idempotency_key=idempotency_key, request_hash=digest, mlflow_tracking_uri=uri,
                 created_at=now, updated_at=now)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same key, submitted concurrently, won the insert
        session.rollback()
        shutil.rmtree(job_dir, ignore_errors=True)
        existing = _find_by_key(session, principal, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, digest), True

    entrypoint, runtime_env = driver_command(job_id, job_dir, uri, settings)
    try:
        with b.timer.measure("ray_submit"):
            b.ray.submit(job_id, entrypoint, runtime_env=runtime_env,
                         metadata={"slwtune_job_id": job_id, "slwtune_principal": principal})
    except (BackendUnavailable, BackendError):
        session.delete(row)
        session.commit()
        shutil.rmtree(job_dir, ignore_errors=True)
        _stop_quietly(b.ray, job_id)  # a timed-out submit may still have reached Ray
        raise
    row.ray_submission_id = job_id
    row.updated_at = utcnow()
    session.commit()
    b.clock.mark(job_id)  # just submitted: Ray has nothing newer to say
    log.info("job %s submitted by %s (%s)", job_id, principal, spec.name)
    return row, False


def _stop_quietly(ray: RayJobs, job_id: str) -> None:
    try:
        ray.stop(job_id)
    except (BackendUnavailable, BackendError):
        pass


# ---- reads and reconciliation --------------------------------------------------------------------


def get_job(session: Session, principal: str, job_id: str) -> JobRow:
    row = session.get(JobRow, job_id)
    # Another principal's job is indistinguishable from a missing one.
    if row is None or row.principal != principal:
        raise JobNotFound(job_id)
    return row


def list_jobs(session: Session, principal: str, state: str | None, limit: int, offset: int) -> tuple[list[JobRow], int]:
    where = [JobRow.principal == principal]
    if state:
        where.append(JobRow.state == state)
    count = session.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
    rows = session.scalars(select(JobRow).where(*where).order_by(JobRow.created_at.desc(), JobRow.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), count


def _api_phase(driver_phase: str | None, chosen: dict | None, current: str | None) -> str | None:
    """The driver's phase tag as the API's phase; its final `done` keeps the last working phase."""
    if driver_phase in ("probing", "selecting", "full_run"):
        return driver_phase
    if driver_phase == "done":
        return "full_run" if chosen else (current or "selecting")
    return current


def needs_refresh(row: JobRow, b: Backends, *, reader: bool = False) -> bool:
    """Whether to ask Ray and MLflow about this job now: non-terminal and not asked lately.

    The background reconciler keeps unfinished jobs within `refresh_interval_s`; a read waits for a
    refresh only when a job is twice that stale (just after start-up, or when the reconciler lags).
    """
    if row.terminal:
        return False
    return b.clock.age(row.id) >= b.settings.refresh_interval_s * (2 if reader else 1)


_ASK_RAY = object()  # refresh() asks Ray itself
_RAY_DOWN = object()  # the caller found Ray unreachable: leave the state as it is


def refresh(session: Session, row: JobRow, b: Backends, *, force: bool = False,
            ray_info: RayJobInfo | None | object = _ASK_RAY) -> JobRow:
    """Bring a non-terminal job up to date with Ray (state) and MLflow (phase, progress, chosen).

    Skipped while the job was refreshed recently (see `needs_refresh`) unless `force`; `ray_info`
    is Ray's answer when the caller already has it (None: Ray does not know the job). A backend that
    does not answer leaves its fields as the registry has them.
    """
    if not force and not needs_refresh(row, b, reader=True):
        return row
    if row.terminal:
        return row
    now = utcnow()

    before = (row.state, row.phase, row.progress, row.chosen, row.error, row.mlflow_parent_run_id)
    info, ray_answered = None, ray_info not in (_ASK_RAY, _RAY_DOWN)
    if ray_answered:
        info = ray_info
    elif ray_info is _ASK_RAY:
        try:
            with b.timer.measure("ray"):
                info = b.ray.info(row.id)
            ray_answered = True
        except (BackendUnavailable, BackendError) as exc:
            log.warning("job %s: Ray status unknown: %s", row.id, exc)

    parent = None
    # A PENDING driver has not started, so it has no MLflow run yet: skip the lookup.
    if not (info is not None and info.status == "PENDING"):
        try:
            with b.timer.measure("mlflow"):
                parent = b.mlflow.parent_run(row.mlflow_tracking_uri or b.settings.mlflow_tracking_uri,
                                             experiment_of(row.spec), row.id, row.mlflow_parent_run_id)
        except (BackendUnavailable, BackendError) as exc:
            log.warning("job %s: MLflow progress unknown: %s", row.id, exc)

    if parent is not None:
        row.mlflow_parent_run_id, row.mlflow_experiment_id = parent.run_id, parent.experiment_id
        if parent.chosen:
            row.chosen = parent.chosen
        row.phase = _api_phase(parent.phase, parent.chosen, row.phase)
        row.progress = parent.progress or row.progress

    if info is not None:
        row.ray_status = info.status
        row.state = info.state
        if row.state == "failed":
            none_stable = (parent is not None and parent.verdict == "none_stable") or info.driver_exit_code == 2
            row.error = NO_STABLE if none_stable else (info.message or "the job driver failed")[:2000]
        if row.state == "cancelled":
            _close_runs(b, row)
    elif ray_answered:
        # Ray answered but has no such job: never submitted (API died mid-submit) or a cluster restarted.
        if row.ray_submission_id or now - as_utc(row.created_at) > SUBMIT_GRACE:
            row.state = "failed"
            row.error = ("Ray has no record of this job (was the cluster restarted?)" if row.ray_submission_id
                         else "the submission to Ray did not complete")

    b.clock.mark(row.id)
    if (row.state, row.phase, row.progress, row.chosen, row.error, row.mlflow_parent_run_id) == before:
        return row
    row.updated_at = now
    try:
        session.commit()
    except StaleDataError:  # the row went away meanwhile (its submission failed and was undone)
        session.rollback()
    if row.terminal:
        b.clock.forget(row.id)
    return row


def _close_runs(b: Backends, row: JobRow) -> None:
    """A stopped driver cannot end its MLflow runs; mark them KILLED (best effort, for the MLflow UI)."""
    if not row.mlflow_parent_run_id or not row.mlflow_experiment_id:
        return
    try:
        b.mlflow.mark_killed(row.mlflow_tracking_uri or b.settings.mlflow_tracking_uri, row.mlflow_experiment_id,
                             row.mlflow_parent_run_id)
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: could not mark its MLflow runs KILLED: %s", row.id, exc)


def reconcile_all(session: Session, b: Backends, *, only_stale: bool = False) -> int:
    """Refresh every non-terminal job (at start-up), or those not refreshed within the interval
    (the background reconciler); returns how many were refreshed."""
    rows = session.scalars(select(JobRow).where(JobRow.state.not_in(TERMINAL_STATES))).all()
    rows = [r for r in rows if not only_stale or needs_refresh(r, b)]
    known: dict[str, RayJobInfo] | None = None
    ray_down = False  # one unreachable answer is enough: do not wait a timeout per job
    if len(rows) > BATCH_STATUS_AT:
        try:  # one call for all of them instead of one per job
            with b.timer.measure("ray"):
                known = b.ray.all_jobs()
        except BackendUnavailable as exc:
            log.warning("Ray is unreachable; job states stay as they are: %s", exc)
            ray_down = True
        except BackendError as exc:
            log.warning("listing Ray jobs failed, asking one by one: %s", exc)
    for row in rows:
        if known is not None:
            refresh(session, row, b, force=True, ray_info=known.get(row.id))
        elif ray_down:
            refresh(session, row, b, force=True, ray_info=_RAY_DOWN)
        else:
            try:
                with b.timer.measure("ray"):
                    info = b.ray.info(row.id)
            except BackendUnavailable as exc:
                log.warning("Ray is unreachable; job states stay as they are: %s", exc)
                ray_down, info = True, _RAY_DOWN
            except BackendError as exc:
                log.warning("job %s: Ray status unknown: %s", row.id, exc)
                info = _RAY_DOWN
            refresh(session, row, b, force=True, ray_info=info)
    return len(rows)


# ---- actions ----------------------------------------------------------------------------------


def cancel(session: Session, row: JobRow, b: Backends) -> JobRow:
    """Ask Ray to stop the driver; the job is `cancelled` once Ray reports it STOPPED."""
    refresh(session, row, b, force=True)
    if row.terminal:
        raise JobFinished(row.state)
    try:
        with b.timer.measure("ray"):
            b.ray.stop(row.id)
    except BackendError:
        if row.ray_submission_id:
            raise
        # Never reached Ray: nothing runs, so the cancel is immediate.
        row.state, row.cancel_requested, row.updated_at = "cancelled", True, utcnow()
        session.commit()
        return row
    row.cancel_requested, row.updated_at = True, utcnow()
    session.commit()
    deadline = time.monotonic() + b.settings.cancel_wait_s
    refresh(session, row, b, force=True)
    while not row.terminal and time.monotonic() < deadline:
        time.sleep(0.25)
        refresh(session, row, b, force=True)
    return row


def tail_logs(row: JobRow, b: Backends, lines: int) -> tuple[list[str], bool]:
    with b.timer.measure("ray"):
        text = b.ray.logs(row.id) if row.ray_submission_id else ""
    all_lines = text.splitlines()
    return all_lines[-lines:], len(all_lines) > lines


def trials(session: Session, row: JobRow, b: Backends) -> list[dict]:
    """The job's trials from MLflow (empty until the driver has created its parent run)."""
    uri = row.mlflow_tracking_uri or b.settings.mlflow_tracking_uri
    if not row.mlflow_parent_run_id or not row.mlflow_experiment_id:
        with b.timer.measure("mlflow"):
            parent = b.mlflow.parent_run(uri, experiment_of(row.spec), row.id)
        if parent is None:
            return []
        row.mlflow_parent_run_id, row.mlflow_experiment_id = parent.run_id, parent.experiment_id
        session.commit()
    with b.timer.measure("mlflow"):
        return b.mlflow.trials(uri, row.mlflow_experiment_id, row.mlflow_parent_run_id)
