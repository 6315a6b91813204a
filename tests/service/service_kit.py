"""What the service tests share: the real app on a temp SQLite registry, driven through FastAPI's
TestClient, with in-memory stand-ins for the Ray Jobs API and MLflow (or the real clients pointed
at a closed port, to see the 503s)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.app import create_app
from service.backends import BackendError, BackendUnavailable
from service.db import JobRow
from service.mlflow_reader import MlflowReader, ParentRun
from service.ray_jobs import RayJobInfo, RayJobs
from service.settings import Settings

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"
TINY = {"preset": "shakespeare-tiny"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


class FakeRay(RayJobs):
    """The Ray Jobs API in memory: jobs move when a test sets their status.

    `stop_confirmed_after`: how many status reads after a stop Ray still reports the job RUNNING
    (0: the stop shows at once; None: never, Ray accepted the stop but the driver hangs on).
    """

    def __init__(self):
        super().__init__("http://ray.test:8265")
        self.jobs: dict[str, dict] = {}
        self.down = False
        self.fail_submit = False
        self.listed = 0
        self.status_reads = 0
        self.stop_confirmed_after: int | None = 0

    def _check(self):
        if self.down:
            raise BackendUnavailable("Ray", "down (test)")

    def ping(self, max_age_s=0.0):
        self._check()

    def submit(self, job_id, entrypoint, *, runtime_env=None, metadata=None):
        self._check()
        if self.fail_submit:
            raise BackendUnavailable("Ray", "dropped the submission (test)")
        if job_id in self.jobs:  # what Ray answers for a submission id it has seen
            raise BackendError("Ray", f"submit: Request failed with status code 400: Job with submission_id "
                                      f"{job_id} already exists. Please use a different submission_id.")
        self.jobs[job_id] = {"status": "PENDING", "entrypoint": entrypoint, "runtime_env": runtime_env,
                             "metadata": metadata, "exit": None, "logs": "line 1\nline 2\nline 3\n",
                             "stopping": None, "message": "msg", "error_type": None}
        return job_id

    def info(self, job_id):
        self._check()
        self.status_reads += 1
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job["stopping"] is not None:
            if job["stopping"] == 0:
                job["status"], job["stopping"] = "STOPPED", None
            else:
                job["stopping"] -= 1
        return RayJobInfo(job["status"], job["message"], job["exit"], job["error_type"])

    def all_jobs(self):
        self._check()
        self.listed += 1
        return {job_id: self.info(job_id) for job_id in self.jobs}

    def stop(self, job_id):
        self._check()
        if job_id not in self.jobs:
            raise BackendError("Ray", f"stop: Request failed with status code 404: Job {job_id} does not exist.")
        if self.stop_confirmed_after is None:
            return True
        self.jobs[job_id]["stopping"] = self.stop_confirmed_after
        return True

    def logs(self, job_id):
        self._check()
        return self.jobs[job_id]["logs"]


class FakeMlflow(MlflowReader):
    """MLflow in memory: a parent run per job id, children per parent."""

    def __init__(self):
        super().__init__()
        self.parents: dict[str, ParentRun] = {}
        self.children: dict[str, list[dict]] = {}
        self.down = False
        self.killed: list[str] = []
        self.deleted: list[str] = []
        self.reports: dict[str, dict] = {}  # parent run id -> its report.json artifact
        self.health_checked: list[str] = []

    def _check(self):
        if self.down:
            raise BackendUnavailable("MLflow", "down (test)")

    def health(self, uri, max_age_s=0.0):
        self.health_checked.append(uri)
        self._check()

    def parent_run(self, uri, experiment, job_id, run_id=None):
        self._check()
        return self.parents.get(job_id)

    def trials(self, uri, experiment_id, parent_run_id):
        self._check()
        return self.children.get(parent_run_id, [])

    def mark_killed(self, uri, experiment_id, parent_run_id, kinds=None):
        if kinds is None:
            self.killed.append(parent_run_id)
        for child in self.children.get(parent_run_id, []):
            if child.get("status") == "RUNNING" and (kinds is None or child.get("kind") in kinds):
                child["status"] = "KILLED"
                self.killed.append(child["run_id"])

    def report(self, uri, run_id):
        self._check()
        return self.reports.get(run_id)

    def delete_runs(self, uri, experiment_id, parent_run_id):
        self._check()
        ids = [c["run_id"] for c in self.children.get(parent_run_id, [])] + [parent_run_id]
        self.deleted.extend(ids)
        return len(ids)


def make_settings(tmp_path: Path, **kw) -> Settings:
    base = dict(api_tokens={"alice": SecretStr(ALICE), "bob": SecretStr(BOB)},
                database_url=f"sqlite:///{tmp_path / 'registry.db'}",
                ray_address=f"http://127.0.0.1:{closed_port()}", ray_token=None,
                mlflow_tracking_uri=f"http://127.0.0.1:{closed_port()}",
                data_root=tmp_path / "data", jobs_dir=tmp_path / "jobs", storage=str(tmp_path / "ray_results"),
                refresh_interval_s=0.0,
                cancel_wait_s=0.0, backend_timeout_s=2.0, max_jobs_per_principal=100)
    base.update(kw)
    return Settings(**base)


class Api:
    """A TestClient plus handles on the fakes and the registry."""

    def __init__(self, settings: Settings, fakes: bool = True):
        self.settings = settings
        self.app = create_app(settings)
        self.ray, self.mlflow = FakeRay(), FakeMlflow()
        if fakes:
            self.app.state.ray, self.app.state.mlflow = self.ray, self.mlflow
        self.client = TestClient(self.app)

    def __enter__(self):
        self.client.__enter__()
        return self

    def __exit__(self, *exc):
        self.client.__exit__(*exc)

    def call(self, method: str, path: str, who: str | None = "alice", **kw):
        headers = kw.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {ALICE if who == 'alice' else BOB}"
        return self.client.request(method, path, headers=headers, **kw)

    def submit(self, body=TINY, who="alice", **kw):
        r = self.call("POST", "/v1/jobs", who, json=body, **kw)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def rows(self) -> int:
        with Session(self.app.state.engine) as s:
            return s.scalar(select(func.count()).select_from(JobRow))

    def row(self, job_id: str) -> JobRow | None:
        with Session(self.app.state.engine) as s:
            return s.get(JobRow, job_id)

    def out_dir(self, job_id: str) -> Path:
        """The driver's --out folder of a job (what `slwtune tune` writes: job.json, report.json)."""
        return self.settings.jobs_dir.resolve() / job_id / "out"

    def write_report(self, job_id: str, report: dict) -> None:
        out = self.out_dir(job_id)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report))

    def job_dirs(self) -> list[Path]:
        d = self.settings.jobs_dir
        return sorted(d.iterdir()) if d.exists() else []


def parent(job_id, phase="probing", verdict=None, chosen=None, progress="round 1", outcome=None,
           reason=None) -> ParentRun:
    return ParentRun(run_id=f"run-{job_id}", experiment_id="7", status="RUNNING", phase=phase,
                     progress=progress, verdict=verdict, chosen=chosen, outcome=outcome, reason=reason)


def rejected(api: Api, body=None, *, content=None, status=422) -> list[dict]:
    """POST /v1/jobs that must fail with `status` and leave the registry, Ray and the jobs folder untouched."""
    kw = {"json": body} if content is None else {"content": content, "headers": {"Content-Type": "application/json"}}
    r = api.call("POST", "/v1/jobs", **kw)
    assert r.status_code == status, r.text
    assert api.rows() == 0 and api.ray.jobs == {} and api.job_dirs() == []
    return r.json()["detail"] if status == 422 else []


def fields(detail: list[dict]) -> dict[str, object]:
    """{dotted field: bad value} of a 422 body."""
    return {e.get("field") or ".".join(map(str, e["loc"][1:])): e["input"] for e in detail}


# ---- the spec model's numeric fields and their bounds ------------------------------------------


def numeric_fields(model=None, prefix=""):
    """(dotted name, FieldInfo) of every int/float field of the job spec (lists and tuples aside)."""
    from pydantic import BaseModel

    from slwtune.spec import JobSpec

    for name, info in (model or JobSpec).model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from numeric_fields(ann, f"{prefix}{name}.")
            continue
        if getattr(ann, "__origin__", None) is tuple:
            continue
        kinds = {a for a in (getattr(ann, "__args__", None) or (ann,)) if a is not type(None)}
        if kinds and kinds <= {int, float}:
            yield f"{prefix}{name}", info


def bounds(info) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    """(("[" or "(", lower), ("]" or ")", upper)) of a field, None where it has no bound."""
    import annotated_types as at

    lo = hi = None
    for m in info.metadata:
        if isinstance(m, at.Ge):
            lo = ("[", m.ge)
        elif isinstance(m, at.Gt):
            lo = ("(", m.gt)
        elif isinstance(m, at.Le):
            hi = ("]", m.le)
        elif isinstance(m, at.Lt):
            hi = (")", m.lt)
    return lo, hi


def _num(v) -> str:
    if isinstance(v, int) and v >= 10**6 and str(v).rstrip("0") == "1":
        return f"1e{len(str(v)) - 1}"
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def doc_range(info) -> str:
    """A field's range as the README writes it: [1, 256], (0, 1], [0, 1e7]."""
    (open_, lo), (close, hi) = bounds(info)
    return f"{open_}{_num(lo)}, {_num(hi)}{close}"


def out_of_range(info) -> list:
    """Values just outside a field's range, far outside it, and not numbers at all."""
    (open_, lo), (close, hi) = bounds(info)
    is_int = info.annotation in (int, int | None)
    below = lo if open_ == "(" else (lo - 1 if is_int else lo - 1e-3)
    above = hi if close == ")" else (hi + 1 if is_int else hi * 1.5)
    values = [below, above, 1e300, -1e300, "NaN", "Infinity", "-Infinity", "many", [1], {"v": 1}]
    if not info.is_required() and info.default is not None:
        values.append(None)  # a field that is not optional must not take null either
    return values
