"""What a job's driver said about how it ended: its report (report.json), or the parent run's tags.

The driver writes `report.json` into its `--out` folder, which is `jobs_dir/<id>/out` on this
API host with the `path` transport (docker-compose shares the `jobs` volume between the API and
the Ray head), and logs the same file on the job's MLflow parent run when the job ends. So the
report is read from the job folder first, then from MLflow; the parent run's outcome and reason
tags are the last word when neither has it (an upload that failed while MLflow was down).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slwtune import metrics as M
from slwtune.files import REPORT_FILE

from service.backends import BackendError, Backends, BackendUnavailable
from service.db import JobRow
from service.mlflow_reader import ParentRun
from service.ray_jobs import RayJobInfo

OUT_DIR = "out"  # the driver's --out inside the job folder (see submission.driver_command)
REPORT_MAX_BYTES = 16 << 20  # a real report is tens of KiB
# The report's fields the job view shows.
VIEW_KEYS = (M.REPORT_FULL_RUN, M.REPORT_CONTROL, M.REPORT_DECISION, M.REPORT_EVALUATION, M.REPORT_BASELINE_WINS,
             M.REPORT_MESSAGE, M.REPORT_WARNINGS, M.REPORT_DISK_BYTES)
NO_STABLE = "no stable configuration"
INVALID_INPUT = "invalid input"  # what a driver that exited M.EXIT_INVALID was given: the CLI's error says which
STOPPED_OUTSIDE = "stopped in Ray (`ray job stop` or the dashboard), not through this API"
CLI_ERROR = "slwtune: error: "  # how the CLI prints an error it exits 3 or 4 on


def job_dir(settings, job_id: str) -> Path:
    return settings.jobs_dir.expanduser().resolve() / job_id


def out_dir(settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / OUT_DIR


def read_report_file(path: Path) -> dict | None:
    """The report at `path`, or None when it is missing, too big or not a JSON object."""
    try:
        if path.stat().st_size > REPORT_MAX_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_report(row: JobRow, b: Backends, *, ended: bool) -> dict | None:
    """The job's report: from the job folder (path transport), else, once the driver ended, from MLflow.

    While the job runs only the job folder is read: the report there is written after the selection
    (control, comparison) and again at the end.
    """
    if b.settings.spec_transport == "path":
        local = read_report_file(out_dir(b.settings, row.id) / REPORT_FILE)
        if local is not None or not ended:
            return local
    if not ended or not row.mlflow_parent_run_id:
        return None
    try:
        with b.timer.measure("mlflow"):
            report = b.mlflow.report(b.tracking_uri(row), row.mlflow_parent_run_id)
        b.outages.up("mlflow")
        return report
    except BackendUnavailable as exc:
        b.outages.down("mlflow", str(exc))
    except BackendError:
        pass
    return None


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf (Python's json writes them anyway): show them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def view_fields(report: dict) -> dict[str, Any]:
    """The report's fields the job view shows, JSON-safe."""
    return {k: _finite(report[k]) for k in VIEW_KEYS if k in report}


def cli_error(message: str | None) -> str | None:
    """The `slwtune: error: ...` the CLI printed before exiting, from a log tail (Ray's message, or
    the driver's log), on one line: its indented lines (a SpecError's problems) joined on with "; "."""
    lines = (message or "").splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(CLI_ERROR):
            head = lines[i][len(CLI_ERROR):].strip().rstrip(":")
            more = []
            for line in lines[i + 1:]:
                if not line.startswith((" ", "\t")) or not line.strip():
                    break
                more.append(line.strip())
            text = f"{head}: {'; '.join(more)}" if head and more else head or "; ".join(more)
            return text or None
    return None


def outcome_of(report: dict | None, parent: ParentRun | None) -> str | None:
    """M.OUTCOME_* as the driver stated it (report first, then the parent run's tag); None if unknown."""
    for outcome in ((report or {}).get(M.REPORT_OUTCOME), parent.outcome if parent else None):
        if outcome in M.OUTCOMES:
            return outcome
    return None


def failure_reason(info: RayJobInfo, report: dict | None, parent: ParentRun | None, log_tail: str | None = None) -> str:
    """Why a driver that exited with an outcome code (1, 2, 3, 4) failed, most specific first:
    invalid input (exit 4: the CLI's error line, from Ray's message or `log_tail`, names the field
    and value); nothing stable; the report's error ("full run diverged at step ...", "probes
    crashed: ..."); the parent run's reason tag; the CLI's own error line; Ray's message."""
    if info.driver_exit_code == M.EXIT_INVALID:
        said = cli_error(info.message) or cli_error(log_tail)
        if not said:
            return f"{INVALID_INPUT} (see the driver's log)"
        return (said if said.startswith("invalid") else f"{INVALID_INPUT}: {said}")[:2000]
    outcome = outcome_of(report, parent)
    if outcome == M.OUTCOME_NONE_STABLE or (outcome is None and info.driver_exit_code == M.EXIT_NONE_STABLE):
        return NO_STABLE
    for reason in ((report or {}).get(M.REPORT_ERROR), parent.reason if parent else None, cli_error(info.message)):
        if reason:
            return str(reason)[:2000]
    return (info.message or "the job driver failed")[:2000]
