"""Fault drills: real Ray head, MLflow server and API on 127.0.0.1, each fault made by killing one
process by its own PID or stopping a server (docs/reliability.md gives the figures).

One stack serves every drill, and one job takes five faults in turn, each in its own stretch of
the job so that they do not mask each other:
1. the job driver is SIGKILLed while round 1's second probe trains past a checkpoint (the first
   probe has ended and is in job.json): the API sees the lost driver and resubmits it with
   `slwtune tune --resume`; no finished probe runs again, and the killed probe goes on from its
   checkpoint in its own Train run and MLflow run (each knob pair shows once in the trial list);
2. the API is SIGKILLed once the resumed driver probes again, and started again once the full
   run trains: its start-up reconciliation has caught up before the first read (phase
   `full_run`), and it follows the job to its end;
3. the full run's Ray Train worker is SIGKILLed after a checkpoint: Ray Train (run.max_failures)
   restarts it from that checkpoint, not from the start;
4. the driver is SIGKILLed again, mid full run: resumed again, it reruns no probe, and Ray Train
   resumes the full run from its last checkpoint;
5. the MLflow server is stopped for MLFLOW_DOWN_S mid full run and started again: training goes
   on, job reads answer and name MLflow in `unavailable`, `/trials` answers the trials as last
   read, and once it is back every metric of the full run is in MLflow, to its last step (last,
   because a worker killed while MLflow is down takes its unsent metrics with it).
Before it, an API whose Ray is unreachable refuses a submit with 503 and writes nothing.

Sized to fit `make test` on 2 cores: a tiny GPT, a search of rounds of two probes run one at a
time (one or two rounds, as the search decides), no control probe, a full run of a few minutes so
that two faults and the MLflow outage can land inside it. Timings and figures are printed
(`pytest -s`) and written as JSON to $SLWTUNE_DRILL_FIGURES when set.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.processes import cmdline, free_port, kill_pid
from devstack.stack import ApiServer, MlflowServer, RayHead, api_env
from devstack.waiting import retrying, wait_for
from slwtune import metrics as M
from slwtune import tracking
from slwtune.storage import job_prefix

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 32
LOG_EVERY = 4
EVAL_EVERY = 8
STATS_EVERY = 8  # shakespeare-tiny's run.stats_every_steps: Adam's statistics
MLFLOW_DOWN_S = 60  # plus the ~7-15 s the server takes to come back
PROBE_STEPS = 96  # checkpoints at 32 and 64: a probe can be caught training past one
DRILL = {
    "name": "drill",
    "tuning.control_probe": False,
    "tuning.slots": 2,                   # two probes per round ...
    "tuning.max_concurrent_trials": 1,   # ... one after the other: one ends while the other trains
    "tuning.max_rounds": 2,
    "tuning.probe_steps": PROBE_STEPS,
    "budget.train_tokens": 400_000,      # a full run of ~790 steps: room for two faults and the outage
    "run.checkpoint_every_steps": CHECKPOINT_EVERY,
    "run.log_every_steps": LOG_EVERY,
    "run.eval_every_steps": EVAL_EVERY,
    "run.max_failures": 2,
}
JOB_TIMEOUT_S = 600
START_TIMEOUT_S = 300  # a service start on a machine shared with other test runs (MLflow took >120 s once)
FIGURES: dict = {}
FULL_RUN_STEP = re.compile(r"full run: step (\d+),")


@dataclass
class Stack:
    root: Path
    ray: RayHead
    mlflow: MlflowServer
    api: ApiServer
    api_without_ray: ApiServer

    def ray_get(self, path: str):
        r = httpx.get(f"{self.ray.address}{path}", headers={"Authorization": f"Bearer {self.ray.token}"}, timeout=30)
        r.raise_for_status()
        return r.json()

    def ray_status(self, submission_id: str) -> str:
        return self.ray_get(f"/api/jobs/{submission_id}")["status"]

    def ray_logs(self, submission_id: str) -> str:
        return self.ray_get(f"/api/jobs/{submission_id}/logs")["logs"]

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(f"{self.api.url}{path}", headers=self.api.headers(), timeout=60, **kw)

    def job(self, job_id: str) -> dict:
        r = self.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()  # a 5xx is waited out by wait_for (devstack.waiting.transient)
        return r.json()

    def job_trials(self, job_id: str) -> list[dict]:
        r = self.get(f"/v1/jobs/{job_id}/trials")
        r.raise_for_status()
        return r.json()["data"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Ray, MLflow, the API and an API pointed at a closed Ray port, started side by side."""
    t0 = time.time()
    root = tmp_path_factory.mktemp("drills")
    ray = RayHead(num_cpus=4)
    mlflow = MlflowServer(root / "mlflow")
    api = ApiServer(root / "api", api_env(root / "api", ray, mlflow, SLWTUNE_REFRESH_INTERVAL_S="1"))
    lonely_root = root / "api-without-ray"
    api_without_ray = ApiServer(lonely_root, api_env(lonely_root, ray, mlflow,
                                                     SLWTUNE_RAY_ADDRESS=f"http://127.0.0.1:{free_port()}"))
    (root / "api").mkdir(exist_ok=True)
    lonely_root.mkdir(exist_ok=True)
    s = Stack(root, ray, mlflow, api, api_without_ray)
    try:
        with ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(x.start, START_TIMEOUT_S) for x in (ray, mlflow, api, api_without_ray)]:
                f.result()
        FIGURES["stack_start_s"] = round(time.time() - t0, 1)
        yield s
    finally:
        for service in (api_without_ray, api, mlflow, ray):
            service.stop()
        print("\ndrill figures:", json.dumps(FIGURES, indent=2))
        if os.environ.get("SLWTUNE_DRILL_FIGURES"):
            Path(os.environ["SLWTUNE_DRILL_FIGURES"]).write_text(json.dumps(FIGURES, indent=2))


# ---- Ray unreachable at submit ----------------------------------------------------------------


def test_ray_unreachable_at_submit_is_a_503_and_writes_nothing(stack):
    t0 = time.time()
    api = stack.api_without_ray
    jobs_before = len(stack.ray_get("/api/jobs/"))
    r = httpx.post(f"{api.url}/v1/jobs", json={"preset": "shakespeare-tiny"}, headers=api.headers(), timeout=60)
    assert r.status_code == 503, r.text
    assert "Ray is unavailable" in r.json()["detail"] and r.headers["retry-after"]
    db = sqlite3.connect(api.root / "registry.db")
    assert db.execute("select count(*) from jobs").fetchone() == (0,)
    db.close()
    assert list((api.root / "jobs").iterdir()) == []
    assert len(stack.ray_get("/api/jobs/")) == jobs_before  # the real cluster got nothing either
    ready = httpx.get(f"{api.url}/readyz", timeout=60)
    assert ready.status_code == 503 and not ready.json()["checks"]["ray"]["ok"]
    FIGURES["ray_unreachable_submit_s"] = round(time.time() - t0, 2)
    api.stop()


# ---- one job, five faults ----------------------------------------------------------------------


def driver_pids(stack: Stack, job_id: str) -> list[int]:
    """The job's driver (`python -m slwtune.cli tune ...`), not the shell Ray may wrap it in."""
    return [p for p in stack.ray.pids("slwtune.cli", job_id) if cmdline(p)[1:3] == ["-m", "slwtune.cli"]]


def full_run_steps(stack: Stack, submission_id: str) -> list[int]:
    """Every `full run: step N` progress line of the driver's log (rank 0 reports them), in order."""
    return [int(s) for s in FULL_RUN_STEP.findall(stack.ray_logs(submission_id))]


def round_1_probes(state: Path) -> dict:
    """Round 1's probes in the job's journal (job.json `probes`): key -> entry."""
    try:
        probes = json.loads(state.read_text()).get("probes", {})
    except (OSError, ValueError):  # not written yet
        return {}
    return {k: v for k, v in probes.items() if k.startswith("round1/attempt1/")}


def one_ended_one_past_a_checkpoint(probes: dict) -> bool:
    ended = [e for e in probes.values() if e.get("result")]
    training = [e for e in probes.values() if not e.get("result") and e.get("checkpoint")]
    return len(ended) == 1 and len(training) == 1


def kill_the_driver_mid_probe(stack: Stack, job_id: str, rec: dict) -> str:
    """Fault 1: round 1's first probe has ended, its second trains past its first checkpoint.
    Returns the resumed driver's submission id."""
    state = stack.api.root / "jobs" / job_id / "out" / "job.json"
    wait_for(lambda: round_1_probes(state), one_ended_one_past_a_checkpoint, JOB_TIMEOUT_S,
             "round 1's first probe to end and its second to pass a checkpoint", every=0.2)
    [pid] = wait_for(lambda: driver_pids(stack, job_id), lambda p: len(p) == 1, 30, "the driver's pid")
    kill_pid(pid)
    rec["t_driver_killed"] = time.time()
    rec["journal_at_kill"] = round_1_probes(state)
    if json.loads(state.read_text())["rounds"] or not one_ended_one_past_a_checkpoint(rec["journal_at_kill"]):
        pytest.fail("round 1's second probe ended before the driver was killed: lengthen tuning.probe_steps")
    job = wait_for(lambda: stack.job(job_id), lambda j: j["restarts"], 120, "the service to restart the driver")
    rec["t_driver_resubmitted"] = time.time()
    resumed = job["ray_submission_id"]
    wait_for(lambda: stack.ray_logs(resumed), lambda text: "round 1: probing" in text, 300,
             "the resumed driver to probe round 1")
    rec["t_driver_probing_again"] = time.time()
    return resumed


def kill_a_train_worker_after_a_checkpoint(stack: Stack, submission: str, rec: dict) -> None:
    """Fault 3: once the full run has passed a checkpoint of its own."""
    first_own = (PROBE_STEPS // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY  # the probe it continued ended at PROBE_STEPS
    steps = wait_for(lambda: full_run_steps(stack, submission), lambda s: s and s[-1] >= first_own + CHECKPOINT_EVERY // 2,
                     300, "the full run to pass a checkpoint of its own", every=0.5)
    [pid] = wait_for(lambda: stack.ray.pids("RayTrainWorker"), lambda p: len(p) == 1, 30, "the Train worker's pid")
    kill_pid(pid)
    rec["t_worker_killed"], rec["worker_killed_after_step"] = time.time(), steps[-1]
    seen = len(full_run_steps(stack, submission))
    wait_for(lambda: full_run_steps(stack, submission)[seen:], bool, 300, "the full run to report again")
    rec["t_worker_back"] = time.time()


def kill_the_api_until_the_full_run(stack: Stack, job_id: str, resumed: str, rec: dict) -> None:
    """Fault 2: the API dies while the resumed driver probes again, and is started once the full run trains."""
    db = sqlite3.connect(stack.api.root / "registry.db")
    rec["phase_when_api_killed"] = db.execute("select phase from jobs where id = ?", (job_id,)).fetchone()[0]
    stack.api.kill()
    rec["t_api_killed"] = time.time()
    wait_for(lambda: full_run_steps(stack, resumed), bool, 600, "the full run", every=0.5)
    t0 = time.time()
    stack.api.start(START_TIMEOUT_S)
    rec["t_api_back"], rec["api_restart_s"] = time.time(), time.time() - t0
    # Start-up reconciliation ran before the API served: the registry has caught up already.
    rec["registry_at_start"] = db.execute("select state, phase from jobs where id = ?", (job_id,)).fetchone()
    db.close()
    rec["first_read"] = stack.job(job_id)


def stop_mlflow_for_a_while(stack: Stack, job_id: str, submission: str, rec: dict) -> None:
    """Fault 5: MLflow down for MLFLOW_DOWN_S plus its restart, while the full run trains; the API
    answers job reads meanwhile and names MLflow as unavailable."""
    rec["trials_before_down"] = len(stack.job_trials(job_id))  # this API process has read them once
    rec["mlflow_down_at_step"] = full_run_steps(stack, submission)[-1]
    stack.mlflow.stop()
    rec["t_mlflow_down"] = time.time()
    rec["read_while_down"] = wait_for(lambda: stack.job(job_id), lambda j: "mlflow" in j["unavailable"], 30,
                                      "the API to notice MLflow is down")
    trials = stack.get(f"/v1/jobs/{job_id}/trials")
    rec["trials_while_down"] = (trials.status_code, trials.json().get("stale"), len(trials.json().get("data", [])))
    time.sleep(max(0.0, MLFLOW_DOWN_S - (time.time() - rec["t_mlflow_down"])))
    stack.mlflow.start(START_TIMEOUT_S)
    rec["t_mlflow_up"] = time.time()
    rec["mlflow_up_at_step"] = full_run_steps(stack, submission)[-1]
    if stack.ray_status(submission) != "RUNNING":
        pytest.fail("the job ended before MLflow came back: lengthen the drill's full run (budget.train_tokens)")
    wait_for(lambda: stack.job(job_id), lambda j: j["unavailable"] == {}, 30, "the API to see MLflow back")


def kill_the_driver_mid_full_run(stack: Stack, job_id: str, submission: str, rec: dict) -> str:
    """Fault 4: half a checkpoint interval past a checkpoint: the service resumes the driver, Ray
    Train the full run. Returns the new driver's submission id."""
    step = full_run_steps(stack, submission)[-1]
    checkpoint = (step // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
    steps = wait_for(lambda: full_run_steps(stack, submission), lambda s: s[-1] >= checkpoint + CHECKPOINT_EVERY // 2,
                     120, f"the full run past step {checkpoint}", every=0.5)
    [pid] = wait_for(lambda: driver_pids(stack, job_id), lambda p: len(p) == 1, 30, "the resumed driver's pid")
    if stack.ray_status(submission) != "RUNNING":
        pytest.fail("the job ended before its driver could be killed mid full run: raise budget.train_tokens")
    kill_pid(pid)
    rec["t_driver2_killed"], rec["driver2_killed_after_step"] = time.time(), steps[-1]
    job = wait_for(lambda: stack.job(job_id), lambda j: len(j["restarts"]) == 2, 120,
                   "the service to restart the driver again")
    rec["t_driver2_resubmitted"] = time.time()
    again = job["ray_submission_id"]
    wait_for(lambda: full_run_steps(stack, again), bool, 300, "the full run to report again")
    rec["t_full_run_again"] = time.time()
    return again


@pytest.fixture(scope="module")
def faulty_job(stack):
    """The job with its five faults; returns what was seen (times, steps, the final job view...)."""
    rec: dict = {"t_submit": time.time()}
    # A busy machine may time a submit out (503): tried again, under one Idempotency-Key.
    headers = {**stack.api.headers(), "Idempotency-Key": f"drill-{time.time()}"}
    job = retrying(lambda: httpx.post(f"{stack.api.url}/v1/jobs", json={"preset": "shakespeare-tiny", "overrides": DRILL},
                                      headers=headers, timeout=60).raise_for_status().json(),
                   "the API to accept the drill's job", 300, say=print)
    job_id = rec["job_id"] = job["id"]

    resumed = kill_the_driver_mid_probe(stack, job_id, rec)
    kill_the_api_until_the_full_run(stack, job_id, resumed, rec)
    kill_a_train_worker_after_a_checkpoint(stack, resumed, rec)
    last = kill_the_driver_mid_full_run(stack, job_id, resumed, rec)
    # Last: a worker killed while MLflow is down would take the metrics it had not sent with it.
    stop_mlflow_for_a_while(stack, job_id, last, rec)

    rec["view"] = wait_for(lambda: stack.job(job_id), lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                           JOB_TIMEOUT_S, "the job to end", every=2)
    rec["t_end"] = time.time()
    rec["ray_status"] = stack.ray_status(last)
    rec["driver_log"] = stack.ray_logs(resumed)
    rec["last_driver_log"] = stack.ray_logs(last)
    out = stack.api.root / "jobs" / job_id / "out"
    rec["report"] = json.loads((out / "report.json").read_text())
    rec["job_state"] = json.loads((out / "job.json").read_text())
    FIGURES["job_s"] = round(rec["t_end"] - rec["t_submit"], 1)
    return rec


def mlflow_client(stack: Stack):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow.uri)


def went_back(steps: list[int]) -> list[tuple[int, int]]:
    """(step, the step logged next) wherever a run's logged steps go back: a new attempt began."""
    return [(a, b) for a, b in zip(steps, steps[1:]) if b <= a]


def test_driver_killed_mid_probe_reruns_no_finished_probe_and_resumes_the_other(stack, faulty_job):
    rec, view, report = faulty_job, faulty_job["view"], faulty_job["report"]
    assert rec["ray_status"] == "SUCCEEDED" and rec["view"]["state"] == "succeeded", rec["last_driver_log"][-3000:]
    restart = view["restarts"][0]
    assert restart["resumed"] and restart["ray_submission_id"] == f"{rec['job_id']}-r1"
    assert "killed by SIGKILL" in restart["reason"]
    # The resumed driver took round 1's first probe from job.json.
    assert [r["rounds_done"] for r in report["restarts"]][:1] == [0]
    assert "round 1: 1 probe(s) finished before the restart, not rerun; 1 go on from their last checkpoint" \
        in rec["driver_log"]
    # Each knob pair once, in the report and in the trial list (MLflow's runs).
    pairs = [(t["round"], t["start_length"], t["duration_steps"]) for t in report["trials"]]
    trials = [t for t in stack.job_trials(rec["job_id"]) if t["kind"] == M.KIND_PROBE]
    assert sorted((t["round"], t["start_length"], t["duration_steps"]) for t in trials) == sorted(pairs)
    assert len(set(pairs)) == len(pairs) >= DRILL["tuning.slots"]
    # Finished probes ran once: the one that had ended kept its journaled result, and no probe but the
    # resumed one logged a step twice.
    for key, entry in rec["journal_at_kill"].items():
        if entry.get("result"):
            assert rec["job_state"]["probes"][key]["result"] == entry["result"]
    client = mlflow_client(stack)
    history = {t["run_id"]: [m.step for m in sorted(client.get_metric_history(t["run_id"], M.TRAIN_LOSS),
                                                    key=lambda m: (m.timestamp, m.step))] for t in trials}
    [ended_before] = [e for e in rec["journal_at_kill"].values() if e.get("result")]
    [killed] = [e for e in rec["journal_at_kill"].values() if not e.get("result")]
    [resumed] = [t for t in trials if t["resumed_from_step"] is not None]
    assert [t for t in trials if went_back(history[t["run_id"]])] == [resumed]
    # The killed probe went on from its checkpoint, not from step 0, in its own run.
    assert resumed["resumed_from_step"] == killed["checkpoint_step"] > 0
    [(last_before_kill, first_after)] = went_back(history[resumed["run_id"]])
    assert resumed["resumed_from_step"] < first_after <= resumed["resumed_from_step"] + LOG_EVERY
    assert resumed["verdict"] and resumed["status"] == tracking.run_status(resumed["verdict"])  # judged, ended
    assert ended_before["result"]["trial_id"] != killed["trial_id"]
    FIGURES["driver_kill"] = {
        "service_noticed_and_resubmitted_s": round(rec["t_driver_resubmitted"] - rec["t_driver_killed"], 1),
        "probing_again_s": round(rec["t_driver_probing_again"] - rec["t_driver_killed"], 1),
        "finished_probes_rerun": 0,
        "probes_resumed": 1,
        "probe_resumed_from_step": resumed["resumed_from_step"],
        "probe_steps_redone": last_before_kill - resumed["resumed_from_step"],
        "probe_steps_a_rerun_would_redo": last_before_kill,
    }


def test_api_killed_mid_job_reports_it_right_after_restart(faulty_job):
    rec, view = faulty_job, faulty_job["view"]
    # The job moved on while no API ran; the restarted API had caught up before its first read.
    assert rec["phase_when_api_killed"] == M.PHASE_PROBING
    assert tuple(rec["registry_at_start"]) == ("running", M.PHASE_FULL_RUN)
    first = rec["first_read"]
    assert (first["state"], first["phase"], len(first["restarts"])) == ("running", M.PHASE_FULL_RUN, 1)
    assert first["progress"].startswith("full run")
    # ... and it follows the job to its end.
    assert (view["state"], view["outcome"], view["error"]) == ("succeeded", M.OUTCOME_DONE, None)
    assert view["chosen"] and view["full_run"]["verdict"] == M.STABLE and view["full_run"]["slw_enabled"]
    assert view["disk_bytes"] > 0 and len(view["restarts"]) == 2 and view["unavailable"] == {}
    FIGURES["api_kill"] = {"down_s": round(rec["t_api_back"] - rec["t_api_killed"], 1),
                           "restart_to_serving_s": round(rec["api_restart_s"], 1),
                           "caught_up_before_first_read": True}


def full_run_history(stack: Stack, rec: dict, key: str):
    run_id = rec["report"]["full_run"]["mlflow_run_id"]
    return sorted(mlflow_client(stack).get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))


def restarts_in(steps: list[int]) -> list[tuple[int, int]]:
    """(last step logged before, checkpoint resumed from) at each place the logged steps go back."""
    out = []
    for i in range(1, len(steps)):
        if steps[i] < steps[i - 1]:  # a new worker began after the last checkpoint before steps[i]
            out.append((steps[i - 1], (steps[i] - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY))
    return out


def test_train_worker_killed_continues_from_its_checkpoint(stack, faulty_job):
    rec, full = faulty_job, faulty_job["report"]["full_run"]
    assert full["verdict"] == M.STABLE and full["tokens"] >= DRILL["budget.train_tokens"]
    steps = [m.step for m in full_run_history(stack, rec, M.TRAIN_LOSS)]
    # Two places where the full run went back: the worker kill, then the driver kill (below).
    (before, resumed_from), _ = restarts_in(steps)
    assert resumed_from > DRILL["tuning.probe_steps"]  # its own checkpoint: not step 0, not the probe's
    assert before >= resumed_from and rec["worker_killed_after_step"] >= resumed_from
    assert rec["t_worker_back"] < rec["t_driver2_killed"]  # Ray Train handled it: no driver restart then
    FIGURES["worker_kill"] = {"resumed_from_step": resumed_from, "steps_redone_at_least": before - resumed_from,
                              "steps_a_restart_from_zero_would_redo": before,
                              "back_reporting_s": round(rec["t_worker_back"] - rec["t_worker_killed"], 1)}


def test_driver_killed_mid_full_run_resumes_it_from_its_checkpoint(stack, faulty_job):
    rec, report, view = faulty_job, faulty_job["report"], faulty_job["view"]
    second = view["restarts"][1]
    assert second["resumed"] and "killed by SIGKILL" in second["reason"]
    rounds = max(t["round"] for t in report["trials"])
    assert [r["rounds_done"] for r in report["restarts"]] == [0, rounds]  # no probe round ran again
    assert f"round {rounds}: finished before the restart, not rerun" in rec["last_driver_log"]
    steps = [m.step for m in full_run_history(stack, rec, M.TRAIN_LOSS)]
    _, (before, resumed_from) = restarts_in(steps)
    assert resumed_from >= rec["driver2_killed_after_step"] - CHECKPOINT_EVERY - LOG_EVERY
    assert resumed_from > DRILL["tuning.probe_steps"] and before >= resumed_from
    FIGURES["driver_kill_full_run"] = {
        "resumed_from_step": resumed_from, "steps_redone_at_least": before - resumed_from,
        "steps_a_restart_from_the_probe_would_redo": before - DRILL["tuning.probe_steps"],
        "service_noticed_and_resubmitted_s": round(rec["t_driver2_resubmitted"] - rec["t_driver2_killed"], 1),
        "training_again_s": round(rec["t_full_run_again"] - rec["t_driver2_killed"], 1),
        "steps_left_after_it": report["full_run"]["steps"] - rec["driver2_killed_after_step"],  # the drill's margin
    }


def test_mlflow_stopped_mid_job_loses_no_metric(stack, faulty_job):
    rec, report = faulty_job, faulty_job["report"]
    full = report["full_run"]
    assert rec["mlflow_up_at_step"] > rec["mlflow_down_at_step"]  # it trained while MLflow was down
    # Reads answered while it was down, naming it; the trials (MLflow's) as last read, marked stale.
    down = rec["read_while_down"]
    assert down["state"] == "running" and down["phase"] == M.PHASE_FULL_RUN
    # the probes and the full run, as last read
    assert rec["trials_while_down"] == (200, True, rec["trials_before_down"]) == (200, True, len(report["trials"]) + 1)
    assert full["mlflow_unsent"] == 0
    start = next(t["steps"] for t in report["trials"] if t["verdict"] == M.STABLE and
                 (t["start_length"], t["duration_steps"]) == (report["chosen"]["start_length"],
                                                              report["chosen"]["duration_steps"]))
    final = full["steps"]
    log_steps = {s for s in range(start + 1, final + 1) if s % LOG_EVERY == 0 or s % EVAL_EVERY == 0} | {final}
    expected = {key: log_steps for key in (M.TRAIN_LOSS, M.TRAIN_LOSS_RATIO, M.TRAIN_SEQLEN, M.TRAIN_TOKENS,
                                           M.TRAIN_LR, M.TRAIN_GRAD_NORM, M.TOKENS_PER_S)}
    expected.update({key: {s for s in log_steps if s % STATS_EVERY == 0} for key in (M.ADAM_VAR_MAX, M.ADAM_VAR_L1)})
    expected.update({key: {s for s in log_steps if s % EVAL_EVERY == 0} | {final} for key in (M.VAL_LOSS, M.VAL_PPL)})
    lost = {key: sorted(steps - {m.step for m in full_run_history(stack, rec, key)}) for key, steps in expected.items()}
    lost = {key: steps for key, steps in lost.items() if steps}
    assert lost == {}, f"(metric, steps) missing in MLflow: { {k: v[:10] for k, v in lost.items()} }"
    spill = stack.api.root / "jobs" / rec["job_id"] / "out" / "metrics"
    assert not spill.exists() or not any(spill.iterdir())
    FIGURES["mlflow_outage"] = {
        "down_s": round(rec["t_mlflow_up"] - rec["t_mlflow_down"], 1),
        "steps_trained_while_down": rec["mlflow_up_at_step"] - rec["mlflow_down_at_step"],
        "metrics_lost": sum(len(v) for v in lost.values()),
        "metrics_checked": sum(len(v) for v in expected.values()),
        "job_warnings": len(rec["view"]["warnings"]),
    }


def test_delete_removes_the_finished_jobs_checkpoints_and_folder(stack, faulty_job):
    job_id = faulty_job["job_id"]
    storage = Path(stack.ray.temp_dir / "ray_results")
    prefix = job_prefix(DRILL["name"], job_id)
    before = sorted(p.name for p in storage.glob(f"{prefix}*"))
    assert any(name.endswith("full") for name in before)
    r = httpx.delete(f"{stack.api.url}/v1/jobs/{job_id}", headers=stack.api.headers(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["checkpoint_runs_deleted"] == len(before) and r.json()["bytes_freed"] > 0
    assert list(storage.glob(f"{prefix}*")) == [] and not (stack.api.root / "jobs" / job_id).exists()
    assert stack.get(f"/v1/jobs/{job_id}").status_code == 404
    parent = faulty_job["report"]["mlflow_parent_run_id"]
    assert mlflow_client(stack).get_run(parent).info.lifecycle_stage == "active"  # MLflow runs kept
    FIGURES["delete"] = {"checkpoint_runs": len(before), "bytes_freed": r.json()["bytes_freed"],
                         "disk_bytes_reported": faulty_job["view"]["disk_bytes"]}
