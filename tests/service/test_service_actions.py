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
        {"run_id": "c2", "kind": "probe", "status": "RUNNING", "metrics": {"val/ppl": 41.5}, "resumed_from_step": 32},
    ]
    trials = api.call("GET", f"/v1/jobs/{job['id']}/trials").json()
    assert trials["count"] == 2 and trials["data"][0]["metrics"] == {"val/ppl": None, "step": 12.0}
    assert trials["data"][0]["verdict"] == "diverged"
    assert [t["resumed_from_step"] for t in trials["data"]] == [None, 32]  # went on after its driver was lost
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


def test_trials_while_mlflow_is_down_are_the_last_read_marked_stale(api):
    job = api.submit()
    api.mlflow.parents[job["id"]] = parent(job["id"])
    api.mlflow.children[f"run-{job['id']}"] = [{"run_id": "c1", "kind": "probe", "status": "FINISHED",
                                                 "verdict": "stable", "metrics": {"val/ppl": 41.5}}]
    fresh = api.call("GET", f"/v1/jobs/{job['id']}/trials").json()
    assert (fresh["count"], fresh["stale"], fresh["degraded"]) == (1, False, None)
    api.mlflow.children[f"run-{job['id']}"].append({"run_id": "c2", "kind": "probe", "status": "RUNNING"})
    api.mlflow.down = True
    r = api.call("GET", f"/v1/jobs/{job['id']}/trials")
    assert r.status_code == 200
    got = r.json()
    assert [t["run_id"] for t in got["data"]] == ["c1"] and got["stale"]  # as last read, not c2
    assert "MLflow is unavailable: down (test)" in got["degraded"] and "as last read at 20" in got["degraded"]
    assert "mlflow" in api.call("GET", f"/v1/jobs/{job['id']}").json()["unavailable"]
    api.mlflow.down = False
    back = api.call("GET", f"/v1/jobs/{job['id']}/trials").json()
    assert [t["run_id"] for t in back["data"]] == ["c1", "c2"] and not back["stale"]
    assert api.call("GET", f"/v1/jobs/{job['id']}").json()["unavailable"] == {}


class SlowServer:
    """An HTTP server that holds every request `delay_s` before answering 503 (MLflow on a machine
    whose cores the probes keep busy): slower than the API's backend timeout."""

    def __init__(self, delay_s: float):
        import http.server
        import threading
        import time

        class Slow(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                time.sleep(delay_s)
                try:
                    self.send_response(503)
                    self.end_headers()
                except OSError:
                    pass  # the client gave up first

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_trials_while_mlflow_answers_slower_than_the_timeout_are_stale_not_503(make_api, monkeypatch):
    from service.mlflow_reader import MlflowReader

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # what MlflowReader(timeout=1.0) sets in a fresh process
    slow = SlowServer(delay_s=3.0)
    try:
        with make_api(mlflow_tracking_uri=slow.uri, backend_timeout_s=1.0) as api:
            job = api.submit()
            api.app.state.mlflow = MlflowReader(timeout=1.0)  # the real client, against the slow server
            r = api.call("GET", f"/v1/jobs/{job['id']}/trials")
            assert r.status_code == 200, r.text
            assert r.json()["stale"] and "MLflow is unavailable" in r.json()["degraded"]
    finally:
        slow.close()
