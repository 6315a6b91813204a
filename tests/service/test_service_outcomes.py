"""The job view says what happened: outcome, error, the full run and the control probe, from the
driver's report (the job folder, else MLflow), and which backends it could not reach."""

import json
import math

import pytest
from service_kit import parent
from sqlalchemy import create_engine, inspect, text

from slwtune import metrics as M
from slwtune.spec import load_spec
from slwtune.tuning.report import build_report
from slwtune.tuning.strategies import Probe
from slwtune.tuning.results import ProbeResult

from service.db import create_tables
from service.jobs.results import NO_STABLE

DIVERGED_REASON = "loss ratio 2.31 at step 57 exceeds 1.5 (loss 7.203, minimum so far 3.118)"


def probe(start, duration, verdict, *, slw=True, ppl=30.0, tokens=4096):
    return ProbeResult(start_length=start, duration_steps=duration, verdict=verdict, reason="", early=False,
                       best_val_ppl=ppl, final_val_ppl=ppl, max_loss_ratio=1.05, steps=24, tokens=tokens, wall_s=3.0,
                       checkpoint=None, trial_id="t", round=1, curve=[[24, ppl, 1.05, tokens]], slw=slw)


def report(outcome, error=None, full_run=None, *, control_ppl=40.0, chosen=Probe(8, 40)):
    """A report as the driver writes it: the library's own builder, then what the driver adds at the end."""
    spec = load_spec("shakespeare-tiny")
    probes = [probe(8, 40, M.STABLE), probe(8, 64, M.FLUCTUATING)]
    out = build_report(spec=spec, job_id="j", strategy="paper", probes=probes, chosen=chosen, notes=[],
                       violations=[], reuse_probe=True, parent_run_id="run-j", outcome=outcome, error=error,
                       full_run=full_run, control=probe(0, 0, M.STABLE, slw=False, ppl=control_ppl))
    out.update(restarts=[], warnings=["MLflow unavailable (set the job's tags): ConnectionError: refused"],
               disk_bytes=123_456)
    return out


def full_run(verdict=M.STABLE, reason="", final_ppl=21.5, slw=True):
    return {"verdict": verdict, "reason": reason, "steps": 80, "tokens": 40_960, "final_val_ppl": final_ppl,
            "best_val_ppl": 20.9, "max_loss_ratio": 1.12, "checkpoint": "/ray/full/checkpoint_000001",
            "model": "/jobs/j/out/model/model.pt", "mlflow_run_id": "full-1", "continued_from_probe": True,
            "slw_enabled": slw, "mlflow_unsent": 0, "error": None}


def ended(api, job_id, status, exit_code, message="Job entrypoint command failed"):
    api.ray.jobs[job_id].update(status=status, exit=exit_code, message=message)
    return api.call("GET", f"/v1/jobs/{job_id}").json()


def test_a_diverged_full_run_fails_the_job_with_the_step_and_the_signal(api):
    job = api.submit()
    error = f"full run diverged: {DIVERGED_REASON}"
    api.write_report(job["id"], report(M.OUTCOME_RUN_FAILED, error,
                                       full_run(M.DIVERGED, DIVERGED_REASON, final_ppl=math.inf)))
    got = ended(api, job["id"], "FAILED", M.EXIT_RUN_FAILED)
    assert (got["state"], got["outcome"], got["error"]) == ("failed", M.OUTCOME_RUN_FAILED, error)
    fr = got["full_run"]
    assert (fr["verdict"], fr["reason"], fr["steps"], fr["tokens"]) == (M.DIVERGED, DIVERGED_REASON, 80, 40_960)
    assert fr["final_val_ppl"] is None and fr["best_val_ppl"] == 20.9  # an infinite ppl reads as null
    assert (fr["checkpoint"], fr["mlflow_run_id"], fr["slw_enabled"]) == ("/ray/full/checkpoint_000001", "full-1", True)


def test_every_probe_crashed_is_an_infrastructure_failure_not_instability(api):
    job = api.submit()
    api.mlflow.parents[job["id"]] = parent(job["id"], phase=M.PHASE_DONE, verdict=M.NONE_STABLE)
    api.write_report(job["id"], report(M.OUTCOME_PROBES_CRASHED, "probes crashed: RuntimeError: worker OOM",
                                       chosen=None))
    got = ended(api, job["id"], "FAILED", M.EXIT_INFRA)
    assert (got["state"], got["outcome"]) == ("failed", M.OUTCOME_PROBES_CRASHED)
    assert got["error"] == "probes crashed: RuntimeError: worker OOM" and got["full_run"] is None


def test_nothing_stable_keeps_its_reason(api):
    job = api.submit()
    api.write_report(job["id"], report(M.OUTCOME_NONE_STABLE, chosen=None))
    got = ended(api, job["id"], "FAILED", M.EXIT_NONE_STABLE)
    assert (got["state"], got["outcome"], got["error"]) == ("failed", M.OUTCOME_NONE_STABLE, NO_STABLE)


def test_a_finished_job_shows_the_full_run_the_control_and_its_disk_use(api):
    job = api.submit()
    # The control (SLW off) was stable and better: the baseline ran as the full run.
    api.write_report(job["id"], report(M.OUTCOME_DONE, full_run=full_run(slw=False), control_ppl=25.0))
    got = ended(api, job["id"], "SUCCEEDED", M.EXIT_OK, message=None)
    assert (got["state"], got["outcome"], got["error"]) == ("succeeded", M.OUTCOME_DONE, None)
    assert got["full_run"]["slw_enabled"] is False
    assert got["baseline_wins"] is True and got["message"].startswith("SLW is not needed")
    control = got["control"]
    assert (control["verdict"], control["val_ppl"], control["tokens"]) == (M.STABLE, 25.0, 4096)
    assert control["val_loss"] == pytest.approx(math.log(25.0)) and control["max_loss_ratio"] == 1.05
    assert got["disk_bytes"] == 123_456
    assert got["warnings"] == ["MLflow unavailable (set the job's tags): ConnectionError: refused"]
    listed = api.call("GET", "/v1/jobs").json()["data"][0]
    assert listed["outcome"] == M.OUTCOME_DONE and listed["full_run"] == got["full_run"]


def test_the_control_shows_while_the_full_run_trains(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    api.write_report(job["id"], report(M.OUTCOME_DONE))  # written after the selection, before the full run
    got = api.call("GET", f"/v1/jobs/{job['id']}").json()
    assert got["state"] == "running" and got["control"]["val_ppl"] == 40.0 and got["baseline_wins"] is False
    assert got["outcome"] is None and got["full_run"] is None  # not over yet


def test_the_report_comes_from_mlflow_when_the_driver_ran_elsewhere(make_api):
    with make_api(spec_transport="working_dir", driver_python="python") as api:
        job = api.submit()
        api.mlflow.parents[job["id"]] = parent(job["id"], phase=M.PHASE_DONE, verdict=M.CHOSEN)
        api.mlflow.reports[f"run-{job['id']}"] = report(M.OUTCOME_DONE, full_run=full_run())
        got = ended(api, job["id"], "SUCCEEDED", M.EXIT_OK)
        assert got["outcome"] == M.OUTCOME_DONE and got["full_run"]["final_val_ppl"] == 21.5


def test_the_parent_runs_tags_tell_the_outcome_when_no_report_can_be_read(make_api):
    with make_api(spec_transport="working_dir", driver_python="python") as api:
        job = api.submit()
        reason = f"full run crashed: {DIVERGED_REASON}"
        api.mlflow.parents[job["id"]] = parent(job["id"], phase=M.PHASE_DONE, verdict=M.CHOSEN,
                                               outcome=M.OUTCOME_RUN_FAILED, reason=reason)
        got = ended(api, job["id"], "FAILED", M.EXIT_RUN_FAILED)
        assert (got["state"], got["outcome"], got["error"], got["full_run"]) == (
            "failed", M.OUTCOME_RUN_FAILED, reason, None)


def test_a_report_of_another_shape_does_not_break_the_read(api):
    job = api.submit()
    api.write_report(job["id"], {"outcome": "something-new", "full_run": {"steps": "many"}, "control": [1],
                                 "warnings": "not a list", "disk_bytes": "big"})
    got = ended(api, job["id"], "SUCCEEDED", M.EXIT_OK)
    assert got["state"] == "succeeded" and got["outcome"] is None
    assert (got["full_run"], got["control"], got["warnings"], got["disk_bytes"]) == (None, None, [], None)


def test_mlflow_down_is_reported_on_the_read_that_does_not_need_it(api):
    job = api.submit()
    api.ray.jobs[job["id"]]["status"] = "RUNNING"
    api.mlflow.parents[job["id"]] = parent(job["id"])
    assert api.call("GET", f"/v1/jobs/{job['id']}").json()["unavailable"] == {}
    api.mlflow.down = True
    r = api.call("GET", f"/v1/jobs/{job['id']}")
    assert r.status_code == 200
    got = r.json()
    assert (got["state"], got["phase"], got["progress"]) == ("running", "probing", "round 1")  # as last seen
    assert list(got["unavailable"]) == ["mlflow"] and "MLflow is unavailable" in got["unavailable"]["mlflow"]
    trials = api.call("GET", f"/v1/jobs/{job['id']}/trials")  # never read before: nothing to show, said so
    assert trials.status_code == 200 and (trials.json()["data"], trials.json()["stale"]) == ([], True)
    assert "MLflow is unavailable" in trials.json()["degraded"] and "none read yet" in trials.json()["degraded"]
    api.mlflow.down = False
    assert api.call("GET", f"/v1/jobs/{job['id']}").json()["unavailable"] == {}


def test_ray_down_is_reported_too_and_a_finished_job_needs_neither(api):
    running, done = api.submit(), api.submit()
    api.ray.jobs[done["id"]]["status"] = "SUCCEEDED"
    api.call("GET", f"/v1/jobs/{done['id']}")
    api.ray.down = True
    assert "ray" in api.call("GET", f"/v1/jobs/{running['id']}").json()["unavailable"]
    assert api.call("GET", f"/v1/jobs/{done['id']}").json()["unavailable"] == {}


OLD_JOBS_TABLE = """CREATE TABLE jobs (id VARCHAR(40) PRIMARY KEY, principal VARCHAR(128), name VARCHAR(128),
    spec JSON, state VARCHAR(16), phase VARCHAR(16), progress TEXT, chosen JSON, error TEXT,
    ray_submission_id VARCHAR(64), ray_status VARCHAR(16), cancel_requested BOOLEAN, idempotency_key VARCHAR(255),
    request_hash VARCHAR(64), mlflow_tracking_uri TEXT, mlflow_experiment_id VARCHAR(64),
    mlflow_parent_run_id VARCHAR(64), created_at DATETIME, updated_at DATETIME)"""


def test_a_registry_from_before_gets_the_new_columns(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(text(OLD_JOBS_TABLE))
        conn.execute(text("INSERT INTO jobs (id, principal, name, spec, state, cancel_requested) "
                          "VALUES ('old', 'alice', 'n', :spec, 'succeeded', 0)"), {"spec": json.dumps({"name": "n"})})
    create_tables(engine)
    create_tables(engine)  # twice: nothing left to add
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert {"outcome", "result", "restarts"} <= columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state, outcome FROM jobs")).one() == ("succeeded", None)


def test_huge_offsets_are_refused_not_crashed(api):
    assert api.call("GET", "/v1/jobs", params={"offset": 2**63}).status_code == 422



def test_the_job_view_carries_the_race_decision(api):
    job = api.submit()
    done = report(M.OUTCOME_DONE, full_run=full_run(slw=False), control_ppl=25.0)
    done["decision"] = {"raced": True, "winner": "baseline", "decided": False, "rule": "budget",
                        "reason": "undecided at the race budget (the gap stayed inside the noise band): the "
                                  "baseline, the safer arm, goes on",
                        "tokens": 300_000, "gap": -0.153, "band": 0.173, "race_tokens": 533_504,
                        "race_cost_tokens": 232_448, "arms": {"slw": {"curve": [[1, 2.0, 0.1]]}}}
    api.write_report(job["id"], done)
    got = ended(api, job["id"], "SUCCEEDED", M.EXIT_OK, message=None)
    decision = got["decision"]
    assert (decision["winner"], decision["decided"], decision["rule"], decision["tokens"]) == \
        ("baseline", False, "budget", 300_000)
    assert decision["gap"] == pytest.approx(-0.153) and decision["race_cost_tokens"] == 232_448
    assert "arms" not in decision  # the curves stay in report.json


def test_the_job_view_carries_the_measured_evaluation(api):
    job = api.submit()
    done = report(M.OUTCOME_DONE, full_run=full_run(slw=True), control_ppl=25.0)
    done[M.REPORT_EVALUATION] = {"probes": 3, "eval_sequences": 320, "se_measured": 0.0662, "se_planned": 0.0224,
                                 "se_target": 0.0244, "sequence_sd": 1.18, "sequences_needed": 2358,
                                 "eval_batches_needed": 37, "large_enough": False, "noise_bar": 0.187}
    api.write_report(job["id"], done)
    got = ended(api, job["id"], "SUCCEEDED", M.EXIT_OK, message=None)["evaluation"]
    assert (got["large_enough"], got["eval_batches_needed"]) == (False, 37)
    assert got["se_measured"] == pytest.approx(0.0662) and got["noise_bar"] == pytest.approx(0.187)
