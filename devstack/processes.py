"""This stack's processes and ports: free loopback ports, child processes in their own session,
and ending them by process group, by id or by the marker in their environment (never by name)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK_MARKER = "SLWTUNE_STACK"
LOOPBACK_HOST = "127.0.0.1"  # every service of this stack listens here only


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


def venv_bin(name: str) -> str:
    """A console script of this environment (the venv's ray / mlflow)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Its own session, so the whole group can be ended without touching anything else.
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def end_process(proc: subprocess.Popen | None, timeout: float = 15, group: bool = True) -> None:
    """SIGTERM to `proc`'s process group (or, with `group=False`, to `proc` alone, which then ends
    what it started), SIGKILL to the group after `timeout` s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
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
