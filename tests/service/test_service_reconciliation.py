"""service.jobs.reconciliation: reads follow Ray and MLflow; start-up and the background loop catch up."""

import time

import pytest
from service_kit import Api, make_settings, parent

from slwtune import metrics as M

from service.jobs.reconciliation import api_phase
from service.jobs.results import NO_STABLE, failure_reason
from service.ray_jobs import RayJobInfo


def test_read_follows_ray_and_mlflow(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    api.mlflow.parents[job["id"]] = parent(job["id"])
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert (got["state"], got["phase"], got["progress"], got["chosen"]) == ("running", "probing", "round 1", None)
    assert got["links"]["mlflow_run"] == (f"{api.settings.mlflow_tracking_uri}/#/experiments/7/runs?"
                                          f"workflowType=machine_learning&viewStateShareKey=slwtune-job-run-{job['id']}")

    chosen = {"start_length": 16, "duration_steps": 40}
    api.ray.jobs[job["id"]]["status"] = "SUCCEEDED"
    api.mlflow.parents[job["id"]] = parent(job["id"], phase=M.PHASE_DONE, verdict=M.CHOSEN, chosen=chosen)
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert (got["state"], got["phase"], got["chosen"], got["error"]) == ("succeeded", "full_run", chosen, None)


def test_nothing_stable_is_failed_with_a_reason(api):
    job = api.submit()
    api.ray.jobs[job["id"]].update(status="FAILED", exit=M.EXIT_NONE_STABLE)
    api.mlflow.parents[job["id"]] = parent(job["id"], phase=M.PHASE_DONE, verdict=M.NONE_STABLE)
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert (got["state"], got["phase"], got["error"]) == ("failed", "selecting", NO_STABLE)


DIVERGED_AT = "full run diverged: loss ratio 3.10 at step 12 exceeds 1.5 (loss 9.3, minimum so far 3)"


ENTRYPOINT_PROBLEM = ("model.entrypoint='mypkg.loop:train': cannot import 'mypkg.loop' "
                      "(ModuleNotFoundError: No module named 'mypkg')")
ENTRYPOINT_ERROR = f"invalid job spec:\n  {ENTRYPOINT_PROBLEM}\n"  # how the CLI prints a SpecError
ENTRYPOINT_REASON = f"invalid job spec: {ENTRYPOINT_PROBLEM}"


@pytest.mark.parametrize("exit_code,report,tags,message,expected", [
    (M.EXIT_NONE_STABLE, None, {}, "boom", NO_STABLE),                        # the exit code alone says it
    # invalid input is not a tuning result: the CLI's error line names the field and value
    (M.EXIT_INVALID, None, {}, "Job entrypoint command failed with exit code 4, last available logs:\n"
     f"slwtune: error: {ENTRYPOINT_ERROR}", ENTRYPOINT_REASON),
    (M.EXIT_INVALID, None, {}, "slwtune: error: no such dataset folder /data/x\n",
     "invalid input: no such dataset folder /data/x"),
    (M.EXIT_INVALID, None, {}, "boom", "invalid input (see the driver's log)"),
    (M.EXIT_RUN_FAILED, {"outcome": M.OUTCOME_RUN_FAILED, "error": DIVERGED_AT}, {}, "boom", DIVERGED_AT),
    # every probe crashed: the verdict tag says none_stable, but a crash is not instability
    (M.EXIT_INFRA, {"outcome": M.OUTCOME_PROBES_CRASHED, "error": "probes crashed: OOM"},
     {"verdict": M.NONE_STABLE}, "boom", "probes crashed: OOM"),
    (M.EXIT_RUN_FAILED, None, {"outcome": M.OUTCOME_RUN_FAILED, "reason": DIVERGED_AT}, "boom", DIVERGED_AT),
    (M.EXIT_INFRA, None, {}, "Job entrypoint command failed with exit code 3, last available logs:\n"
     "slwtune: error: no such dataset folder /data/x\n", "no such dataset folder /data/x"),
    (M.EXIT_INFRA, None, {}, "boom", "boom"),                                 # else Ray's message
])
def test_failure_reason(exit_code, report, tags, message, expected):
    parent_run = parent("j", phase=M.PHASE_DONE, **tags) if tags else None
    assert failure_reason(RayJobInfo("FAILED", message, exit_code), report, parent_run) == expected


def test_failure_reason_of_invalid_input_reads_the_log_when_rays_message_lacks_it():
    log_tail = f"loading the spec\nslwtune: error: {ENTRYPOINT_ERROR}"
    info = RayJobInfo("FAILED", "Job entrypoint command failed with exit code 4", M.EXIT_INVALID)
    assert failure_reason(info, None, None, log_tail) == ENTRYPOINT_REASON


def test_an_entrypoint_the_cluster_cannot_import_fails_the_job_as_invalid_input(api):
    job = api.submit()
    api.ray.jobs[job["id"]].update(status="FAILED", exit=M.EXIT_INVALID, message="Job entrypoint command failed",
                                   logs=f"slwtune: error: {ENTRYPOINT_ERROR}")
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert (got["state"], got["error"], got["restarts"]) == ("failed", ENTRYPOINT_REASON, [])
    assert got["error"] != NO_STABLE


def test_api_phase_keeps_the_last_working_phase_when_done():
    assert api_phase(M.PHASE_PROBING, None, None) == M.PHASE_PROBING
    assert api_phase(M.PHASE_DONE, {"start_length": 8}, M.PHASE_SELECTING) == M.PHASE_FULL_RUN
    assert api_phase(M.PHASE_DONE, None, None) == M.PHASE_SELECTING
    assert api_phase("unknown", None, M.PHASE_PROBING) == M.PHASE_PROBING


def test_reads_survive_backends_being_down(api):
    job = api.submit()
    api.ray.down = api.mlflow.down = True
    got = api.call("GET", f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json()["state"] == "queued"
    trials = api.call("GET", f"/v1/jobs/{job['id']}/trials")
    assert trials.status_code == 200 and trials.json()["stale"] and "MLflow" in trials.json()["degraded"]
    assert api.call("GET", f"/v1/jobs/{job['id']}/logs").status_code == 503  # Ray's logs: nothing kept to show


def test_restart_reconciles_jobs_finished_while_down(tmp_path):
    settings = make_settings(tmp_path)
    with Api(settings) as first:
        job = first.submit()
        ray = first.ray
    ray.jobs[job["id"]]["status"] = "SUCCEEDED"  # finished while no API was running
    api = Api(settings)
    api.app.state.ray = ray
    with api:  # start-up reconciles before any read
        assert api.row(job["id"]).state == "succeeded"


def test_many_unfinished_jobs_are_reconciled_with_one_listing(tmp_path):
    settings = make_settings(tmp_path)
    with Api(settings) as first:
        ids = [first.submit()["id"] for _ in range(12)]
        ray = first.ray
    for job_id in ids:
        ray.jobs[job_id]["status"] = "RUNNING"
    api = Api(settings)
    api.app.state.ray = ray
    with api:
        assert {api.row(i).state for i in ids} == {"running"}
    assert ray.listed == 1


def test_background_reconciler_updates_without_reads(make_api):
    with make_api(refresh_interval_s=0.2) as api:
        job = api.submit()
        api.ray.jobs[job["id"]]["status"] = "SUCCEEDED"
        deadline = time.time() + 10
        while time.time() < deadline:
            if api.row(job["id"]).state == "succeeded":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the reconciler did not pick up the finished job")


def test_reads_of_a_fresh_job_do_not_wait_on_ray(make_api):
    with make_api(refresh_interval_s=600) as api:
        job = api.submit()
        api.ray.down = True  # a read that asked Ray would log a warning and still answer; this one must not ask
        reads = api.ray.status_reads
        r = api.call("GET", f"/v1/jobs/{job['id']}")
        assert r.status_code == 200 and "server-timing" not in r.headers
        assert api.ray.status_reads == reads
