"""A job whose driver is gone without saying how the job ended is resubmitted, up to a limit.

The driver ends every job with one of slwtune's exit codes (M.EXIT_*: 0 done, 1 the full run
failed, 2 nothing stable, 3 infrastructure, 4 invalid input). Any other end means the driver was
lost: killed (a signal, the OOM killer), its supervisor or node gone, or forgotten by a Ray head
that restarted without GCS fault tolerance. A driver stopped in Ray (`ray job stop`, the
dashboard) was stopped on purpose: the job is `cancelled`, whoever asked, never restarted. Such a job is
submitted again as `slwtune tune --resume <job folder>/out` under a new Ray submission id
(`<job id>-r<n>`): the driver reads job.json, does not rerun finished probes, and the probes that
were training and the full run go on from their last checkpoints (Ray Train resumes a run of the
same name), in their own MLflow runs. Each restart is kept in the row's
`restarts` (when, why, the new submission id); past `Settings.max_driver_restarts` the job fails
with the last reason.

Two passes (the background reconciler and a read, or two API processes) may find the same lost
driver: the row is claimed with a compare-and-set on its submission id before anything is
submitted, and Ray refuses a second submission with the same id.
"""

from __future__ import annotations

import logging
import signal

from sqlalchemy import update
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from slwtune import metrics as M

from service import states as S
from service.backends import BackendError, Backends, BackendUnavailable
from service.db import JobRow, utcnow
from service.jobs.results import job_dir, out_dir
from service.jobs.submission import driver_command
from service.ray_jobs import RayJobInfo
from service.settings import Settings

log = logging.getLogger("slwtune.service")

# A driver that exited with one of these said how the job ended: never restarted.
OUTCOME_EXITS = frozenset({M.EXIT_OK, M.EXIT_RUN_FAILED, M.EXIT_NONE_STABLE, M.EXIT_INFRA, M.EXIT_INVALID})
# Ray could not start the driver at all: a restart would fail the same way.
CANNOT_START = frozenset({"RUNTIME_ENV_SETUP_FAILURE", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
                          "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "JOB_ENTRYPOINT_COMMAND_START_ERROR"})
NO_RECORD = "Ray has no record of the job's driver (was the Ray head restarted?)"
PROBE_KINDS = frozenset({M.KIND_PROBE, M.KIND_CONTROL})
STATE_FILE = "job.json"  # slwtune.job.STATE_FILE (that module imports torch; the API does not)


def describe_exit(info: RayJobInfo) -> str:
    """A lost driver's end in words: the signal that killed it, its exit code, or Ray's message."""
    code = info.driver_exit_code
    if code is None:
        first = (info.message or "").strip().splitlines()
        return f"Ray lost the driver: {first[0][:300]}" if first else "Ray lost the driver"
    number = -code if code < 0 else code - 128 if 128 < code < 160 else None  # a signal, or a shell's 128+n
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"the driver was killed by {name} (exit code {code})"
    return f"the driver exited with code {code}, not one of slwtune's outcome codes"


def lost_reason(row: JobRow, info: RayJobInfo | None) -> str | None:
    """Why the job's driver is gone without having ended the job, or None when it is not.

    `info` None means Ray answered and has no record of the submission.
    """
    if info is None:
        return NO_RECORD if row.ray_submission_id else None
    if (info.status == S.RAY_FAILED and info.driver_exit_code not in OUTCOME_EXITS
            and info.error_type not in CANNOT_START):
        return describe_exit(info)
    return None


def can_resume(row: JobRow, b: Backends) -> bool:
    """`--resume` needs the job folder the driver wrote (job.json): only with the path transport."""
    return b.settings.spec_transport == "path" and (out_dir(b.settings, row.id) / STATE_FILE).is_file()


def gave_up(reason: str, restarts: int, limit: int) -> str:
    if limit == 0:
        return f"the job driver was lost: {reason} (restarts are off: {Settings.env_name('max_driver_restarts')}=0)"
    return (f"the job driver was lost {restarts + 1} times, the last: {reason} (restarted {restarts} times, "
            f"the limit of {Settings.env_name('max_driver_restarts')}={limit})")


def _claim(session: Session, row: JobRow, old_id: str | None, new_id: str, restarts: list[dict]) -> bool:
    """Move the row to the new submission unless another pass, a cancel or a delete came first."""
    claimed = session.execute(
        update(JobRow)
        .where(JobRow.id == row.id, JobRow.ray_submission_id == old_id, JobRow.cancel_requested.is_(False))
        .values(ray_submission_id=new_id, restarts=restarts, state=S.RUNNING, error=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    try:
        session.refresh(row)
    except InvalidRequestError:  # deleted meanwhile (ObjectDeletedError is one)
        return False
    return claimed == 1


def _unclaim(session: Session, row: JobRow, old_id: str | None, new_id: str, restarts: list[dict]) -> None:
    session.execute(update(JobRow).where(JobRow.id == row.id, JobRow.ray_submission_id == new_id)
                    .values(ray_submission_id=old_id, restarts=restarts)
                    .execution_options(synchronize_session=False))
    session.commit()
    session.refresh(row)


def restart(session: Session, row: JobRow, b: Backends, reason: str) -> None:
    """Resubmit the lost driver of `row` (or fail it past the limit; cancel it if a cancel was asked).

    Leaves the row as it was when Ray cannot be reached: the next pass tries again.
    """
    done = list(row.restarts or [])
    if row.cancel_requested:
        row.state = S.CANCELLED
        return
    limit = b.settings.max_driver_restarts
    if len(done) >= limit:
        row.state, row.error = S.FAILED, gave_up(reason, len(done), limit)
        return
    old_id, new_id = row.ray_submission_id, f"{row.id}-r{len(done) + 1}"
    resumed = can_resume(row, b)
    entry = {"at": utcnow().isoformat(), "reason": reason, "ray_submission_id": new_id, "resumed": resumed}
    if not _claim(session, row, old_id, new_id, done + [entry]):
        return  # another pass restarted it, or a cancel / delete came first
    entrypoint, runtime_env = driver_command(row.id, job_dir(b.settings, row.id), b.tracking_uri(row), b.settings,
                                             resume=resumed)
    try:
        with b.timer.measure("ray_submit"):
            b.ray.submit(new_id, entrypoint, runtime_env=runtime_env,
                         metadata={"slwtune_job_id": row.id, "slwtune_principal": row.principal,
                                   "slwtune_restart": str(len(done) + 1)})
    except BackendUnavailable as exc:
        log.warning("job %s: could not restart its driver yet: %s", row.id, exc)
        b.outages.down("ray", str(exc))
        _unclaim(session, row, old_id, new_id, done)
        return
    except BackendError as exc:
        if "already exists" not in str(exc):  # a timed-out submit that did reach Ray is fine
            _unclaim(session, row, old_id, new_id, done)
            row.state, row.error = S.FAILED, f"the job driver was lost ({reason}) and Ray refused its restart: {exc}"
            return
    log.warning("job %s: driver lost (%s); resubmitted as %s%s", row.id, reason, new_id,
                " with --resume" if resumed else " from the start")
    if resumed:  # until the resumed driver reopens them, the killed driver's probe runs are not running
        _close_orphaned_probes(row, b)
    else:  # a fresh driver makes a new parent run; the old one stays behind as KILLED
        _forget_parent_run(row, b)
    _stop_if_deleted_meanwhile(session, row, b, new_id)


def _close_orphaned_probes(row: JobRow, b: Backends) -> None:
    """Probe runs the lost driver left RUNNING end as KILLED, so the MLflow UI does not show them running
    while no driver runs them; the resumed driver sets those it goes on with RUNNING again. The full
    run's run is left alone: the resumed driver goes on logging to it."""
    if not row.mlflow_parent_run_id or not row.mlflow_experiment_id:
        return
    try:
        b.mlflow.mark_killed(b.tracking_uri(row), row.mlflow_experiment_id, row.mlflow_parent_run_id,
                             kinds=PROBE_KINDS)
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: could not end the lost driver's probe runs: %s", row.id, exc)


def _forget_parent_run(row: JobRow, b: Backends) -> None:
    if row.mlflow_parent_run_id and row.mlflow_experiment_id:
        try:
            b.mlflow.mark_killed(b.tracking_uri(row), row.mlflow_experiment_id, row.mlflow_parent_run_id)
        except (BackendUnavailable, BackendError) as exc:
            log.warning("job %s: could not mark its old MLflow runs KILLED: %s", row.id, exc)
    row.mlflow_parent_run_id = row.mlflow_experiment_id = None
    row.phase = row.progress = None


def _stop_if_deleted_meanwhile(session: Session, row: JobRow, b: Backends, submission_id: str) -> None:
    """A cancel or delete that landed between the claim and the submit must not leave a driver running."""
    current = session.get(JobRow, row.id, populate_existing=True)
    if current is not None and not current.cancel_requested:
        return
    try:
        b.ray.stop(submission_id)
    except (BackendUnavailable, BackendError) as exc:
        log.warning("job %s: could not stop the restarted driver %s: %s", row.id, submission_id, exc)
