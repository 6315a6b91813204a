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
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from devstack.processes import (LOOPBACK_HOST, STACK_MARKER, cmdline, end_marked, end_process, free_port, kill_pid,
                                marked_pids, port_or_free, spawn, venv_bin)
from devstack.waiting import wait_http

RAY_PORT_FLAGS = ("port", "node-manager-port", "object-manager-port", "ray-client-server-port",
                  "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                  "metrics-export-port")


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
        # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S: on SIGTERM Ray 2.6x drains the node for up to 30 s
        # (for Ray Serve proxies) once it has run jobs; this head serves none, so it stops at once.
        env.update(self.client_env, RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false",
                   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
                   SLWTUNE_STORAGE=str(self.temp_dir / "ray_results"), **{STACK_MARKER: self.marker})
        cmd = [venv_bin("ray"), "start", "--head", "--block", "--temp-dir", str(self.temp_dir),
               "--num-cpus", str(self.num_cpus), "--dashboard-host", LOOPBACK_HOST,
               "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
               "--disable-usage-stats", *[a for k, v in ports.items() for a in (f"--{k}", str(v))]]
        self.proc = spawn(cmd, env, self.temp_dir / "ray-start.log")
        wait_http(f"{self.address}/api/version", timeout, self.proc, "Ray dashboard",
                  {"Authorization": f"Bearer {self.token}"})
        return self

    def stop(self) -> None:
        # `ray start --block` alone gets SIGTERM and stops its own processes (~2 s); signalled with
        # all of them at once it waited out its drain. What outlives it carries the marker.
        end_process(self.proc, timeout=30, group=False)
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
        cmd = [venv_bin("mlflow"), "server", "--host", LOOPBACK_HOST, "--port", str(self.port),
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
