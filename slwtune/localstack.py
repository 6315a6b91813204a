"""A local Ray head, MLflow server and API as child processes (the demo and end-to-end tests).

Token authentication stays on: the Ray head is started with `RAY_AUTH_MODE=token`
and a fresh random token that every client of this stack (the API, the driver)
gets through its environment; the token is never printed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    """Poll `url` until it answers 2xx; fail early if `proc` exits."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what or url} not ready after {timeout:.0f}s ({last})")


def _bin(name: str) -> str:
    """A console script of this environment (the venv's ray / mlflow / uvicorn)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@dataclass
class LocalStack:
    """Ray head + MLflow server + API on 127.0.0.1, all stopped by `stop()`."""

    root: Path
    dashboard_port: int = 8265
    mlflow_port: int = 5000
    api_port: int = 8000
    ray_port: int = 0
    num_cpus: int = 4
    api_tokens: str = "demo:" + secrets.token_urlsafe(16)
    ray_token: str = field(default_factory=lambda: secrets.token_hex(32))
    procs: dict = field(default_factory=dict)
    ray_started: bool = False

    @property
    def ray_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        """The environment every client of this stack needs."""
        env = dict(os.environ)
        env.update({
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.ray_token,
            "RAY_ADDRESS": self.ray_address, "SLWTUNE_RAY_ADDRESS": self.ray_address,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "SLWTUNE_DATABASE_URL": f"sqlite:///{self.root / 'registry.db'}",
            "SLWTUNE_API_TOKENS": self.api_tokens,
            "SLWTUNE_JOBS_DIR": str(self.root / "jobs"),
            "SLWTUNE_DATA_ROOT": str(self.root / "data"),
            "SLWTUNE_STORAGE": str(self.root / "ray_results"),
            "TOKENIZERS_PARALLELISM": "false",
            "RAY_USAGE_STATS_ENABLED": "0",
        })
        return env

    def _ensure_dirs(self) -> None:
        for d in ("jobs", "data", "mlartifacts"):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    def start_ray(self, timeout: float = 90) -> None:
        self._ensure_dirs()
        self.ray_port = self.ray_port or free_port()
        cmd = [_bin("ray"), "start", "--head", "--port", str(self.ray_port), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port), "--disable-usage-stats",
               "--num-cpus", str(self.num_cpus), "--include-dashboard", "true"]
        log = open(self.root / "ray-start.log", "w")
        subprocess.run(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=timeout)
        self.ray_started = True
        wait_http(f"{self.ray_address}/api/version", timeout, what="Ray dashboard")

    def start_mlflow(self, timeout: float = 90) -> None:
        cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "mlartifacts"), "--workers", "1"]
        self._spawn("mlflow", cmd)
        wait_http(f"{self.mlflow_uri}/health", timeout, self.procs["mlflow"], "MLflow server")

    def start_api(self, timeout: float = 60) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1",
               "--port", str(self.api_port), "--log-level", "warning"]
        self._spawn("api", cmd)
        wait_http(f"{self.api_url}/healthz", timeout, self.procs["api"], "slwtune API")

    def start(self) -> "LocalStack":
        self.start_ray()
        self.start_mlflow()
        self.start_api()
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        self._ensure_dirs()
        log = open(self.root / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=str(Path(__file__).resolve().parent.parent),
                                            start_new_session=True)

    def stop_process(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        if self.ray_started:
            subprocess.run([_bin("ray"), "stop", "--force"], env=self.env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
            self.ray_started = False


def stop_saved(root: Path) -> None:
    """Stop a stack left up by `slwtune demo --keep-up` (its pids are in root/stack.json)."""
    import json

    state = json.loads((root / "stack.json").read_text())
    for pid in state.get("pids", {}).values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if state.get("ray"):
        subprocess.run([_bin("ray"), "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)
    (root / "stack.json").unlink()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop_saved(Path(sys.argv[2]))
    else:
        print("usage: python -m slwtune.localstack stop DIR", file=sys.stderr)
        sys.exit(2)
