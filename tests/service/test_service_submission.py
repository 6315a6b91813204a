"""service.jobs.submission: the driver command, idempotency, and a failed submit leaving nothing."""

import shlex
import threading
from concurrent.futures import ThreadPoolExecutor

from service_kit import TINY

from service.backends import BackendUnavailable


def test_submit_preset_with_overrides(api):
    r = api.call("POST", "/v1/jobs", json={"preset": "shakespeare-tiny", "overrides": {"optim.lr": 0.002}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["spec"]["optim"]["lr"] == 0.002
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert "ray_submit;dur=" in r.headers["server-timing"]
    ray_job = api.ray.jobs[job["id"]]
    assert ray_job["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == api.settings.mlflow_tracking_uri
    spec_file = api.settings.jobs_dir / job["id"] / "spec.yaml"
    assert "lr: 0.002" in spec_file.read_text()
    assert job["links"]["ray_dashboard"].endswith(f"/#/jobs/{job['id']}")


def test_the_driver_is_the_cli_tune_command(api):
    job = api.submit()
    argv = shlex.split(api.ray.jobs[job["id"]]["entrypoint"])
    job_dir = api.settings.jobs_dir.resolve() / job["id"]
    assert argv == [api.settings.driver_python, "-m", "slwtune.cli", "tune", str(job_dir / "spec.yaml"),
                    "--job-id", job["id"], "--out", str(job_dir / "out")]


def test_the_driver_command_parses_with_the_cli(api):
    """The entrypoint's arguments are what `slwtune tune` accepts (a renamed flag would fail here)."""
    from slwtune.cli import build_parser

    job = api.submit()
    argv = shlex.split(api.ray.jobs[job["id"]]["entrypoint"])
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.job_id, args.out) == ("tune", job["id"], argv[-1])


def test_submit_full_spec_with_a_dataset_inside_the_data_root(api, dataset_in):
    dataset_in(api.settings.data_root / "wiki")
    r = api.call("POST", "/v1/jobs", json={"spec": {"name": "wiki", "data": {"path": "wiki"}}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data"]["path"] == str((api.settings.data_root / "wiki").resolve())


def test_working_dir_transport_uploads_the_job_folder(make_api):
    with make_api(spec_transport="working_dir", driver_python="python") as api:
        job = api.submit()
        ray_job = api.ray.jobs[job["id"]]
        assert ray_job["runtime_env"]["working_dir"] == str(api.settings.jobs_dir.resolve() / job["id"])
        assert shlex.split(ray_job["entrypoint"]) == ["python", "-m", "slwtune.cli", "tune", "spec.yaml",
                                                      "--job-id", job["id"], "--out", "out"]


def test_idempotency_key_replays_the_same_job(api):
    key = {"Idempotency-Key": "k-1"}
    first = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    again = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and api.rows() == 1 and len(api.ray.jobs) == 1
    other = api.call("POST", "/v1/jobs", json={**TINY, "overrides": {"seed": 7}}, headers=dict(key))
    assert other.status_code == 409 and api.rows() == 1
    assert other.json() == {"detail": "this Idempotency-Key was used for a different job spec"}
    # Keys are per principal: bob's k-1 is another job.
    assert api.call("POST", "/v1/jobs", who="bob", json=TINY, headers=dict(key)).status_code == 201
    assert api.rows() == 2


def test_ray_unreachable_is_503_and_leaves_nothing(make_api):
    with make_api(fakes=False) as api:  # the real client, pointed at a closed port
        r = api.call("POST", "/v1/jobs", json=TINY)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "Ray is unavailable" in r.json()["detail"] and api.settings.ray_address in r.json()["detail"]
        assert api.rows() == 0 and api.job_dirs() == []


def test_mlflow_unreachable_is_503_and_leaves_nothing(api):
    api.mlflow.down = True
    r = api.call("POST", "/v1/jobs", json=TINY)
    assert r.status_code == 503 and "MLflow is unavailable" in r.json()["detail"]
    assert "ray;dur=" in r.headers["server-timing"]  # the time already spent is still reported
    assert api.rows() == 0 and api.job_dirs() == [] and api.ray.jobs == {}


def test_failed_ray_submit_removes_the_row(api):
    api.ray.fail_submit = True
    r = api.call("POST", "/v1/jobs", json=TINY, headers={"Idempotency-Key": "k"})
    assert r.status_code == 503
    assert api.rows() == 0 and api.job_dirs() == []
    api.ray.fail_submit = False  # the same key works once Ray is back
    assert api.call("POST", "/v1/jobs", json=TINY, headers={"Idempotency-Key": "k"}).status_code == 201


# ---- per-principal quotas (429 naming the limit and the value) -----------------------------------------


GPU_JOB = {**TINY, "overrides": {"resources.use_gpu": True, "resources.num_workers": 2,
                                 "resources.gpus_per_worker": 1.0, "tuning.max_concurrent_trials": 2}}


def test_unfinished_jobs_per_principal(make_api):
    with make_api(max_jobs_per_principal=2) as api:
        first = api.submit()
        api.submit()
        r = api.call("POST", "/v1/jobs", json=TINY)
        assert r.status_code == 429
        assert r.json() == {"detail": "alice would have 3 unfinished jobs; this service allows 2 per principal "
                                      "(SLWTUNE_MAX_JOBS_PER_PRINCIPAL)"}
        assert api.rows() == 2 and len(api.ray.jobs) == 2 and len(api.job_dirs()) == 2
        assert api.call("POST", "/v1/jobs", who="bob", json=TINY).status_code == 201  # per principal
        api.ray.jobs[first["id"]]["status"] = "SUCCEEDED"
        api.call("GET", f"/v1/jobs/{first['id']}")  # the registry learns it ended
        assert api.call("POST", "/v1/jobs", json=TINY).status_code == 201


def test_gpus_per_principal(make_api):
    with make_api(max_gpus_per_principal=6) as api:
        api.submit(GPU_JOB)  # 2 workers x 1 GPU x 2 concurrent trials = 4 GPUs at its peak
        r = api.call("POST", "/v1/jobs", json=GPU_JOB)
        assert r.status_code == 429 and "would ask for 8 GPUs" in r.json()["detail"]
        assert "allows 6 per principal (SLWTUNE_MAX_GPUS_PER_PRINCIPAL)" in r.json()["detail"]
        assert api.call("POST", "/v1/jobs", json=TINY).status_code == 201  # a CPU job holds no GPU
        assert api.rows() == 2


def test_concurrent_submits_cannot_both_pass_the_quota(make_api):
    """Both requests pass the early check before either inserts; the check after the insert keeps
    the principal within its limit (both may be refused then, never both accepted)."""
    with make_api(max_jobs_per_principal=1) as api:
        both_checked = threading.Barrier(2, timeout=30)
        health = api.mlflow.health

        def health_after_both(uri, max_age_s=0.0):
            both_checked.wait()
            return health(uri, max_age_s)

        api.mlflow.health = health_after_both
        with ThreadPoolExecutor(2) as pool:
            codes = sorted(f.result().status_code for f in [pool.submit(api.call, "POST", "/v1/jobs", json=TINY)
                                                            for _ in range(2)])
        assert codes in ([201, 429], [429, 429])
        assert api.rows() == codes.count(201) == len(api.ray.jobs) == len(api.job_dirs())


# ---- the idempotency race: a second request never gets an id that is not a real job ---------------------


def test_a_replay_waits_for_the_first_submit_to_finish(api):
    key = {"Idempotency-Key": "k-race"}
    in_submit, release = threading.Event(), threading.Event()
    submit = api.ray.submit

    def slow_failing_submit(*args, **kw):
        in_submit.set()
        release.wait(30)
        raise BackendUnavailable("Ray", "dropped the submission (test)")

    api.ray.submit = slow_failing_submit
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(api.call, "POST", "/v1/jobs", json=TINY, headers=dict(key))
        assert in_submit.wait(30)
        second = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))  # the row exists, not yet on Ray
        release.set()
        assert first.result().status_code == 503
    assert second.status_code == 409 and second.headers["retry-after"] == "1"
    assert "still being submitted" in second.json()["detail"]
    assert api.rows() == 0
    api.ray.submit = submit  # the client retries once Ray is back: a real job
    retried = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    assert retried.status_code == 201
    assert api.call("GET", f"/v1/jobs/{retried.json()['id']}").status_code == 200


def test_a_loser_of_the_insert_race_gets_no_id_that_will_vanish(api, monkeypatch):
    """The loser's lookup ran before the winner inserted, so its own insert hits the unique key."""
    from service.jobs import submission

    key = {"Idempotency-Key": "k-insert"}
    winner = api.submit(TINY, headers=dict(key))
    find = submission._find_by_key
    calls = []

    def miss_first(session, principal, k):
        calls.append(k)
        return None if len(calls) == 1 else find(session, principal, k)

    monkeypatch.setattr(submission, "_find_by_key", miss_first)
    r = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    assert r.status_code == 200 and r.json()["id"] == winner["id"]  # the winner is on Ray: a replay
    assert len(calls) == 2 and api.rows() == 1 and len(api.job_dirs()) == 1

    with api.app.state.engine.begin() as conn:  # the winner is still between its insert and its Ray submit
        conn.exec_driver_sql("UPDATE jobs SET ray_submission_id = NULL")
    calls.clear()
    r = api.call("POST", "/v1/jobs", json=TINY, headers=dict(key))
    assert r.status_code == 409 and "still being submitted" in r.json()["detail"]


def test_an_empty_idempotency_key_is_refused(api):
    """An empty key is no key (found by the fuzzer: it skipped the replay lookup, yet hit the unique index)."""
    for _ in range(2):
        r = api.call("POST", "/v1/jobs", json=TINY, headers={"Idempotency-Key": ""})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert api.rows() == 0


def test_a_submit_validates_the_spec_once_and_makes_its_dict_once(api, monkeypatch):
    """The body is validated into a JobSpec once; the hash, quota, YAML and row share one dict of it."""
    from slwtune.spec import JobSpec

    calls = {"validate": 0, "to_dict": 0}
    validate, to_dict = JobSpec.model_validate.__func__, JobSpec.to_dict

    def counted_validate(cls, *a, **k):
        calls["validate"] += 1
        return validate(cls, *a, **k)

    def counted_to_dict(self):
        calls["to_dict"] += 1
        return to_dict(self)

    monkeypatch.setattr(JobSpec, "model_validate", classmethod(counted_validate))
    monkeypatch.setattr(JobSpec, "to_dict", counted_to_dict)
    job = api.submit()
    assert calls == {"validate": 1, "to_dict": 1}
    assert "name: " + job["spec"]["name"] in (api.settings.jobs_dir / job["id"] / "spec.yaml").read_text()
