"""End to end through the real API (uvicorn), a real local Ray head and a real MLflow server.

One `shakespeare-tiny` job is followed from submit to `succeeded` with the API stopped in the
middle: it finishes while no API runs, and the restarted API must report it right from its
start-up reconciliation. A second job is cancelled while running.
"""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from devstack.waiting import retrying, wait_for

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 900  # the whole tiny tuning: a few minutes on 2 CPU cores


def get_job(api, job_id: str) -> dict:
    r = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=api.headers(), timeout=30)
    r.raise_for_status()  # a 5xx is waited out by wait_for (devstack.waiting.transient)
    return r.json()


def submit(api, body: dict) -> dict:
    """POST a job; a 503 (Ray slow to answer on a busy machine) is tried again under one Idempotency-Key."""
    headers = {**api.headers(), "Idempotency-Key": f"e2e-{time.time()}"}
    return retrying(lambda: httpx.post(f"{api.url}/v1/jobs", json=body, headers=headers, timeout=60)
                    .raise_for_status().json(), "the API to accept the job", 300, say=print)


def driver_log(api, job_id: str) -> str:
    r = httpx.get(f"{api.url}/v1/jobs/{job_id}/logs", params={"tail": 60}, headers=api.headers(), timeout=30)
    return "\n".join(r.json()["lines"]) if r.status_code == 200 else r.text


def ray_status(ray_head, job_id: str) -> str:
    r = httpx.get(f"{ray_head.address}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {ray_head.token}"},
                  timeout=10)
    r.raise_for_status()
    return r.json()["status"]


def test_readyz_sees_every_backend(api_server):
    r = httpx.get(f"{api_server.url}/readyz", timeout=30)
    assert r.status_code == 200, r.text
    assert all(c["ok"] for c in r.json()["checks"].values())


def test_cancel_a_running_job(api_server):
    job = submit(api_server, {"preset": "shakespeare-tiny", "overrides": {"name": "e2e-cancel"}})
    wait_for(lambda: get_job(api_server, job["id"]), lambda j: j["state"] != "queued", 180, what="running")
    r = httpx.post(f"{api_server.url}/v1/jobs/{job['id']}/cancel", headers=api_server.headers(), timeout=60)
    assert r.status_code == 202, r.text
    assert r.json()["cancel_requested"]
    final = wait_for(lambda: get_job(api_server, job["id"]), lambda j: j["state"] == "cancelled", 60,
                     what="cancelled")
    assert final["error"] is None
    # bob cannot see it, and a second cancel says it is over
    assert httpx.get(f"{api_server.url}/v1/jobs/{job['id']}", headers=api_server.headers("bob")).status_code == 404
    again = httpx.post(f"{api_server.url}/v1/jobs/{job['id']}/cancel", headers=api_server.headers(), timeout=60)
    assert again.status_code == 409


def test_job_finishes_while_the_api_is_down_and_is_reported_right(api_server, ray_head):
    job = submit(api_server, {"preset": "shakespeare-tiny"})
    job_id = job["id"]
    assert job["links"]["ray_dashboard"].endswith(f"/#/jobs/{job_id}")

    # Mid-job: the driver has its MLflow parent run and is probing.
    seen = wait_for(lambda: get_job(api_server, job_id), lambda j: j["phase"] is not None or j["state"] in
                    ("succeeded", "failed", "cancelled"), 300, what="the probing phase")
    assert seen["state"] == "running", f"{seen}\n{driver_log(api_server, job_id)}"
    assert seen["mlflow_parent_run_id"] and seen["links"]["mlflow_run"]

    api_server.stop()
    status = wait_for(lambda: ray_status(ray_head, job_id), lambda s: s in ("SUCCEEDED", "FAILED", "STOPPED"),
                      JOB_TIMEOUT_S, every=5, what="the Ray job to end")
    db = sqlite3.connect(api_server.root / "registry.db")
    assert db.execute("select state from jobs where id = ?", (job_id,)).fetchone()[0] == "running"
    db.close()

    api_server.start()
    # Start-up reconciled the registry before the first read.
    db = sqlite3.connect(api_server.root / "registry.db")
    state, phase, chosen = db.execute("select state, phase, chosen from jobs where id = ?", (job_id,)).fetchone()
    db.close()
    assert status == "SUCCEEDED", driver_log(api_server, job_id)
    assert state == "succeeded" and chosen

    final = get_job(api_server, job_id)
    assert final["state"] == "succeeded" and final["error"] is None
    assert final["phase"] == "full_run"
    assert set(final["chosen"]) == {"start_length", "duration_steps"}

    r = httpx.get(f"{api_server.url}/v1/jobs/{job_id}/trials", headers=api_server.headers(), timeout=60)
    assert r.status_code == 200, r.text
    trials = r.json()
    assert trials["count"] == len(trials["data"]) >= 2
    probes = [t for t in trials["data"] if t["kind"] == "probe"]
    full = [t for t in trials["data"] if t["kind"] == "full_run"]
    assert probes and all(t["verdict"] for t in probes) and len(full) == 1
    stable = {(t["start_length"], t["duration_steps"]) for t in probes if t["verdict"] == "stable"}
    assert (final["chosen"]["start_length"], final["chosen"]["duration_steps"]) in stable
    assert any(t["metrics"].get("val/ppl") for t in probes)

    assert driver_log(api_server, job_id)
    listed = httpx.get(f"{api_server.url}/v1/jobs", params={"state": "succeeded"}, headers=api_server.headers()).json()
    assert job_id in [j["id"] for j in listed["data"]]
