"""DELETE /v1/jobs/{id}: cancel if running, then the job's checkpoints, its folder and its row go;
its MLflow runs only when asked. A refusal (403/404, 409, 503) deletes nothing."""

from pathlib import Path

import yaml
from service_kit import parent
from sqlalchemy.orm import Session

from slwtune.storage import job_prefix

from service.jobs.reconciliation import reconcile_all

ROOT = Path(__file__).resolve().parents[2]


def checkpoints(api, job, names=("round1", "probe-abc", "full")) -> list[Path]:
    """Ray runs of a job as Tune and Train lay them out under the storage, with a checkpoint each."""
    runs = []
    for name in names:
        run = Path(api.settings.storage) / f"{job_prefix(job['name'], job['id'])}{name}"
        (run / "checkpoint_000000").mkdir(parents=True)
        (run / "checkpoint_000000" / "model.pt").write_bytes(b"x" * 1000)
        runs.append(run)
    return runs


def finished(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "SUCCEEDED"
    api.mlflow.parents[job["id"]] = parent(job["id"])
    api.mlflow.children[f"run-{job['id']}"] = [{"run_id": "probe-1"}, {"run_id": "full-1"}]
    return job


def test_delete_removes_checkpoints_folder_and_row_and_keeps_mlflow_runs(api):
    job, other = finished(api), finished(api)
    runs, others = checkpoints(api, job), checkpoints(api, other)
    folder = api.settings.jobs_dir.resolve() / job["id"]
    r = api.call("DELETE", f"/v1/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["checkpoint_runs_deleted"], body["mlflow_runs_deleted"]) == (job["id"], 3, 0)
    assert body["bytes_freed"] >= 3000
    assert not any(run.exists() for run in runs) and not folder.exists()
    assert all(run.exists() for run in others)  # another job's checkpoints stay
    assert api.call("GET", f"/v1/jobs/{job['id']}").status_code == 404 and api.row(job["id"]) is None
    assert api.mlflow.deleted == []
    assert api.call("DELETE", f"/v1/jobs/{job['id']}").status_code == 404


def test_delete_mlflow_runs_when_asked(api):
    job = finished(api)
    r = api.call("DELETE", f"/v1/jobs/{job['id']}", params={"delete_mlflow_runs": "true"})
    assert r.status_code == 200 and r.json()["mlflow_runs_deleted"] == 3
    assert api.mlflow.deleted == ["probe-1", "full-1", f"run-{job['id']}"]


def test_delete_cancels_a_running_job_first_and_it_never_comes_back(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    runs = checkpoints(api, job)
    r = api.call("DELETE", f"/v1/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    assert api.ray.jobs[job["id"]]["status"] == "STOPPED" and not any(run.exists() for run in runs)
    with Session(api.app.state.engine) as s:  # the next reconciliation pass: nothing to restart
        from service.backends import Backends, BackendTimer

        state = api.app.state
        assert reconcile_all(s, Backends(settings=api.settings, ray=state.ray, mlflow=state.mlflow,
                                         timer=BackendTimer(), clock=state.clock)) == 0
    assert list(api.ray.jobs) == [job["id"]] and api.rows() == 0


def test_a_driver_that_does_not_stop_yet_leaves_everything(make_api):
    with make_api(cancel_wait_s=0.3) as api:
        job = api.submit()
        api.ray.jobs[job["id"]]["status"] = "RUNNING"
        api.ray.stop_confirmed_after = None  # Ray took the stop; the driver has not ended yet
        runs = checkpoints(api, job)
        r = api.call("DELETE", f"/v1/jobs/{job['id']}")
        assert r.status_code == 409 and r.headers["retry-after"] == "5"
        assert all(run.exists() for run in runs) and api.row(job["id"]).cancel_requested
        api.ray.jobs[job["id"]]["status"] = "STOPPED"  # it ended: the retry deletes
        assert api.call("DELETE", f"/v1/jobs/{job['id']}").status_code == 200
        assert not any(run.exists() for run in runs)
        assert f"{job['id']}-r1" not in api.ray.jobs  # the stop was a cancel, not a lost driver


def test_backends_down_delete_nothing(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    runs = checkpoints(api, job)
    api.ray.down = True
    assert api.call("DELETE", f"/v1/jobs/{job['id']}").status_code == 503
    api.ray.down = False
    api.ray.jobs[job["id"]]["status"] = "SUCCEEDED"
    api.mlflow.down = True
    assert api.call("DELETE", f"/v1/jobs/{job['id']}", params={"delete_mlflow_runs": "true"}).status_code == 503
    assert all(run.exists() for run in runs) and api.row(job["id"]) is not None
    api.mlflow.down = False
    assert api.call("DELETE", f"/v1/jobs/{job['id']}").status_code == 200


def test_another_principals_job_is_not_found_and_kept(api):
    job = finished(api)
    runs = checkpoints(api, job)
    assert api.call("DELETE", f"/v1/jobs/{job['id']}", who="bob").status_code == 404
    assert api.call("DELETE", "/v1/jobs/slw-nope").status_code == 404
    assert api.call("DELETE", f"/v1/jobs/{job['id']}", who=None).status_code == 401
    assert all(run.exists() for run in runs) and api.row(job["id"]) is not None


def test_compose_gives_the_api_the_storage_the_ray_nodes_write(tmp_path):
    # DELETE removes checkpoints from the storage: the API must see it where the Ray nodes write it.
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    def env(name):
        e = services[name].get("environment") or {}
        return e if isinstance(e, dict) else dict(x.split("=", 1) for x in e)

    def mounts(name):
        return {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes", [])}

    path = env("ray-head")["SLWTUNE_STORAGE"]
    assert env("api")["SLWTUNE_STORAGE"] == path
    assert mounts("api")[path] == mounts("ray-head")[path] == mounts("ray-worker")[path]
