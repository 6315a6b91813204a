"""The states a job goes through in the service, and the statuses it reads from Ray and MLflow.

The one place each is spelled (the API's JSON carries these strings). Torch-free and light:
it imports only `slwtune.metrics`, so the dev stack may import it too.
"""

from slwtune import metrics as M

# A job's state in the registry (JobPublic.state)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

# Ray's job statuses (JobStatus values)
RAY_PENDING, RAY_RUNNING, RAY_STOPPED = "PENDING", "RUNNING", "STOPPED"
RAY_SUCCEEDED, RAY_FAILED = "SUCCEEDED", "FAILED"
# Ray job status -> registry state (a driver exit 2, "nothing stable", is a FAILED job in Ray too).
RAY_TO_STATE = {
    RAY_PENDING: QUEUED,
    RAY_RUNNING: RUNNING,
    RAY_SUCCEEDED: SUCCEEDED,
    RAY_FAILED: FAILED,
    RAY_STOPPED: CANCELLED,
}

# MLflow's run statuses: the library writes them (slwtune.metrics), the service reads them and ends
# as KILLED the runs a stopped or lost driver left RUNNING.
RUN_RUNNING, RUN_FINISHED, RUN_FAILED, RUN_KILLED = M.RUN_RUNNING, M.RUN_FINISHED, M.RUN_FAILED, M.RUN_KILLED
RUN_STATUSES = (RUN_RUNNING, RUN_FINISHED, RUN_FAILED, RUN_KILLED)
