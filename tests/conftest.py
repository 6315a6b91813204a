"""Shared test setup: a hermetic dataset cache for the whole session."""

import os
import tempfile

# Set at import, before any test (or Ray worker it spawns) resolves builtin:shakespeare, so
# prepared datasets go to a per-session folder, not the user's ~/.cache. Ray workers
# started from this process inherit it.
if "SLWTUNE_CACHE_DIR" not in os.environ:
    os.environ["SLWTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="slwtune-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- end-to-end services: ray_head, mlflow_server, api_server -------------------------------
# Session-scoped real services for the end-to-end tests: a Ray head, an MLflow server and the API.
#
# They start only when a test asks for them (`ray_head`, `mlflow_server`, `api_server`), on free
# localhost ports and in their own temp folder, and stop at the end of the session. Ray keeps token
# authentication on with a fresh token passed through RAY_AUTH_TOKEN (~/.ray/auth_token is not touched).
# Teardown never runs `ray stop`, which would end every Ray cluster on the machine: it ends the
# processes this session started, found by a marker in their environment.

import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STACK_MARKER = "SLWTUNE_TEST_STACK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "",
              headers: dict | None = None) -> None:
    """Poll `url` until it answers 2xx; fail early when `proc` exits."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as r:
                if 200 <= r.status < 300:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what or url} not ready after {timeout:.0f}s ({last})")


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Its own session, so the whole group can be ended without touching anything else.
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _end(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _marked_pids(marker: str) -> list[int]:
    """Processes of this user whose environment carries `marker` (descendants of our Ray head)."""
    needle = f"{STACK_MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _end_marked(marker: str, grace: float = 10) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        pids = _marked_pids(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while pids and time.time() < deadline:
            time.sleep(0.2)
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and _alive(p)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class RayHead:
    address: str  # the dashboard URL (Jobs API)
    token: str
    temp_dir: Path
    env: dict  # what a client of this cluster needs


@dataclass
class MlflowServer:
    uri: str
    root: Path


@pytest.fixture(scope="session")
def ray_head():
    """A local Ray head (token auth on, 4 CPUs) on free ports in a private temp dir."""
    # Short: Ray's Unix socket paths live under it.
    temp_dir = Path(tempfile.mkdtemp(prefix="slwt-", dir="/tmp"))
    marker, token = secrets.token_hex(8), secrets.token_hex(32)
    ports = {}
    while len(set(ports.values())) < 9:
        ports = {k: free_port() for k in ("port", "dashboard-port", "node-manager-port", "object-manager-port",
                                          "ray-client-server-port", "dashboard-agent-listen-port",
                                          "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                          "metrics-export-port")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
                "TOKENIZERS_PARALLELISM": "false", STACK_MARKER: marker,
                "SLWTUNE_STORAGE": str(temp_dir / "ray_results")})
    cmd = [_bin("ray"), "start", "--head", "--block", "--temp-dir", str(temp_dir), "--num-cpus", "4",
           "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--disable-usage-stats",
           *[a for k, v in ports.items() for a in (f"--{k}", str(v))]]
    proc = _spawn(cmd, env, temp_dir / "ray-start.log")
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_http(f"{address}/api/version", 120, proc, "Ray dashboard", {"Authorization": f"Bearer {token}"})
        client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        yield RayHead(address=address, token=token, temp_dir=temp_dir, env=client_env)
    finally:
        _end(proc, timeout=30)
        _end_marked(marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server with a SQLite store, on a free port."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
           "--workers", "1"]
    proc = _spawn(cmd, dict(os.environ), root / "mlflow.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc, "MLflow server")
        yield MlflowServer(uri=f"http://127.0.0.1:{port}", root=root)
    finally:
        _end(proc)


@dataclass
class ApiServer:
    """The real API under uvicorn, stoppable and restartable against the same registry."""

    root: Path
    env: dict
    port: int = field(default_factory=free_port)
    tokens: dict = field(default_factory=lambda: {"alice": secrets.token_urlsafe(24),
                                                  "bob": secrets.token_urlsafe(24)})
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, principal: str = "alice") -> dict:
        return {"Authorization": f"Bearer {self.tokens[principal]}"}

    def start(self, timeout: float = 90) -> None:
        env = dict(self.env, SLWTUNE_API_TOKENS=",".join(f"{p}:{t}" for p, t in self.tokens.items()))
        cmd = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning"]
        self.proc = _spawn(cmd, env, self.root / "api.log")
        wait_http(f"{self.url}/healthz", timeout, self.proc, "slwtune API")

    def stop(self) -> None:
        if self.proc is not None:
            _end(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def api_server(ray_head, mlflow_server, tmp_path_factory):
    """The API on a free port, wired to `ray_head` and `mlflow_server`, with principals alice and bob."""
    root = tmp_path_factory.mktemp("api")
    for d in ("data", "jobs"):
        (root / d).mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "SLWTUNE_", "MLFLOW_")) or k == "SLWTUNE_CACHE_DIR"}
    env.update(ray_head.env)
    env.update({"SLWTUNE_RAY_ADDRESS": ray_head.address, "MLFLOW_TRACKING_URI": mlflow_server.uri,
                "SLWTUNE_DATABASE_URL": f"sqlite:///{root / 'registry.db'}", "SLWTUNE_DATA_ROOT": str(root / "data"),
                "SLWTUNE_JOBS_DIR": str(root / "jobs"), "SLWTUNE_STORAGE": str(ray_head.temp_dir / "ray_results"),
                "SLWTUNE_REFRESH_INTERVAL_S": "1", "TOKENIZERS_PARALLELISM": "false"})
    server = ApiServer(root=root, env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
