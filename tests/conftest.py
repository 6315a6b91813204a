"""Shared test setup: a hermetic dataset cache for the whole session."""

import os
import secrets
import tempfile

# Set at import, before any test (or Ray worker it spawns) resolves builtin:shakespeare, so
# prepared datasets go to a per-session folder, not the user's ~/.cache. Ray workers
# started from this process inherit it.
if "SLWTUNE_CACHE_DIR" not in os.environ:
    os.environ["SLWTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="slwtune-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- end-to-end services: ray_head, mlflow_server, api_server -------------------------------
# Real services for the end-to-end tests, started only when a test asks for them, on free
# localhost ports (see devstack.stack: token auth stays on, and no `ray stop` touches other
# clusters on the machine). They end with their test module: two Ray clusters alive at once make
# Ray's address discovery inside workers fail ("Found multiple active Ray instances").

import pytest  # noqa: E402

from devstack.stack import ApiServer, MlflowServer, RayHead, api_env  # noqa: E402


@pytest.fixture(scope="session")
def local_ray():
    """Ray started inside the test process (4 logical CPUs: two concurrent 1-worker probes)."""
    import ray

    from slwtune.raycluster import ensure_ray

    ensure_ray(num_cpus=4)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head (token auth on, 4 logical CPUs)."""
    head = RayHead(num_cpus=4).start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server with a SQLite store."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_server(ray_head, mlflow_server, tmp_path_factory):
    """The API wired to `ray_head` and `mlflow_server`, with principals alice and bob."""
    root = tmp_path_factory.mktemp("api")
    server = ApiServer(root, api_env(root, ray_head, mlflow_server, SLWTUNE_REFRESH_INTERVAL_S="1"),
                       tokens={"alice": secrets.token_urlsafe(24), "bob": secrets.token_urlsafe(24)})
    server.start()
    try:
        yield server
    finally:
        server.stop()
