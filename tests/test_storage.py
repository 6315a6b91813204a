"""Job files on local storage and file:// URIs: list by prefix, measure, delete."""

import pytest

from slwtune import storage


@pytest.fixture(params=["path", "uri"])
def root(request, tmp_path):
    for name in ("demo-j1-round1", "demo-j1-full", "demo-j2-full"):
        (tmp_path / name / "checkpoint_000").mkdir(parents=True)
        (tmp_path / name / "checkpoint_000" / "state.pt").write_bytes(b"x" * 100)
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_a_job_prefix_finds_only_that_jobs_runs(root):
    runs = storage.job_runs(root, storage.job_prefix("demo", "j1"))
    assert [r.rsplit("/", 1)[1] for r in runs] == ["demo-j1-full", "demo-j1-round1"]
    assert storage.job_runs(root + "/missing", "demo-") == []


def test_size_and_delete(root):
    run = storage.job_runs(root, "demo-j1-full")[0]
    assert storage.size_bytes(run) == 100
    assert storage.run_folder(run + "/checkpoint_000") == run
    storage.delete(run)
    storage.delete(run)  # a second delete of a missing folder is fine
    assert storage.size_bytes(run) == 0
    assert [r.rsplit("/", 1)[1] for r in storage.job_runs(root, "demo-")] == ["demo-j1-round1", "demo-j2-full"]
