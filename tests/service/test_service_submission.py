"""service.jobs.submission: the driver command, idempotency, and a failed submit leaving nothing."""

import shlex

from service_kit import TINY


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


def test_submit_full_spec_with_a_dataset_inside_the_data_root(api):
    (api.settings.data_root / "wiki").mkdir()
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
