"""Load on the REST API: real uvicorn + SQLite with 1,000 jobs stored, 50 concurrent clients.

Measures `GET /v1/jobs/{id}` (over the stored jobs, 10% of them still running, so the API's
background reconciliation runs meanwhile) and then `POST /v1/jobs` (a preset with an override).
Ray's Jobs API and MLflow are a stub HTTP server in their own process, so no training starts.
The Ray calls a POST makes (the reachability check, when not cached, and the submit) are timed
by the API itself and sent back in its `Server-Timing` header: POST latency is reported with
and without them. The stub answers at once, so "with Ray" is a lower bound.

Each client sends a request, waits for the answer, then pauses a random 0..2x the mean think
time (a client polling its job, or submitting now and then; not hammering): latency is measured
at the load that gives, printed beside it. `--get-think-ms 0 --post-think-ms 0` is a closed loop,
i.e. the saturation throughput. The load generator is a few lines of asyncio on keep-alive
connections (an httpx client cost more CPU per request than the API on 2 cores).

    python benchmarks/api_load.py [--clients 50] [--jobs 1000] [--seconds 15] [--workers 1]
                                  [--get-think-ms 250] [--post-think-ms 1000]

The last line is JSON with get_p50_ms, get_p99_ms, post_p50_ms, post_p99_ms (POST without
Ray's calls), post_total_p99_ms, ray_submit_p99_ms and the rates. Targets: get_p99_ms <= 20,
post_p99_ms <= 50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- the stub Ray Jobs API + MLflow health (runs in its own process) ------------------------------


class StubHandler(BaseHTTPRequestHandler):
    jobs: dict[str, dict] = {}
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, b"OK")
        if self.path == "/api/version":
            return self._send(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "stub"})
        if self.path == "/api/jobs/":
            return self._send(200, [self._details(k, v) for k, v in list(self.jobs.items())])
        if m := re.fullmatch(r"/api/jobs/([^/]+)", self.path):
            job = self.jobs.get(m.group(1)) or {"status": "RUNNING", "entrypoint": "stub"}
            return self._send(200, self._details(m.group(1), job))
        if self.path.startswith("/api/2.0/mlflow/"):
            return self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "stub"})
        return self._send(404, {"detail": "not found"})

    @staticmethod
    def _details(submission_id: str, job: dict) -> dict:
        return {"type": "SUBMISSION", "submission_id": submission_id, "job_id": None, "status": job["status"],
                "entrypoint": job["entrypoint"], "message": "stub"}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/api/jobs/":
            req = json.loads(body or b"{}")
            self.jobs[req["submission_id"]] = {"status": "PENDING", "entrypoint": req["entrypoint"]}
            return self._send(200, {"job_id": None, "submission_id": req["submission_id"]})
        if m := re.fullmatch(r"/api/jobs/([^/]+)/stop", self.path):
            return self._send(200, {"stopped": True})
        return self._send(404, {"detail": "not found"})


def run_stub(port: int) -> None:
    ThreadingHTTPServer.request_queue_size = 512  # the default backlog of 5 refuses bursts of connects
    server = ThreadingHTTPServer(("127.0.0.1", port), StubHandler)
    server.daemon_threads = True
    server.serve_forever()


# ---- set-up -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise TimeoutError(url)


def fill_registry(db_url: str, n: int, principal: str, running_share: float) -> list[str]:
    """n jobs of the tiny preset, newest last; a `running_share` of them still running, the rest finished."""
    from datetime import timedelta

    from sqlalchemy.orm import Session

    from service.db import JobRow, create_tables, make_engine, utcnow
    from service.states import CANCELLED, FAILED, RUNNING, SUCCEEDED
    from slwtune import metrics as M
    from slwtune.spec import load_spec

    spec = load_spec("shakespeare-tiny").to_dict()
    engine = make_engine(db_url)
    create_tables(engine)
    rng = random.Random(0)
    ids, now = [], utcnow()
    with Session(engine) as s:
        for i in range(n):
            job_id = f"slw-bench{i:015d}"
            running = rng.random() < running_share
            state = RUNNING if running else rng.choice([SUCCEEDED, SUCCEEDED, SUCCEEDED, FAILED, CANCELLED])
            done = state == SUCCEEDED
            when = now - timedelta(minutes=n - i)
            s.add(JobRow(id=job_id, principal=principal, name=spec["name"], spec=spec, state=state,
                         phase=M.PHASE_FULL_RUN if done else (M.PHASE_PROBING if running else M.PHASE_SELECTING),
                         progress="done" if done else "round 1", ray_submission_id=job_id, ray_status=None,
                         chosen={"start_length": 8, "duration_steps": 32} if done else None,
                         error="no stable configuration" if state == FAILED else None,
                         mlflow_tracking_uri=None, created_at=when, updated_at=when))
            ids.append(job_id)
        s.commit()
    engine.dispose()
    return ids


# ---- load -----------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process and its direct children, e.g. uvicorn workers (Linux /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent's pid
            total += sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def server_timing(header: str | None) -> dict[str, float]:
    out = {}
    for part in (header or "").split(","):
        if m := re.match(r"\s*([\w.-]+);dur=([\d.]+)", part):
            out[m.group(1)] = float(m.group(2))
    return out


class Conn:
    """One keep-alive HTTP/1.1 connection: a few lines of asyncio, so the load generator's own CPU
    (httpx costs several ms per request) does not crowd out the server on a small machine."""

    def __init__(self, host: str, port: int, headers: dict):
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body is not None else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}\r\n".encode() + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        data = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
            self.writer = None
        return code, headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, headers: dict, clients: int, seconds: float, think_ms: float, make_request) -> dict:
    from urllib.parse import urlparse

    u = urlparse(url)
    results: list[tuple[float, dict, int]] = []
    failures: list[str] = []
    stop_at = time.perf_counter() + seconds

    async def client(i: int) -> None:
        rng, conn = random.Random(i), Conn(u.hostname, u.port, headers)
        await asyncio.sleep(rng.uniform(0, 2 * think_ms) / 1000)  # spread the first requests
        try:
            while time.perf_counter() < stop_at:
                method, path, body = make_request(rng)
                t0 = time.perf_counter()
                code, hdrs, data = await conn.request(method, path, body)
                ms = (time.perf_counter() - t0) * 1000
                if code >= 400:
                    failures.append(f"HTTP {code} {data[:300].decode(errors='replace')}")
                results.append((ms, server_timing(hdrs.get("server-timing")), code))
                await asyncio.sleep(rng.uniform(0, 2 * think_ms) / 1000)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(results)} requests failed, e.g. {failures[0]}")
    return {"results": results, "rps": len(results) / wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=15.0, help="per phase (GET, then POST)")
    p.add_argument("--get-think-ms", type=float, default=250.0,
                   help="mean pause of a client between two GETs (a client polling its job)")
    p.add_argument("--post-think-ms", type=float, default=1000.0,
                   help="mean pause of a client between two POSTs (each starts minutes of cluster work)")
    p.add_argument("--running-share", type=float, default=0.1, help="share of stored jobs still running")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stub:
        run_stub(args.stub)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="slwtune-api-load-"))
    token = secrets.token_urlsafe(24)
    db_url = f"sqlite:///{tmp / 'registry.db'}"
    ids = fill_registry(db_url, args.jobs, "bench", args.running_share)
    stub_port, api_port = free_port(), free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLWTUNE_", "RAY_", "MLFLOW_"))}
    env.update({"SLWTUNE_API_TOKENS": f"bench:{token}", "SLWTUNE_DATABASE_URL": db_url,
                "SLWTUNE_RAY_ADDRESS": stub_url, "MLFLOW_TRACKING_URI": stub_url,
                "SLWTUNE_JOBS_DIR": str(tmp / "jobs"), "SLWTUNE_DATA_ROOT": str(tmp / "data"),
                # ~100 stored jobs run and every POST adds one: the per-principal quota would answer 429
                "SLWTUNE_MAX_JOBS_PER_PRINCIPAL": "1000000"})
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "--stub", str(stub_port)], env=env,
                                      start_new_session=True))
        wait_http(f"{stub_url}/health", 30, procs[-1])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(api_port),
             "--log-level", "warning", "--no-access-log", "--workers", str(args.workers)],
            env=env, cwd=ROOT, start_new_session=True))
        api = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api}/healthz", 60, procs[-1])
        headers = {"Authorization": f"Bearer {token}"}
        print(f"{args.jobs} jobs stored ({args.running_share:.0%} running), {args.clients} clients, think "
              f"{args.get_think_ms:.0f} ms (GET) / {args.post_think_ms:.0f} ms (POST) mean, {args.seconds:.0f} s per "
              f"phase, {args.workers} uvicorn worker(s), {os.cpu_count()} CPUs")

        api_pid = procs[-1].pid
        cpu0, me0 = proc_cpu_s(api_pid), time.process_time()
        get = asyncio.run(load(api, headers, args.clients, args.seconds, args.get_think_ms,
                               lambda rng: ("GET", f"/v1/jobs/{rng.choice(ids)}", None)))
        get_ms = [ms for ms, _, _ in get["results"]]
        n = len(get_ms)
        print(f"  CPU per GET: API {(proc_cpu_s(api_pid) - cpu0) / n * 1000:.2f} ms, "
              f"load generator {(time.process_time() - me0) / n * 1000:.2f} ms")
        print(f"GET  /v1/jobs/{{id}}: n={len(get_ms)} {get['rps']:.0f} req/s  p50 {pct(get_ms, 50):.1f} ms  "
              f"p99 {pct(get_ms, 99):.1f} ms")

        body = json.dumps({"preset": "shakespeare-tiny", "overrides": {"optim.lr": 0.002}}).encode()
        cpu0, me0 = proc_cpu_s(api_pid), time.process_time()
        post = asyncio.run(load(api, headers, args.clients, args.seconds, args.post_think_ms,
                                lambda rng: ("POST", "/v1/jobs", body)))
        total = [ms for ms, _, _ in post["results"]]
        print(f"  CPU per POST: API {(proc_cpu_s(api_pid) - cpu0) / len(total) * 1000:.2f} ms, "
              f"load generator {(time.process_time() - me0) / len(total) * 1000:.2f} ms")
        submit = [t.get("ray_submit", 0.0) for _, t, _ in post["results"]]
        ray_all = [t.get("ray_submit", 0.0) + t.get("ray", 0.0) for _, t, _ in post["results"]]
        own = [ms - r for ms, r in zip(total, ray_all)]
        print(f"POST /v1/jobs: n={len(total)} {post['rps']:.0f} req/s  total p50 {pct(total, 50):.1f} ms "
              f"p99 {pct(total, 99):.1f} ms; Ray submit (stub) p50 {pct(submit, 50):.1f} p99 {pct(submit, 99):.1f} ms; "
              f"without Ray's calls p50 {pct(own, 50):.1f} ms p99 {pct(own, 99):.1f} ms")
        print(json.dumps({
            "get_p50_ms": round(pct(get_ms, 50), 2), "get_p99_ms": round(pct(get_ms, 99), 2),
            "post_p50_ms": round(pct(own, 50), 2), "post_p99_ms": round(pct(own, 99), 2),
            "post_total_p99_ms": round(pct(total, 99), 2), "ray_submit_p99_ms": round(pct(submit, 99), 2),
            "get_rps": round(get["rps"], 1), "post_rps": round(post["rps"], 1), "get_n": len(get_ms),
            "post_n": len(total), "clients": args.clients, "jobs_stored": args.jobs,
            "get_think_ms": args.get_think_ms, "post_think_ms": args.post_think_ms,
            "workers": args.workers,
        }))
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
