"""A local Ray head, MLflow server and API as child processes (the demo and end-to-end tests).

- Token authentication stays on: the Ray head runs with `RAY_AUTH_MODE=token` and a fresh
  random token that every client of this stack gets through its environment. The head listens
  on 127.0.0.1 only, so `RayHead.sign_in_text()` may show the person who started it that token
  next to the dashboard link (the demo prints it once); ~/.ray/auth_token, which belongs to the
  user's own clusters, is not touched.
- Nothing here runs `ray stop`, which would end every Ray cluster on the machine: the head
  runs under `ray start --block` in a private temp dir on free ports, and stopping ends only
  the processes that carry this stack's marker in their environment.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlparse
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
STACK_MARKER = "SLWTUNE_STACK"
LOOPBACK_HOST = "127.0.0.1"  # every service of this stack listens here only
RAY_PORT_FLAGS = ("port", "node-manager-port", "object-manager-port", "ray-client-server-port",
                  "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                  "metrics-export-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK_HOST, 0))
        return s.getsockname()[1]


def port_or_free(preferred: int) -> int:
    """The preferred port when free, else any free one (a second demo, a busy 5000, ...)."""
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK_HOST, preferred))
            return preferred
        except OSError:
            return free_port()


# ---- waiting on a busy service ------------------------------------------------------------------
# A service on a busy machine is slow, not broken: a 5xx, a timeout or a refused connection is
# tried again with exponential backoff (doubling from FIRST_BACKOFF_S up to MAX_BACKOFF_S, or the
# server's Retry-After when it names one) until a deadline, as urllib3's `Retry` does
# (backoff_factor * 2**n, capped by backoff_max, respecting Retry-After). Anything else (a 4xx, a
# wrong answer) fails at once.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


def transient(exc: BaseException) -> bool:
    """An error worth trying again: no connection, a timeout, a dropped answer, a 5xx, or a 409 that
    names a Retry-After (the API's "still being submitted / still stopping")."""
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or (code == 409 and "retry-after" in exc.response.headers)
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            return float(exc.response.headers.get("retry-after", ""))
        except ValueError:
            return None
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def retrying(call, what: str, deadline_s: float, say=None):
    """`call()`, tried again after transient errors (see `transient`) with backoff until `deadline_s`
    has passed; `say` (e.g. print) is told once per wait what is awaited and why. The last transient
    error is raised as TimeoutError naming `what`; other errors are raised at once."""
    deadline, wait = time.monotonic() + deadline_s, FIRST_BACKOFF_S
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sorted by `transient`
            left = deadline - time.monotonic()
            if not transient(exc):
                raise
            if left <= 0:
                raise TimeoutError(f"gave up after {deadline_s:.0f}s waiting for {what}: {_describe(exc)}") from exc
            pause = min(max(wait, _retry_after(exc) or 0.0), MAX_BACKOFF_S, left)
            if say is not None:
                say(f"   (waiting for {what}: {_describe(exc)}; trying again in {pause:.1f}s)")
            time.sleep(pause)
            wait = min(wait * 2, MAX_BACKOFF_S)


def get_json(client: httpx.Client, path: str, what: str, deadline_s: float = 300, say=None, **kw):
    """GET `path` on `client` and return its JSON, retrying transient errors (see `retrying`)."""
    return retrying(lambda: client.get(path, **kw).raise_for_status().json(), what, deadline_s, say)


def wait_for(fetch, done, timeout: float, what: str = "", every: float = 1.0):
    """Call `fetch` every `every` s until `done(result)`; returns that result, or fails naming `what`
    and the last result seen (the end-to-end tests and drills wait on a job's state this way).

    A transient error from `fetch` (a 5xx, a timeout, no connection: see `transient`) is waited out
    with backoff like any unfinished state; any other error is raised at once."""
    deadline, last, backoff = time.time() + timeout, None, FIRST_BACKOFF_S
    while time.time() < deadline:
        try:
            last = fetch()
        except Exception as exc:  # noqa: BLE001 - sorted by `transient`
            if not transient(exc):
                raise
            last = f"(transient error) {_describe(exc)}"
            time.sleep(min(backoff, max(0.0, deadline - time.time())))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        backoff = FIRST_BACKOFF_S
        if done(last):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {str(last)[-2000:]}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "",
              headers: dict | None = None) -> None:
    """Poll `url` until it answers 2xx; fail early when `proc` exits."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what or url} not ready after {timeout:.0f}s ({last})")


def _bin(name: str) -> str:
    """A console script of this environment (the venv's ray / mlflow)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Its own session, so the whole group can be ended without touching anything else.
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def end_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (the Ray head and everything it started)."""
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


def end_marked(marker: str, grace: float = 10) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        pids = marked_pids(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while pids and time.time() < deadline:
            time.sleep(0.2)
            pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def cmdline(pid: int) -> list[str]:
    """A process's argv (its title, for Ray's workers: `ray::RayTrainWorker...`); [] once it is gone."""
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def kill_pid(pid: int, sig: int = signal.SIGKILL, wait: float = 10) -> None:
    """Send `sig` to one process, by its id (never by name), and wait until it is gone or a zombie."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.time() + wait
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)


def sign_in_text(dashboard_url: str, token: str) -> str:
    """What the person who started a loopback-only Ray head needs to open its dashboard.

    Ray's dashboard asks for the cluster's token on the first visit. Showing it is safe only
    where the dashboard is reachable from this machine alone and the token dies with the stack;
    for any other address this refuses, and the token must reach people another way (README:
    "Dashboard token on shared clusters").
    """
    host = urlparse(dashboard_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"dashboard_url={dashboard_url!r}: not a loopback address; its token is not shown")
    return (f"Ray dashboard   {dashboard_url}/#/jobs\n"
            f"   sign in with token: {token}\n"
            f"   (token auth is on; this throwaway token is shown only here: the head listens on "
            f"{host} and ends with the demo)")


# ---- the three services -------------------------------------------------------------------


@dataclass
class RayHead:
    """A local Ray head (token auth on) on free ports in a private temp dir."""

    num_cpus: int = 4
    dashboard_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    # Short: Ray's Unix socket paths live under it.
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="slwt-", dir="/tmp")))
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """The dashboard URL: the Jobs API."""
        return f"http://{LOOPBACK_HOST}:{self.dashboard_port}"

    def sign_in_text(self) -> str:
        return sign_in_text(self.address, self.token)

    @property
    def client_env(self) -> dict[str, str]:
        """What a client of this cluster (API, driver) needs in its environment."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self, timeout: float = 120) -> "RayHead":
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(RAY_PORT_FLAGS):
            ports = {k: free_port() for k in RAY_PORT_FLAGS}
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.client_env, RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false",
                   SLWTUNE_STORAGE=str(self.temp_dir / "ray_results"), **{STACK_MARKER: self.marker})
        cmd = [_bin("ray"), "start", "--head", "--block", "--temp-dir", str(self.temp_dir),
               "--num-cpus", str(self.num_cpus), "--dashboard-host", LOOPBACK_HOST,
               "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
               "--disable-usage-stats", *[a for k, v in ports.items() for a in (f"--{k}", str(v))]]
        self.proc = spawn(cmd, env, self.temp_dir / "ray-start.log")
        wait_http(f"{self.address}/api/version", timeout, self.proc, "Ray dashboard",
                  {"Authorization": f"Bearer {self.token}"})
        return self

    def stop(self) -> None:
        end_process(self.proc, timeout=30)
        end_marked(self.marker)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def pids(self, *words: str) -> list[int]:
        """This cluster's processes whose command line holds every one of `words` (e.g. a job's
        driver: "slwtune.cli", job id; a Train worker: "RayTrainWorker")."""
        return [pid for pid in marked_pids(self.marker)
                if (argv := " ".join(cmdline(pid))) and all(w in argv for w in words)]


@dataclass
class MlflowServer:
    """An MLflow tracking server with a SQLite store and a local artifact folder."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK_HOST}:{self.port}"

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [_bin("mlflow"), "server", "--host", LOOPBACK_HOST, "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "mlartifacts"), "--workers", "1"]
        self.proc = spawn(cmd, dict(os.environ), self.root / "mlflow.log")
        wait_http(f"{self.uri}/health", timeout, self.proc, "MLflow server")
        return self

    def stop(self) -> None:
        end_process(self.proc)

    def restart(self, timeout: float = 120) -> None:
        """Up again on the same port and store (what its clients were told)."""
        self.stop()
        self.start(timeout)


@dataclass
class ApiServer:
    """The real API under uvicorn, stoppable and restartable against the same registry."""

    root: Path
    env: dict
    port: int = field(default_factory=free_port)
    tokens: dict = field(default_factory=lambda: {"demo": secrets.token_urlsafe(24)})
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_HOST}:{self.port}"

    def headers(self, principal: str | None = None) -> dict:
        return {"Authorization": f"Bearer {self.tokens[principal or next(iter(self.tokens))]}"}

    def start(self, timeout: float = 90) -> "ApiServer":
        env = dict(self.env, SLWTUNE_API_TOKENS=",".join(f"{p}:{t}" for p, t in self.tokens.items()))
        cmd = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", LOOPBACK_HOST,
               "--port", str(self.port), "--log-level", "warning"]
        self.proc = spawn(cmd, env, self.root / "api.log")
        wait_http(f"{self.url}/healthz", timeout, self.proc, "slwtune API")
        return self

    def stop(self) -> None:
        end_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the API process by its id: no shutdown, no lifespan exit (a crash, the OOM killer)."""
        if self.proc is not None:
            kill_pid(self.proc.pid)
            self.proc.wait(10)
            self.proc = None


def api_env(root: Path, ray: RayHead, mlflow: MlflowServer, **extra: str) -> dict[str, str]:
    """The API's environment for this stack: registry, jobs and data folders under `root`."""
    for d in ("data", "jobs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "SLWTUNE_", "MLFLOW_")) or k == "SLWTUNE_CACHE_DIR"}
    env.update(ray.client_env)
    env.update({"SLWTUNE_RAY_ADDRESS": ray.address, "MLFLOW_TRACKING_URI": mlflow.uri,
                "SLWTUNE_DATABASE_URL": f"sqlite:///{root / 'registry.db'}", "SLWTUNE_DATA_ROOT": str(root / "data"),
                "SLWTUNE_JOBS_DIR": str(root / "jobs"), "SLWTUNE_STORAGE": str(ray.temp_dir / "ray_results"),
                "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


@dataclass
class LocalStack:
    """Ray head + MLflow server + API on 127.0.0.1 under `root`, all ended by `stop()`."""

    root: Path
    dashboard_port: int = 8265
    mlflow_port: int = 5000
    api_port: int = 8000
    ray: RayHead | None = None
    mlflow: MlflowServer | None = None
    api: ApiServer | None = None

    def start_ray(self) -> None:
        self.ray = RayHead(dashboard_port=port_or_free(self.dashboard_port)).start()

    def start_mlflow(self) -> None:
        self.mlflow = MlflowServer(self.root / "mlflow", port=port_or_free(self.mlflow_port)).start()

    def start_api(self) -> None:
        self.api = ApiServer(self.root, api_env(self.root, self.ray, self.mlflow),
                             port=port_or_free(self.api_port)).start()

    def start(self) -> "LocalStack":
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_ray()
        self.start_mlflow()
        self.start_api()
        return self

    def stop(self) -> None:
        for service in (self.api, self.mlflow, self.ray):
            if service is not None:
                service.stop()

    def save(self) -> Path:
        """Record the stack's processes, so `python -m devstack.stack stop ROOT` can end them later."""
        state = {"pids": [s.proc.pid for s in (self.api, self.mlflow, self.ray) if s and s.proc],
                 "marker": self.ray.marker if self.ray else None}
        path = self.root / "stack.json"
        path.write_text(json.dumps(state))
        return path


def stop_saved(root: Path) -> None:
    """End a stack left up by `slwtune demo --keep-up`."""
    state = json.loads((root / "stack.json").read_text())
    for pid in state["pids"]:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if state.get("marker"):
        end_marked(state["marker"])
    (root / "stack.json").unlink()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop_saved(Path(sys.argv[2]))
    else:
        print("usage: python -m devstack.stack stop DIR", file=sys.stderr)
        sys.exit(2)
