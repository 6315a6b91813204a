"""A job whose driver is lost (killed, forgotten by Ray) is resubmitted with `slwtune tune --resume`,
up to SLWTUNE_MAX_DRIVER_RESTARTS; a driver that ended the job itself (exit 0-4), or that someone
stopped in Ray, never is."""

import json
import shlex

import pytest
from service_kit import Api, make_settings, parent
from sqlalchemy.orm import Session

from slwtune import metrics as M

from service.db import JobRow
from service.jobs.reconciliation import reconcile_all, refresh
from service.jobs.restarts import NO_RECORD, describe_exit
from service.jobs.results import STOPPED_OUTSIDE
from service.ray_jobs import RayJobInfo
from service.settings import Settings


def write_job_state(api, job_id, rounds=1):
    """What the driver leaves in its folder once it started (slwtune.job.Job.save)."""
    out = api.out_dir(job_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps({"job_id": job_id, "rounds": [[]] * rounds, "restarts": []}))


def kill(api, submission_id, code=-9):
    ray = getattr(api, "ray", api)  # an Api, or its FakeRay alone
    ray.jobs[submission_id].update(status="FAILED", exit=code, message=f"exit code {code}")


def read(api, job_id):
    return api.call("GET", f"/v1/jobs/{job_id}").json()


def test_a_killed_driver_is_resubmitted_with_resume(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    write_job_state(api, job["id"])
    kill(api, job["id"])
    got = read(api, job["id"])
    new = f"{job['id']}-r1"
    assert (got["state"], got["error"], got["ray_submission_id"]) == ("running", None, new)
    [restart] = got["restarts"]
    assert restart["reason"] == "the driver was killed by SIGKILL (exit code -9)"
    assert (restart["ray_submission_id"], restart["resumed"]) == (new, True)
    argv = shlex.split(api.ray.jobs[new]["entrypoint"])
    assert argv[-3:] == ["tune", "--resume", str(api.out_dir(job["id"]))]
    assert api.ray.jobs[new]["metadata"]["slwtune_job_id"] == job["id"]
    assert got["links"]["ray_dashboard"].endswith(f"/#/jobs/{new}")
    assert api.mlflow.killed == [] and api.mlflow.children == {}  # nothing in MLflow yet: nothing to end
    # The restarted driver is the one the job follows from now on, PENDING included.
    assert read(api, job["id"])["state"] == "running"
    api.ray.jobs[new].update(status="SUCCEEDED", exit=M.EXIT_OK)
    assert read(api, job["id"])["state"] == "succeeded"


def test_the_resume_command_parses_with_the_cli(api):
    from slwtune.cli import build_parser

    job = api.submit()
    write_job_state(api, job["id"])
    kill(api, job["id"])
    read(api, job["id"])
    args = build_parser().parse_args(shlex.split(api.ray.jobs[f"{job['id']}-r1"]["entrypoint"])[3:])
    assert (args.command, args.resume) == ("tune", str(api.out_dir(job["id"])))


def test_a_driver_lost_before_it_wrote_its_state_starts_again(api):
    job = api.submit()
    api.mlflow.parents[job["id"]] = parent(job["id"])
    kill(api, job["id"], code=137)  # a shell reporting its child's SIGKILL
    got = read(api, job["id"])
    [restart] = got["restarts"]
    assert restart["resumed"] is False and "SIGKILL (exit code 137)" in restart["reason"]
    argv = shlex.split(api.ray.jobs[f"{job['id']}-r1"]["entrypoint"])
    assert argv[4:6] == [str(api.settings.jobs_dir.resolve() / job["id"] / "spec.yaml"), "--job-id"]
    assert api.mlflow.killed == [f"run-{job['id']}"]  # the old parent run is closed; the new driver makes one


def test_restarts_stop_at_the_limit_and_the_job_fails_with_the_last_reason(api):
    job = api.submit()
    write_job_state(api, job["id"])
    current = job["id"]
    for n in (1, 2):
        kill(api, current)
        current = read(api, job["id"])["ray_submission_id"]
        assert current == f"{job['id']}-r{n}"
    kill(api, current, code=-15)
    got = read(api, job["id"])
    assert got["state"] == "failed" and len(got["restarts"]) == 2
    assert got["error"] == ("the job driver was lost 3 times, the last: the driver was killed by SIGTERM (exit code "
                            "-15) (restarted 2 times, the limit of SLWTUNE_MAX_DRIVER_RESTARTS=2)")
    assert len(api.ray.jobs) == 3
    assert api.mlflow.killed == []  # no MLflow run known here; with one, see below


def test_a_job_that_fails_for_good_ends_its_mlflow_runs(make_api):
    with make_api(max_driver_restarts=0) as api:
        job = api.submit()
        api.mlflow.parents[job["id"]] = parent(job["id"])
        kill(api, job["id"])
        assert read(api, job["id"])["state"] == "failed"
        assert api.mlflow.killed == [f"run-{job['id']}"]


def test_a_cancel_or_delete_does_not_restart_a_lost_driver_first(api):
    cancelled, deleted = api.submit(), api.submit()
    for job in (cancelled, deleted):
        write_job_state(api, job["id"])
        kill(api, job["id"])  # lost, and nobody has looked yet
    got = api.call("POST", f"/v1/jobs/{cancelled['id']}/cancel").json()
    assert (got["state"], got["restarts"]) == ("cancelled", [])
    assert api.call("DELETE", f"/v1/jobs/{deleted['id']}").status_code == 200
    assert sorted(api.ray.jobs) == sorted([cancelled["id"], deleted["id"]])  # no -r1 submitted


def test_restarts_can_be_turned_off(make_api, monkeypatch):
    monkeypatch.setenv("SLWTUNE_MAX_DRIVER_RESTARTS", "0")
    assert Settings(api_tokens="a:0123456789abcdef").max_driver_restarts == 0
    with make_api(max_driver_restarts=0) as api:
        job = api.submit()
        kill(api, job["id"])
        got = read(api, job["id"])
        assert got["state"] == "failed" and got["restarts"] == [] and "SLWTUNE_MAX_DRIVER_RESTARTS=0" in got["error"]


@pytest.mark.parametrize("code", [M.EXIT_RUN_FAILED, M.EXIT_NONE_STABLE, M.EXIT_INFRA, M.EXIT_INVALID])
def test_a_driver_that_ended_the_job_itself_is_never_restarted(api, code):
    job = api.submit()
    write_job_state(api, job["id"])
    kill(api, job["id"], code=code)
    got = read(api, job["id"])
    assert got["state"] == "failed" and got["restarts"] == [] and list(api.ray.jobs) == [job["id"]]


def test_a_driver_ray_could_not_start_is_not_restarted(api):
    job = api.submit()
    api.ray.jobs[job["id"]].update(status="FAILED", exit=None, error_type="RUNTIME_ENV_SETUP_FAILURE",
                                   message="runtime_env setup failed: no such package")
    got = read(api, job["id"])
    assert (got["state"], got["error"], got["restarts"]) == ("failed", "runtime_env setup failed: no such package", [])


def test_a_stop_made_in_ray_is_cancelled_like_a_cancel_and_neither_is_restarted(api):
    stopped, cancelled = api.submit(), api.submit()
    api.ray.jobs[stopped["id"]]["status"] = "RUNNING"
    write_job_state(api, stopped["id"])  # resumable: a lost driver would be restarted
    api.mlflow.parents[stopped["id"]] = parent(stopped["id"])
    assert read(api, stopped["id"])["state"] == "running"
    api.ray.jobs[stopped["id"]]["status"] = "STOPPED"  # `ray job stop`, behind the service's back
    got = read(api, stopped["id"])
    assert (got["state"], got["restarts"], got["error"]) == ("cancelled", [], STOPPED_OUTSIDE)
    assert list(api.ray.jobs) == [stopped["id"], cancelled["id"]] and f"run-{stopped['id']}" in api.mlflow.killed
    api.ray.jobs[cancelled["id"]]["status"] = "RUNNING"
    assert api.call("POST", f"/v1/jobs/{cancelled['id']}/cancel").json()["state"] == "cancelled"
    assert read(api, cancelled["id"])["restarts"] == [] and f"{cancelled['id']}-r1" not in api.ray.jobs
    assert read(api, cancelled["id"])["error"] is None


def test_a_job_ray_forgot_is_restarted(api):
    job = api.submit()
    write_job_state(api, job["id"])
    del api.ray.jobs[job["id"]]  # the Ray head restarted without GCS fault tolerance
    got = read(api, job["id"])
    assert got["state"] == "running" and got["restarts"][0]["reason"] == NO_RECORD


def test_ray_unreachable_at_the_restart_leaves_the_job_for_the_next_pass(api):
    job = api.submit()
    write_job_state(api, job["id"])
    kill(api, job["id"])
    api.ray.fail_submit = True
    got = read(api, job["id"])
    assert (got["state"], got["ray_submission_id"], got["restarts"]) == ("running", job["id"], [])
    assert "ray" in got["unavailable"]
    api.ray.fail_submit = False
    got = read(api, job["id"])
    assert got["ray_submission_id"] == f"{job['id']}-r1" and len(got["restarts"]) == 1


def test_two_passes_that_find_the_same_lost_driver_restart_it_once(api):
    job = api.submit()
    write_job_state(api, job["id"])
    kill(api, job["id"])
    b = api.app.state
    from service.backends import Backends, BackendTimer

    backends = Backends(settings=api.settings, ray=b.ray, mlflow=b.mlflow, timer=BackendTimer(), clock=b.clock,
                        outages=b.outages)
    with Session(b.engine, expire_on_commit=False) as one, Session(b.engine, expire_on_commit=False) as two:
        first, second = one.get(JobRow, job["id"]), two.get(JobRow, job["id"])  # both see the dead driver
        refresh(one, first, backends, force=True)
        refresh(two, second, backends, force=True)
        assert second.ray_submission_id == f"{job['id']}-r1" and len(second.restarts) == 1
    assert sorted(api.ray.jobs) == [job["id"], f"{job['id']}-r1"]


def test_a_restart_survives_an_api_restart(tmp_path):
    settings = make_settings(tmp_path)
    with Api(settings) as first:
        job = first.submit()
        ray = first.ray
        write_job_state(first, job["id"])
    kill(ray, job["id"])  # the driver died while no API was running
    api = Api(settings)
    api.app.state.ray = ray
    with api:  # start-up reconciliation restarts it
        assert api.row(job["id"]).ray_submission_id == f"{job['id']}-r1"
    ray.jobs[f"{job['id']}-r1"].update(status="SUCCEEDED", exit=M.EXIT_OK)
    with Session(api.app.state.engine) as s:
        from service.backends import Backends, BackendTimer

        backends = Backends(settings=settings, ray=ray, mlflow=api.mlflow, timer=BackendTimer(),
                            clock=api.app.state.clock)
        reconcile_all(s, backends)
    assert api.row(job["id"]).state == "succeeded" and len(api.row(job["id"]).restarts) == 1


@pytest.mark.parametrize("code,words", [(-9, "killed by SIGKILL"), (137, "killed by SIGKILL"),
                                        (130, "killed by SIGINT"), (7, "exited with code 7")])
def test_describe_exit(code, words):
    assert words in describe_exit(RayJobInfo("FAILED", "m", code))
    assert describe_exit(RayJobInfo("FAILED", "Job supervisor actor died: node gone\nmore", None)) == (
        "Ray lost the driver: Job supervisor actor died: node gone")


def test_a_resumed_drivers_orphaned_probe_runs_are_ended_but_not_its_full_run(api):
    job = api.submit()
    api.mlflow.parents[job["id"]] = parent(job["id"], phase="full_run")
    api.mlflow.children[f"run-{job['id']}"] = [
        {"run_id": "p1", "kind": "probe", "status": "FINISHED"},
        {"run_id": "p2", "kind": "probe", "status": "RUNNING"},   # the killed driver's probe
        {"run_id": "f1", "kind": "full_run", "status": "RUNNING"},  # the resumed driver logs on to it
    ]
    write_job_state(api, job["id"])
    kill(api, job["id"])
    assert read(api, job["id"])["restarts"][0]["resumed"]
    assert api.mlflow.killed == ["p2"]
