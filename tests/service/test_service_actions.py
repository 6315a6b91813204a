"""service.jobs.actions: cancel, trials, logs, listing."""

from service_kit import parent


def test_cancel(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    api.mlflow.parents[job["id"]] = parent(job["id"])
    r = api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled" and r.json()["cancel_requested"]
    assert api.mlflow.killed == [f"run-{job['id']}"]
    again = api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json() == {"detail": "the job is already cancelled"}


def test_cancel_waits_for_ray_to_confirm(make_api):
    # Ray reports the stop only on the third status read after it: a cancel that did not wait
    # (or asked Ray only once) would answer `running`.
    with make_api(cancel_wait_s=30.0) as api:
        job = api.submit()
        api.ray.jobs[job["id"]]["status"] = "RUNNING"
        api.ray.stop_confirmed_after = 2
        got = api.call("POST", f"/v1/jobs/{job['id']}/cancel").json()
        assert (got["state"], got["cancel_requested"]) == ("cancelled", True)


def test_cancel_stops_waiting_when_ray_never_confirms(make_api):
    with make_api(cancel_wait_s=0.5) as api:
        job = api.submit()
        api.ray.jobs[job["id"]]["status"] = "RUNNING"
        api.ray.stop_confirmed_after = None  # Ray accepted the stop but the driver hangs on
        reads = api.ray.status_reads
        got = api.call("POST", f"/v1/jobs/{job['id']}/cancel").json()
        assert (got["state"], got["cancel_requested"]) == ("running", True)
        assert api.ray.status_reads - reads >= 3  # before the stop, right after it, and again while waiting


def test_cancel_of_a_job_ray_never_received_is_immediate(api):
    job = api.submit()
    del api.ray.jobs[job["id"]]  # Ray refuses the stop
    with api.app.state.engine.begin() as conn:  # the row as a submit that died before Ray answered leaves it
        conn.exec_driver_sql("UPDATE jobs SET ray_submission_id = NULL WHERE id = ?", (job["id"],))
    got = api.call("POST", f"/v1/jobs/{job['id']}/cancel").json()
    assert (got["state"], got["cancel_requested"]) == ("cancelled", True)


def test_trials_and_logs(api):
    job = api.submit()
    api.mlflow.parents[job["id"]] = parent(job["id"])
    api.mlflow.children[f"run-{job['id']}"] = [
        {"run_id": "c1", "kind": "probe", "status": "FINISHED", "start_length": 8, "duration_steps": 16,
         "verdict": "diverged", "reason": "loss ratio 3.1", "metrics": {"val/ppl": float("nan"), "step": 12.0}},
        {"run_id": "c2", "kind": "probe", "status": "RUNNING", "metrics": {"val/ppl": 41.5}},
    ]
    trials = api.call("GET", f"/v1/jobs/{job['id']}/trials").json()
    assert trials["count"] == 2 and trials["data"][0]["metrics"] == {"val/ppl": None, "step": 12.0}
    assert trials["data"][0]["verdict"] == "diverged"
    logs = api.call("GET", f"/v1/jobs/{job['id']}/logs", params={"tail": 2}).json()
    assert logs == {"job_id": job["id"], "lines": ["line 2", "line 3"], "truncated": True}


def test_pagination_and_state_filter(api):
    ids = [api.submit()["id"] for _ in range(5)]
    api.ray.jobs[ids[0]]["status"] = "RUNNING"
    page = api.call("GET", "/v1/jobs", params={"limit": 2}).json()
    assert page["count"] == 5 and [j["id"] for j in page["data"]] == ids[::-1][:2]
    last = api.call("GET", "/v1/jobs", params={"limit": 2, "offset": 4}).json()
    assert [j["id"] for j in last["data"]] == [ids[0]]
    running = api.call("GET", "/v1/jobs", params={"state": "running"}).json()
    assert running["count"] == 1 and running["data"][0]["id"] == ids[0]
    assert api.call("GET", "/v1/jobs", params={"state": "bogus"}).status_code == 422
    assert api.call("GET", "/v1/jobs", params={"limit": 10_000}).status_code == 422
