"""One job's context: ids, its folder and persisted state, its MLflow parent run.

Everything a restarted driver needs lives in the job folder (`job.json`): the
job id, the MLflow parent run, every finished round of probes with its
results, each probe of the round under way (`probes`: its latest checkpoint and
curve as it trains, its result once it ended; see `ProbeJournal`), the full
run's summary once it is over, and each restart with its reason. `slwtune tune
--resume OUT` (and the service, when a driver dies) reads it back, so finished
probes are never rerun and unfinished ones go on from their last checkpoint.

MLflow is bookkeeping here: a call that fails while the server is down warns,
adds a line to the job's `warnings` and lets the job go on.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from slwtune import metrics as M
from slwtune import settings, tracking
from slwtune.errors import SlwtuneError
from slwtune.files import JOB_STATE_FILE as STATE_FILE, SPEC_FILE
from slwtune.raycluster import default_storage
from slwtune.spec import JobSpec
from slwtune.tuning.results import RESUME_STEP_KEY, RESUME_TRIAL_KEY, ProbeResult
from slwtune.tuning.strategies import Probe

METRICS_DIR = "metrics"  # metrics MLflow never took, one JSONL file per run


class Job:
    """A job's ids, folder, persisted state and MLflow parent run."""

    def __init__(self, spec: JobSpec, out_dir: Path, job_id: str | None):
        self.spec, self.out = spec, Path(out_dir)
        self.job_id = job_id or uuid.uuid4().hex[:12]
        self.uri = tracking.tracking_uri(spec)
        if self.uri:
            settings.fail_fast_mlflow_client()  # a down MLflow costs seconds per call, not minutes
        self.storage = default_storage()
        self.parent_run_id: str | None = None
        self.notes: list[str] = []     # what the driver decided (retries), for the report
        self.warnings: list[str] = []  # what went wrong around the job without failing it (MLflow down)
        self.state: dict[str, Any] = {"job_id": self.job_id, "rounds": [], "probes": {}, "full_run": None,
                                      "restarts": []}

    # ---- persisted state -----------------------------------------------------------

    @classmethod
    def resume(cls, out_dir: str | Path, reason: str) -> "Job":
        """The job persisted in `out_dir`, with a restart recorded; SlwtuneError when there is none."""
        out = Path(out_dir)
        if not (out / STATE_FILE).is_file() or not (out / SPEC_FILE).is_file():
            raise SlwtuneError(f"--resume {out}: no job to resume there ({STATE_FILE} and {SPEC_FILE} "
                               f"are written when a job starts)")
        from slwtune.spec import load_spec

        state = json.loads((out / STATE_FILE).read_text())
        job = cls(load_spec(out / SPEC_FILE), out, state["job_id"])
        job.state = state
        job.parent_run_id = state.get("parent_run_id")
        job.state["restarts"].append({"at": time.time(), "reason": reason,
                                      "rounds_done": len(state["rounds"])})
        return job

    def save(self) -> None:
        """Write job.json atomically: a driver killed mid-write leaves the previous state."""
        self.state.update(parent_run_id=self.parent_run_id, spec_name=self.spec.name)
        tmp = self.out / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        os.replace(tmp, self.out / STATE_FILE)

    def done_rounds(self) -> list[list[ProbeResult]]:
        return [[ProbeResult(**r) for r in batch] for batch in self.state["rounds"]]

    def save_round(self, batch: list[ProbeResult]) -> None:
        self.state["rounds"].append([r.to_dict() for r in batch])
        self.save()

    def probe_journal(self, round_index: int, attempt: int = 1) -> "ProbeJournal":
        return ProbeJournal(self, round_index, attempt)

    @property
    def restarts(self) -> list[dict]:
        return self.state["restarts"]

    @property
    def spill_dir(self) -> str:
        return str((self.out / METRICS_DIR).resolve())

    # ---- MLflow ----------------------------------------------------------------------

    @property
    def logs_to_mlflow(self) -> bool:
        return bool(self.uri and self.parent_run_id)

    def track(self, what: str, fn, *args, **kwargs):
        """An MLflow call that must not end the job: when it fails, the job warns and goes on."""
        if not self.uri:
            return None
        try:
            return fn(self.uri, *args, **kwargs)
        except Exception as exc:  # transport or server errors of any kind
            self.warn(f"MLflow unavailable ({what}): {type(exc).__name__}: {str(exc)[:200]}")
            return None

    def warn(self, message: str) -> None:
        print(f"[slwtune {self.job_id}] warning: {message}", flush=True)
        self.warnings.append(message)

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SPEC_FILE).write_text(self.spec.to_yaml())
        if self.uri and not self.parent_run_id:
            self.parent_run_id = self.track(
                "create the job's run", tracking.create_run, tracking.experiment_name(self.spec),
                f"{self.spec.name}-{self.job_id}", params=self.spec.flat(),
                tags={M.TAG_KIND: M.KIND_JOB, M.TAG_PHASE: M.PHASE_PROBING, M.TAG_JOB_ID: self.job_id,
                      M.TAG_STRATEGY: self.spec.tuning.strategy})
            if self.parent_run_id:  # the view the job's MLflow link opens (runs flat, the columns that matter)
                self.track("share the job's view", tracking.share_job_view, self.parent_run_id, self.job_id)
        self.save()
        restarted = f"restart {len(self.restarts)}: {self.restarts[-1]['reason']}" if self.restarts else "starting"
        self.status(phase=M.PHASE_PROBING, progress=restarted)

    def status(self, phase: str | None = None, progress: str | None = None) -> None:
        """Phase and progress: printed (the Ray job's log) and set as tags on the parent run."""
        print(f"[slwtune {self.job_id}] {phase or ''} {progress or ''}".rstrip(), flush=True)
        self.set_tags({k: v for k, v in ((M.TAG_PHASE, phase), (M.TAG_PROGRESS, progress)) if v is not None})

    def set_tags(self, tags: dict) -> None:
        if self.logs_to_mlflow and tags:
            self.track("set the job's tags", tracking.set_tags, self.parent_run_id, tags)


class ProbeJournal:
    """The probes of one round (and attempt) in job.json, written as they happen: each report's
    curve row and latest checkpoint while a probe trains, its result when it ends.

    A restarted driver asks it which probes `finished` (reused, not rerun) and how the others
    `resume` (their first trial's id, so Train V2 resumes the run of the same name from its last
    checkpoint, and the step of that checkpoint); `done` gives a result its whole curve, the rows
    before that checkpoint included.
    """

    def __init__(self, job: Job, round_index: int, attempt: int):
        self.job, self.round_index, self.attempt = job, round_index, attempt
        self.entries: dict[str, dict] = job.state.setdefault("probes", {})

    def key(self, probe: Probe) -> str:
        knobs = f"s{probe.start_length}-T{probe.duration_steps}" if probe.slw else "control"
        return f"round{self.round_index}/attempt{self.attempt}/{knobs}"

    def finished(self, probe: Probe) -> ProbeResult | None:
        entry = self.entries.get(self.key(probe))
        return ProbeResult(**entry["result"]) if entry and entry.get("result") else None

    def resume(self, probe: Probe) -> dict:
        """The knobs that make a probe that was training go on from its last checkpoint ({} for a
        probe that never started); its curve is cut back to that checkpoint, since the steps after
        it are trained again."""
        entry = self.entries.get(self.key(probe))
        if not entry or entry.get("result") or not entry.get("trial_id"):
            return {}
        step = entry.get("checkpoint_step") or 0
        entry["curve"] = [row for row in entry.get("curve", []) if row[0] is not None and row[0] <= step]
        entry["resumed_from_step"] = step
        self.job.save()
        return {RESUME_TRIAL_KEY: entry["trial_id"], RESUME_STEP_KEY: step}

    def progress(self, probe: Probe, trial_id: str, row: list, checkpoint: str | None) -> None:
        entry = self.entries.setdefault(self.key(probe), {"trial_id": trial_id, "curve": []})
        entry["trial_id"] = entry.get("trial_id") or trial_id
        entry["curve"].append(row)
        if checkpoint:
            entry["checkpoint"], entry["checkpoint_step"] = checkpoint, row[0]
        self.job.save()

    def done(self, result: ProbeResult) -> ProbeResult:
        """Record a probe that ended; returns it with its whole curve (every attempt's reports up to
        the checkpoint each went on from) and the step it went on from, if it did."""
        entry = self.entries.setdefault(self.key(result.probe), {"trial_id": result.trial_id, "curve": []})
        result.curve = joined_curve(entry.get("curve") or [], result.curve or [])
        entry["curve"] = result.curve
        if entry.get("resumed_from_step") is not None:
            result.resumed_from_step = entry["resumed_from_step"]
            result.trial_id = entry["trial_id"]
        entry["result"] = result.to_dict()
        self.job.save()
        return result


def joined_curve(journaled: list, reported: list) -> list:
    """The journal's rows, then those of `reported` (one attempt's own) past the journal's last step."""
    last = max((row[0] for row in journaled if row[0] is not None), default=None)
    return list(journaled) + [row for row in reported if last is None or (row[0] is not None and row[0] > last)]
