"""Submit a job: validate, honour the Idempotency-Key, check the backends, insert `queued`, submit to Ray."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slwtune.files import SPEC_FILE

from service.backends import BackendError, Backends, BackendUnavailable
from service.db import TERMINAL_STATES, JobRow, utcnow
from service.errors import IdempotencyConflict, IdempotencyInProgress, QuotaExceeded
from service.jobs.results import OUT_DIR, job_dir
from service.jobs.validation import request_hash, resolve_spec
from service.ray_jobs import RayJobs
from service.schemas import JobCreate
from service.settings import Settings
from service.states import QUEUED

log = logging.getLogger("slwtune.service")


def new_job_id() -> str:
    return "slw-" + uuid.uuid4().hex[:20]


def spec_yaml(spec: dict) -> str:
    """`JobSpec.to_yaml()` of a validated spec's dict, with libyaml's emitter when PyYAML has it (10x faster
    than the pure-Python one)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(spec, Dumper=dumper, sort_keys=False)


def driver_command(job_id: str, folder: Path, tracking_uri: str, settings: Settings,
                   resume: bool = False) -> tuple[str, dict]:
    """The Ray job's entrypoint (`slwtune tune`, whose exit code is M.EXIT_*) and runtime_env.

    path: the driver reads the spec from the job folder (a local head, or a disk the cluster shares).
    working_dir: Ray uploads the job folder with the submission, so any cluster can run it; the
    driver's output then stays on the cluster (the report also goes to MLflow).
    `resume`: `slwtune tune --resume <out>` goes on with the job its folder holds (path only).
    """
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "TOKENIZERS_PARALLELISM": "false"}
    env.update({k: os.environ[k] for k in settings.driver_env if os.environ.get(k)})
    runtime_env: dict[str, Any] = {"env_vars": env}
    if settings.spec_transport == "working_dir":
        runtime_env["working_dir"] = str(folder)
        spec_file, out = SPEC_FILE, OUT_DIR
    else:
        spec_file, out = str(folder / SPEC_FILE), str(folder / OUT_DIR)
    if resume:
        argv = [settings.driver_python, "-m", "slwtune.cli", "tune", "--resume", out]
    else:
        argv = [settings.driver_python, "-m", "slwtune.cli", "tune", spec_file, "--job-id", job_id, "--out", out]
    return shlex.join(argv), runtime_env


def peak_gpus(spec: dict) -> float:
    """GPUs a job asks for at its peak: every concurrent probe trial's workers (the full run needs one trial's)."""
    r, t = spec.get("resources") or {}, spec.get("tuning") or {}
    if not r.get("use_gpu"):
        return 0.0
    return r.get("num_workers", 1) * r.get("gpus_per_worker", 1.0) * t.get("max_concurrent_trials", 1)


def check_quota(session: Session, principal: str, settings: Settings, new: dict | None) -> None:
    """QuotaExceeded if the principal's unfinished jobs (plus `new`, when not inserted yet) exceed a limit."""
    specs = list(session.scalars(select(JobRow.spec).where(JobRow.principal == principal,
                                                          JobRow.state.not_in(TERMINAL_STATES))))
    if new is not None:
        specs.append(new)
    if len(specs) > settings.max_jobs_per_principal:
        raise QuotaExceeded(f"{principal} would have {len(specs)} unfinished jobs; this service allows "
                            f"{settings.max_jobs_per_principal} per principal "
                            f"({Settings.env_name('max_jobs_per_principal')})")
    gpus = sum(peak_gpus(s) for s in specs)
    if gpus > settings.max_gpus_per_principal:
        raise QuotaExceeded(f"{principal}'s unfinished jobs would ask for {gpus:g} GPUs; this service allows "
                            f"{settings.max_gpus_per_principal:g} per principal "
                            f"({Settings.env_name('max_gpus_per_principal')})")


def _find_by_key(session: Session, principal: str, key: str) -> JobRow | None:
    return session.scalar(select(JobRow).where(JobRow.principal == principal, JobRow.idempotency_key == key))


def _replay(row: JobRow | None, digest: str) -> JobRow:
    """The job an earlier request with this key made, once it is real: submitted to Ray, or ended.

    A row still being submitted may yet be undone (its Ray submit can fail), so its id is not
    given out; None: the earlier request was undone just now. Either way the client retries.
    """
    if row is None:
        raise IdempotencyInProgress()
    if row.request_hash != digest:
        raise IdempotencyConflict("this Idempotency-Key was used for a different job spec")
    if row.ray_submission_id is None and not row.terminal:
        raise IdempotencyInProgress()
    return row


def _undo(session: Session, row: JobRow, folder: Path) -> None:
    session.delete(row)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)


def submit(session: Session, b: Backends, principal: str, body: JobCreate,
           idempotency_key: str | None) -> tuple[JobRow, bool]:
    """Validate, check idempotency, the quota and the backends, insert `queued`, submit to Ray.
    Returns (row, replayed).

    A failure at any step leaves the registry (and the jobs folder) as it was.
    """
    settings = b.settings
    # Validated once, into a JobSpec; from here on its dict, made once: the hash, the quota, the driver's
    # YAML and the registry row all read it.
    spec = resolve_spec(body, settings).to_dict()
    digest = request_hash(spec)
    if idempotency_key and (existing := _find_by_key(session, principal, idempotency_key)):
        return _replay(existing, digest), True
    check_quota(session, principal, settings, spec)  # early, before waiting on the backends

    uri = settings.mlflow_tracking_uri
    # A backend that answered within the last moments is taken as up; if it went down since,
    # the submit below fails and is undone just the same.
    with b.timer.measure("ray"):
        b.ray.ping(max_age_s=settings.reachability_cache_s)
    with b.timer.measure("mlflow"):
        b.mlflow.health(uri, max_age_s=settings.reachability_cache_s)

    job_id = new_job_id()
    folder = job_dir(settings, job_id)
    folder.mkdir(parents=True)
    (folder / SPEC_FILE).write_text(spec_yaml(spec))
    now = utcnow()
    row = JobRow(id=job_id, principal=principal, name=spec["name"], spec=spec, state=QUEUED,
                 idempotency_key=idempotency_key, request_hash=digest, mlflow_tracking_uri=uri,
                 created_at=now, updated_at=now)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same key, submitted concurrently, won the insert
        session.rollback()
        shutil.rmtree(folder, ignore_errors=True)
        if not idempotency_key:
            raise
        return _replay(_find_by_key(session, principal, idempotency_key), digest), True
    try:
        # Again with this job in: two requests that both passed the early check cannot both stay.
        check_quota(session, principal, settings, None)
    except QuotaExceeded:
        _undo(session, row, folder)
        raise

    entrypoint, runtime_env = driver_command(job_id, folder, uri, settings)
    try:
        with b.timer.measure("ray_submit"):
            b.ray.submit(job_id, entrypoint, runtime_env=runtime_env,
                         metadata={"slwtune_job_id": job_id, "slwtune_principal": principal})
    except (BackendUnavailable, BackendError):
        _undo(session, row, folder)
        _stop_quietly(b.ray, job_id)  # a timed-out submit may still have reached Ray
        raise
    row.ray_submission_id = job_id
    row.updated_at = utcnow()
    session.commit()
    b.clock.mark(job_id)  # just submitted: Ray has nothing newer to say
    log.info("job %s submitted by %s (%s)", job_id, principal, spec["name"])
    return row, False


def _stop_quietly(ray: RayJobs, job_id: str) -> None:
    try:
        ray.stop(job_id)
    except (BackendUnavailable, BackendError):
        pass
