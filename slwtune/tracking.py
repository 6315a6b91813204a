"""MLflow conventions: experiments, run names, tags, params and batched metric logging.

Everything goes through an explicit `MlflowClient` and run ids, so the job
driver, Tune trial processes and Ray Train workers can all log to the same
tree of runs (parent run per job, child run per probe and for the full run).
"""

from __future__ import annotations

import math
import time
from typing import Any

from slwtune import metrics as M
from slwtune import settings


def tracking_uri(spec=None) -> str | None:
    """The spec's tracking URI, else $MLFLOW_TRACKING_URI, else None (no logging)."""
    if spec is not None and spec.tracking.tracking_uri:
        return spec.tracking.tracking_uri
    return settings.tracking_uri()


def experiment_name(spec) -> str:
    return spec.tracking.experiment or spec.name


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# MLflow 3.x tells GenAI experiments from model training by this tag (the UI's "Machine learning"
# kind); untagged, some 3.x UIs open an experiment on the GenAI overview (traces, judges).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment `name`, created (tagged as model training) when missing.

    Tolerates a concurrent create.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags=EXPERIMENT_TAGS)
    except Exception:  # created by a concurrent process in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


SLW_KNOB_PARAMS = ("slw.enabled", "slw.full_length")  # what a run without SLW keeps of the slw section


def run_params(spec) -> dict[str, Any]:
    """A run's params: the flat spec; without SLW, none of the SLW knobs (they did not apply), so a
    sorted runs table reads true."""
    flat = spec.flat()
    if spec.slw.enabled:
        return flat
    return {k: v for k, v in flat.items() if not k.startswith("slw.") or k in SLW_KNOB_PARAMS}


def knob_tags(spec) -> dict[str, Any]:
    """The SLW tags of a run: `slw.enabled`, and the two knobs only when SLW is on."""
    if not spec.slw.enabled:
        return {M.TAG_SLW_ENABLED: "false"}
    return {M.TAG_SLW_ENABLED: "true", M.TAG_START_LENGTH: spec.slw.start_length,
            M.TAG_DURATION_STEPS: spec.slw.duration_steps}


def create_run(uri: str, experiment: str, run_name: str, *, tags: dict | None = None,
               params: dict | None = None, parent_run_id: str | None = None) -> str:
    """Create a run (a child when `parent_run_id` is given) and log its params; returns the run id."""
    client = _client(uri)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags[M.TAG_PARENT] = parent_run_id
    run = client.create_run(ensure_experiment(uri, experiment), tags=all_tags, run_name=run_name)
    if params:
        log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    client = _client(uri)
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[i : i + 100])


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def get_tags(uri: str, run_id: str) -> dict[str, str]:
    return dict(_client(uri).get_run(run_id).data.tags)


def find_child(uri: str, parent_run_id: str, tag: str, value: str):
    """The child run of `parent_run_id` whose tag `tag` equals `value`, or None."""
    return next((r for r in child_runs(uri, parent_run_id) if r.data.tags.get(tag) == value), None)


def best_effort(what: str, fn, *args, **kwargs):
    """Call an MLflow function for bookkeeping; when MLflow is down, warn and return None instead of
    raising, so an outage never ends a probe, a run or a job (the report carries the warning)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # transport or server errors of any kind
        print(f"slwtune: MLflow unavailable ({what}): {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        return None


def run_status(verdict: str) -> str:
    """The MLflow status of a probe's run, the one rule: stable FINISHED, crashed FAILED, and
    unstable (fluctuating, diverged) KILLED: the probe was pruned, as Tune stopped it."""
    return {M.STABLE: M.RUN_FINISHED, M.FAILED: M.RUN_FAILED}.get(verdict, M.RUN_KILLED)


def training_run_status(verdict: str) -> str:
    """The MLflow status of a run that trains to its end (full run, `slwtune train`): FAILED when it
    diverged or crashed; a run that fluctuated still FINISHED (its verdict tag says the rest)."""
    return M.RUN_FAILED if verdict in M.RUN_FAILED_VERDICTS else M.RUN_FINISHED


def end_run(uri: str, run_id: str, status: str = M.RUN_FINISHED) -> None:
    _client(uri).set_terminated(run_id, status=status)


def reopen_run(uri: str, run_id: str) -> None:
    """RUNNING again: a run that goes on after its driver was lost (and the service ended it KILLED);
    `end_run` sets its status and end time again when it ends."""
    _client(uri).update_run(run_id, status=M.RUN_RUNNING)


def log_artifact(uri: str, run_id: str, path: str, artifact_path: str | None = None) -> None:
    _client(uri).log_artifact(run_id, path, artifact_path)


class RunLogger:
    """Buffers the metrics of one run and sends them in batches; an MLflow outage never stops training.

    A send that fails keeps its metrics, in order, and the next flush retries after an
    exponential backoff (1 s doubling to 60 s), so training never waits on a dead server and
    the backlog goes out in order when it returns. `close` makes a last bounded attempt and
    writes whatever is still unsent to `spill_dir/<run_id>.jsonl` (the job folder), so no
    metric is lost; `unsent` counts those and `outages` the failed sends.
    """

    def __init__(self, uri: str | None, run_id: str | None, flush_every: int = 200, spill_dir: str | None = None,
                 clock=time.monotonic, client=None):
        self.enabled = bool(uri and run_id)
        self.uri, self.run_id, self.flush_every, self.spill_dir = uri, run_id, flush_every, spill_dir
        self._clock = clock
        self._client = client  # an MlflowClient (tests pass their own); made on first use
        self._buffer: list = []
        self._tags: dict[str, dict[str, Any]] = {}  # run id -> tags not yet set
        self._retry_at = 0.0
        self.outages = 0
        self.unsent = 0
        if self.enabled:
            settings.fail_fast_mlflow_client()

    def log(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for key, value in values.items():
            # MLflow stores NaN fine, but Inf breaks its charts: keep the stand-in
            value = float(value)
            if math.isinf(value):
                value = M.NONFINITE_STANDIN
            self._buffer.append(Metric(key, value, ts, step))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def set_tags(self, tags: dict[str, Any], run_id: str | None = None) -> None:
        """Tags on this run (or on `run_id` of the same server, e.g. the job's parent run), sent with the metrics."""
        if self.enabled:
            self._tags.setdefault(run_id or self.run_id, {}).update(tags)
            self.flush()

    def flush(self) -> bool:
        """Send what is buffered, unless backing off after a failure; True when nothing is left."""
        if not self.enabled or (not self._buffer and not self._tags):
            return True
        if self._clock() < self._retry_at:
            return False
        from mlflow.entities import RunTag

        try:
            client = self._client = self._client or _client(self.uri)
            while self._buffer:  # oldest first; a batch leaves the buffer only once MLflow has it
                client.log_batch(self.run_id, metrics=self._buffer[:1000])  # MLflow caps a batch at 1000
                del self._buffer[:1000]
            for run_id in list(self._tags):
                client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in self._tags[run_id].items()])
                del self._tags[run_id]
        except Exception as exc:  # any transport or server error: keep everything and back off
            self.outages += 1
            self._retry_at = self._clock() + min(60.0, 2.0 ** (self.outages - 1))
            if self.outages == 1:
                print(f"slwtune: MLflow unavailable ({type(exc).__name__}); training goes on, "
                      f"metrics are kept and sent when it returns", flush=True)
            return False
        return True

    def close(self, wait_s: float = 30.0) -> int:
        """Last attempts for up to `wait_s`; what is still unsent goes to the spill file. Returns that count."""
        deadline = self._clock() + wait_s
        while not self.flush() and self._clock() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - self._clock()))
        if self._buffer and self.spill_dir:
            import json
            from pathlib import Path

            path = Path(self.spill_dir) / f"{self.run_id}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                for m in self._buffer:
                    f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp,
                                        "step": m.step}) + "\n")
        self.unsent = len(self._buffer)
        return self.unsent


def child_runs(uri: str, parent_run_id: str) -> list:
    """The child runs of a parent (probe trials and the full run), oldest first."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    return list(runs)


# ---- where a person opens runs in the MLflow UI ---------------------------------------------
# MLflow 3.17's UI reads the workflow ("genai" or "machine_learning") from the URL, else from the
# browser, and defaults to GenAI, whatever the experiment's tags say: links carry it. Its runs
# table takes filter and sort from the URL but columns only from a "shared view", an experiment
# tag `mlflow.sharedViewState.<key>` that `?viewStateShareKey=<key>` opens (URL filters would
# switch that view off, so the job's filter lives inside it).
UI_WORKFLOW = "workflowType=machine_learning"
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# Few enough to fit beside the run names. The knobs as params (the spec's field paths): every
# run of a job has them, the full run too.
JOB_VIEW_COLUMNS = (f"tags.`{M.TAG_VERDICT}`", "params.`slw.start_length`", "params.`slw.duration_steps`",
                    f"metrics.`{M.VAL_PPL}`")


def job_view_key(parent_run_id: str) -> str:
    return f"slwtune-job-{parent_run_id}"


def job_view(job_id: str) -> dict[str, Any]:
    """The runs table for one job: its parent and every child, flat, best val ppl first.

    Any order but the creation date lists the runs flat instead of children folded under a
    collapsed parent; runs without val ppl (the parent, crashed probes) come last.
    """
    return {"searchFilter": f"tags.`{M.TAG_JOB_ID}` = '{job_id}'", "orderByKey": f"metrics.`{M.VAL_PPL}`",
            "orderByAsc": True, "selectedColumns": list(JOB_VIEW_COLUMNS)}


def share_job_view(uri: str, parent_run_id: str, job_id: str) -> None:
    """Store the job's runs view on its experiment, for `job_runs_link`."""
    import json

    client = _client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + job_view_key(parent_run_id),
                              json.dumps(job_view(job_id)))


def job_runs_link(base: str, experiment_id: str, parent_run_id: str) -> str:
    """The MLflow UI page of a job: its runs as `share_job_view` stored them, in model-training mode."""
    return (f"{base}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW}"
            f"&viewStateShareKey={job_view_key(parent_run_id)}")


def run_ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """Where to open one run: its UI link on a tracking server, else the command that serves the store."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW}"
    if uri.startswith(("http://", "https://")):
        return f"MLflow run: {uri.rstrip('/')}/{page}"
    import shlex

    return (f"MLflow run {run_id}: open the store with `mlflow ui --backend-store-uri {shlex.quote(uri)}`, "
            f"then http://127.0.0.1:5000/{page}")
