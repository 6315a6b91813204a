"""The REST service without Ray or MLflow processes: FastAPI's TestClient, a temp SQLite registry,
and in-memory stand-ins for the Ray Jobs API and MLflow (or a closed port, to see the 503s)."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.app import create_app
from service.db import JobRow
from service.mlflow_reader import MlflowReader, ParentRun
from service.ray_jobs import BackendError, BackendUnavailable, RayJobInfo, RayJobs
from service.settings import Settings, parse_tokens

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"
TINY = {"preset": "shakespeare-tiny"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


class FakeRay(RayJobs):
    """The Ray Jobs API in memory: jobs move when a test sets their status."""

    def __init__(self):
        super().__init__("http://ray.test:8265")
        self.jobs: dict[str, dict] = {}
        self.down = False
        self.fail_submit = False
        self.listed = 0

    def _check(self):
        if self.down:
            raise BackendUnavailable("Ray", "down (test)")

    def ping(self, max_age_s=0.0):
        self._check()

    def submit(self, job_id, entrypoint, *, runtime_env=None, metadata=None):
        self._check()
        if self.fail_submit:
            raise BackendUnavailable("Ray", "dropped the submission (test)")
        self.jobs[job_id] = {"status": "PENDING", "entrypoint": entrypoint, "runtime_env": runtime_env,
                             "metadata": metadata, "exit": None, "logs": "line 1\nline 2\nline 3\n"}
        return job_id

    def info(self, job_id):
        self._check()
        job = self.jobs.get(job_id)
        return None if job is None else RayJobInfo(job["status"], "msg", job["exit"])

    def all_jobs(self):
        self._check()
        self.listed += 1
        return {job_id: self.info(job_id) for job_id in self.jobs}

    def stop(self, job_id):
        self._check()
        if job_id not in self.jobs:
            raise BackendError("Ray", f"stop: Request failed with status code 404: Job {job_id} does not exist.")
        self.jobs[job_id]["status"] = "STOPPED"
        return True

    def logs(self, job_id):
        self._check()
        return self.jobs[job_id]["logs"]


class FakeMlflow(MlflowReader):
    """MLflow in memory: a parent run per job id, children per parent."""

    def __init__(self):
        super().__init__()
        self.parents: dict[str, ParentRun] = {}
        self.children: dict[str, list[dict]] = {}
        self.down = False
        self.killed: list[str] = []

    def _check(self):
        if self.down:
            raise BackendUnavailable("MLflow", "down (test)")

    def health(self, uri, max_age_s=0.0):
        self._check()

    def parent_run(self, uri, experiment, job_id, run_id=None):
        self._check()
        return self.parents.get(job_id)

    def trials(self, uri, experiment_id, parent_run_id):
        self._check()
        return self.children.get(parent_run_id, [])

    def mark_killed(self, uri, experiment_id, parent_run_id):
        self.killed.append(parent_run_id)


def make_settings(tmp_path: Path, **kw) -> Settings:
    base = dict(api_tokens={"alice": SecretStr(ALICE), "bob": SecretStr(BOB)},
                database_url=f"sqlite:///{tmp_path / 'registry.db'}",
                ray_address=f"http://127.0.0.1:{closed_port()}", ray_token=None,
                mlflow_tracking_uri=f"http://127.0.0.1:{closed_port()}",
                data_root=tmp_path / "data", jobs_dir=tmp_path / "jobs", refresh_interval_s=0.0,
                cancel_wait_s=0.0, backend_timeout_s=2.0)
    base.update(kw)
    return Settings(**base)


class Api:
    """A TestClient plus handles on the fakes and the registry."""

    def __init__(self, settings: Settings, fakes: bool = True):
        self.settings = settings
        self.app = create_app(settings)
        self.ray, self.mlflow = FakeRay(), FakeMlflow()
        if fakes:
            self.app.state.ray, self.app.state.mlflow = self.ray, self.mlflow
        self.client = TestClient(self.app)

    def __enter__(self):
        self.client.__enter__()
        return self

    def __exit__(self, *exc):
        self.client.__exit__(*exc)

    def call(self, method: str, path: str, who: str | None = "alice", **kw):
        headers = kw.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {ALICE if who == 'alice' else BOB}"
        return self.client.request(method, path, headers=headers, **kw)

    def submit(self, body=TINY, who="alice", **kw):
        r = self.call("POST", "/v1/jobs", who, json=body, **kw)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def rows(self) -> int:
        with Session(self.app.state.engine) as s:
            return s.scalar(select(func.count()).select_from(JobRow))

    def job_dirs(self) -> list[Path]:
        d = self.settings.jobs_dir
        return sorted(d.iterdir()) if d.exists() else []


@pytest.fixture
def api(tmp_path):
    (tmp_path / "data").mkdir()
    with Api(make_settings(tmp_path)) as a:
        yield a


# ---- health and auth -----------------------------------------------------------------------------


def test_healthz_needs_no_token(api):
    assert api.call("GET", "/healthz", who=None).json() == {"status": "ok"}


def test_readyz_names_the_unreachable_backends(api):
    api.ray.down = True
    r = api.call("GET", "/readyz", who=None)
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and not checks["ray"]["ok"] and checks["mlflow"]["ok"]


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("GET", "/v1/jobs/x/trials"),
    ("GET", "/v1/jobs/x/logs"), ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/search-spaces"),
    ("GET", "/v1/search-spaces/shakespeare-tiny"),
])
def test_every_v1_endpoint_needs_a_token(api, method, path):
    r = api.call(method, path, who=None, json=TINY if method == "POST" else None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401_and_never_logged(api, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "not-a-real-token-0123456789"
    for header in (f"Bearer {wrong}", f"Basic {wrong}", wrong):
        r = api.client.get("/v1/jobs", headers={"Authorization": header})
        assert r.status_code == 401
    assert wrong not in caplog.text and ALICE not in caplog.text


def test_another_principals_job_is_a_404(api):
    job = api.submit(who="alice")
    for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/trials"),
                         ("GET", f"/v1/jobs/{job['id']}/logs"), ("POST", f"/v1/jobs/{job['id']}/cancel")]:
        assert api.call(method, path, who="bob").status_code == 404, path
    assert api.call("GET", "/v1/jobs", who="bob").json() == {"data": [], "count": 0}
    assert api.ray.jobs[job["id"]]["status"] == "PENDING"  # bob's cancel did not reach Ray


def test_token_list_errors_never_show_a_token():
    secret = "s3cret-token-abcdefghij"
    for text in (f"alice:{secret},alice:{secret}x", f"alice:{secret},bob:{secret}", f"alice{secret}"):
        with pytest.raises(ValueError) as info:
            parse_tokens(text)
        assert secret not in str(info.value)
    assert parse_tokens(f" alice:{secret} , bob:{secret}2 ")["bob"].get_secret_value() == secret + "2"


def test_settings_require_api_tokens(monkeypatch, tmp_path):
    monkeypatch.delenv("SLWTUNE_API_TOKENS", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    with pytest.raises(ValidationError, match="api_tokens"):
        Settings()
    monkeypatch.setenv("SLWTUNE_API_TOKENS", "ci:0123456789abcdef0123")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-secret")
    s = Settings()
    assert list(s.api_tokens) == ["ci"] and s.ray_token.get_secret_value() == "ray-secret"
    assert "0123456789abcdef0123" not in repr(s)


# ---- submit -----------------------------------------------------------------------------------------


def test_submit_preset_with_overrides(api):
    r = api.call("POST", "/v1/jobs", json={"preset": "shakespeare-tiny", "overrides": {"optim.lr": 0.002}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["spec"]["optim"]["lr"] == 0.002
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert "ray_submit;dur=" in r.headers["server-timing"]
    ray_job = api.ray.jobs[job["id"]]
    assert "slwtune.driver" in ray_job["entrypoint"] and f"--job-id {job['id']}" in ray_job["entrypoint"]
    assert ray_job["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == api.settings.mlflow_tracking_uri
    spec_file = api.settings.jobs_dir / job["id"] / "spec.yaml"
    assert str(spec_file) in ray_job["entrypoint"] and "lr: 0.002" in spec_file.read_text()
    assert job["links"]["ray_dashboard"].endswith(f"/#/jobs/{job['id']}")


def test_submit_full_spec_with_a_dataset_inside_the_data_root(api):
    (api.settings.data_root / "wiki").mkdir()
    r = api.call("POST", "/v1/jobs", json={"spec": {"name": "wiki", "data": {"path": "wiki"}}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data"]["path"] == str((api.settings.data_root / "wiki").resolve())


def test_working_dir_transport_uploads_the_job_folder(tmp_path):
    with Api(make_settings(tmp_path, spec_transport="working_dir", driver_python="python")) as api:
        job = api.submit()
        ray_job = api.ray.jobs[job["id"]]
        assert ray_job["runtime_env"]["working_dir"] == str(api.settings.jobs_dir.resolve() / job["id"])
        assert ray_job["entrypoint"].startswith("python -m slwtune.driver --spec-file spec.yaml")


def test_idempotency_key_replays_the_same_job(api):
    key = {"Idempotency-Key": "k-1"}
    first = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    again = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and api.rows() == 1 and len(api.ray.jobs) == 1
    other = api.call("POST", "/v1/jobs", json={**TINY, "overrides": {"seed": 7}}, headers=dict(key))
    assert other.status_code == 409 and api.rows() == 1
    # Keys are per principal: bob's k-1 is another job.
    assert api.call("POST", "/v1/jobs", who="bob", json=TINY, headers=dict(key)).status_code == 201
    assert api.rows() == 2


def test_ray_unreachable_is_503_and_leaves_nothing(tmp_path):
    with Api(make_settings(tmp_path), fakes=False) as api:  # the real client, pointed at a closed port
        r = api.call("POST", "/v1/jobs", json=TINY)
        assert r.status_code == 503
        assert "Ray is unavailable" in r.json()["detail"] and api.settings.ray_address in r.json()["detail"]
        assert api.rows() == 0 and api.job_dirs() == []


def test_mlflow_unreachable_is_503_and_leaves_nothing(api):
    api.mlflow.down = True
    r = api.call("POST", "/v1/jobs", json=TINY)
    assert r.status_code == 503 and "MLflow is unavailable" in r.json()["detail"]
    assert api.rows() == 0 and api.job_dirs() == [] and api.ray.jobs == {}


def test_failed_ray_submit_removes_the_row(api):
    api.ray.fail_submit = True
    r = api.call("POST", "/v1/jobs", json=TINY, headers={"Idempotency-Key": "k"})
    assert r.status_code == 503
    assert api.rows() == 0 and api.job_dirs() == []
    api.ray.fail_submit = False  # the same key works once Ray is back
    assert api.call("POST", "/v1/jobs", json=TINY, headers={"Idempotency-Key": "k"}).status_code == 201


# ---- bad requests: one test per rule family; each leaves the registry and Ray untouched ---------------


def rejected(api, body=None, *, content=None, status=422) -> list[dict]:
    kw = {"json": body} if content is None else {"content": content, "headers": {"Content-Type": "application/json"}}
    r = api.call("POST", "/v1/jobs", **kw)
    assert r.status_code == status, r.text
    assert api.rows() == 0 and api.ray.jobs == {} and api.job_dirs() == []
    return r.json()["detail"] if status == 422 else []


def fields(detail: list[dict]) -> dict[str, object]:
    return {e.get("field") or ".".join(map(str, e["loc"][1:])): e["input"] for e in detail}


def test_unknown_fields_are_rejected(api):
    assert fields(rejected(api, {"spec": {"slw": {"start_len": 8}}})) == {"slw.start_len": 8}
    assert "tuning.stratgy" in fields(rejected(api, {**TINY, "overrides": {"tuning.stratgy": "grid"}}))
    assert "priority" in fields(rejected(api, {**TINY, "priority": 1}))  # the request body itself


def test_nan_is_rejected_and_named(api):
    detail = rejected(api, content=b'{"spec": {"optim": {"lr": NaN}}}')
    assert fields(detail) == {"optim.lr": "nan"}
    assert detail[0]["loc"] == ["body", "spec", "optim", "lr"]


def test_cross_field_rules_report_every_problem(api):
    got = fields(rejected(api, {**TINY, "overrides": {"slw.start_length": 12, "optim.min_lr": 1.0}}))
    assert got == {"slw.start_length": 12, "optim.min_lr": 1.0}


def test_spec_xor_preset(api):
    rejected(api, {"spec": {}, "preset": "shakespeare-tiny"})
    rejected(api, {"overrides": {"seed": 1}})


def test_unknown_preset(api):
    detail = rejected(api, {"preset": "gpt5-huge"})
    assert detail[0]["loc"] == ["body", "preset"] and detail[0]["input"] == "gpt5-huge"
    assert "shakespeare-tiny" in detail[0]["msg"]


@pytest.mark.parametrize("path", ["/etc", "../outside", "link/inside"])
def test_data_paths_must_resolve_inside_the_data_root(api, tmp_path, path):
    (tmp_path / "outside").mkdir()
    (api.settings.data_root / "link").symlink_to(tmp_path / "outside")
    assert fields(rejected(api, {"spec": {"data": {"path": path}}})) == {"data.path": path}


def test_sqlite_optuna_study_must_lie_inside_the_data_root(api):
    bad = "sqlite:////tmp/elsewhere.db"
    assert fields(rejected(api, {**TINY, "overrides": {"tuning.optuna_storage": bad}})) == {
        "tuning.optuna_storage": bad}


def test_budget_limit(api):
    got = fields(rejected(api, {**TINY, "overrides": {"budget.train_tokens": 10**13}}))
    assert got == {"budget.train_tokens": 10**13}


def test_trials_limit(api):
    body = {**TINY, "overrides": {"tuning.strategy": "optuna", "tuning.n_trials": 500}}
    detail = rejected(api, body)
    assert fields(detail) == {"tuning.n_trials": 500} and "allows 200" in detail[0]["msg"]


def test_body_too_large_is_413(api):
    body = json.dumps({**TINY, "overrides": {"name": "x" * (api.settings.max_body_bytes + 1)}}).encode()
    rejected(api, content=body, status=413)


# ---- reads, reconciliation, cancel --------------------------------------------------------------------


def parent(job_id, phase="probing", verdict=None, chosen=None, progress="round 1"):
    return ParentRun(run_id=f"run-{job_id}", experiment_id="7", status="RUNNING", phase=phase,
                     progress=progress, verdict=verdict, chosen=chosen)


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
    api.mlflow.parents[job["id"]] = parent(job["id"], phase="done", verdict="chosen", chosen=chosen)
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert (got["state"], got["phase"], got["chosen"], got["error"]) == ("succeeded", "full_run", chosen, None)


def test_nothing_stable_is_failed_with_a_reason(api):
    job = api.submit()
    api.ray.jobs[job["id"]].update(status="FAILED", exit=2)
    api.mlflow.parents[job["id"]] = parent(job["id"], phase="done", verdict="none_stable")
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert (got["state"], got["phase"], got["error"]) == ("failed", "selecting", "no stable configuration")


def test_reads_survive_backends_being_down(api):
    job = api.submit()
    api.ray.down = api.mlflow.down = True
    got = api.call("GET", f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json()["state"] == "queued"
    assert api.call("GET", f"/v1/jobs/{job['id']}/trials").status_code == 503
    assert api.call("GET", f"/v1/jobs/{job['id']}/logs").status_code == 503


def test_restart_reconciles_jobs_finished_while_down(tmp_path):
    settings = make_settings(tmp_path)
    with Api(settings) as first:
        job = first.submit()
        ray = first.ray
    ray.jobs[job["id"]]["status"] = "SUCCEEDED"  # finished while no API was running
    api = Api(settings)
    api.app.state.ray = ray
    with api:  # start-up reconciles before any read
        with Session(api.app.state.engine) as s:
            assert s.get(JobRow, job["id"]).state == "succeeded"


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
        with Session(api.app.state.engine) as s:
            assert {s.get(JobRow, i).state for i in ids} == {"running"}
    assert ray.listed == 1


def test_background_reconciler_updates_without_reads(tmp_path):
    import time

    with Api(make_settings(tmp_path, refresh_interval_s=0.2)) as api:
        job = api.submit()
        api.ray.jobs[job["id"]]["status"] = "SUCCEEDED"
        deadline = time.time() + 10
        while time.time() < deadline:
            with Session(api.app.state.engine) as s:
                if s.get(JobRow, job["id"]).state == "succeeded":
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the reconciler did not pick up the finished job")


def test_reads_of_a_fresh_job_do_not_wait_on_ray(tmp_path):
    with Api(make_settings(tmp_path, refresh_interval_s=600)) as api:
        job = api.submit()
        api.ray.down = True  # a read that asked Ray would log a warning and still answer; this one must not ask
        r = api.call("GET", f"/v1/jobs/{job['id']}")
        assert r.status_code == 200 and "server-timing" not in r.headers


def test_cancel(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    api.mlflow.parents[job["id"]] = parent(job["id"])
    r = api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled" and r.json()["cancel_requested"]
    assert api.mlflow.killed == [f"run-{job['id']}"]
    assert api.call("POST", f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_cancel_waits_for_ray_to_confirm(tmp_path):
    with Api(make_settings(tmp_path, cancel_wait_s=0.0)) as api:
        job = api.submit()
        api.ray.jobs[job["id"]]["status"] = "RUNNING"
        api.ray.stop = lambda job_id: True  # Ray accepted the stop but still reports RUNNING
        got = api.call("POST", f"/v1/jobs/{job['id']}/cancel").json()
        assert (got["state"], got["cancel_requested"]) == ("running", True)


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


def test_search_spaces(api):
    listed = api.call("GET", "/v1/search-spaces").json()
    names = [s["name"] for s in listed["data"]]
    assert "shakespeare-tiny" in names and listed["count"] == len(names)
    one = api.call("GET", "/v1/search-spaces/shakespeare-tiny").json()
    assert one["spec"]["name"] == "shakespeare-tiny" and one["spec"]["tuning"]["strategy"] == "paper"
    assert api.call("GET", "/v1/search-spaces/nope").status_code == 404


def test_openapi_documents_the_v1_routes(api):
    paths = api.call("GET", "/openapi.json", who=None).json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/trials", "/v1/jobs/{job_id}/logs",
            "/v1/jobs/{job_id}/cancel", "/v1/search-spaces", "/v1/search-spaces/{name}"} <= set(paths)
    assert api.call("GET", "/docs", who=None).status_code == 200
