"""Tune your own training function end to end on a real local Ray with an MLflow store:
`slwtune.tune_function` with the example package (examples/nanogpt_slw)."""

import pytest

import slwtune
from slwtune import metrics as M
from slwtune.spec import load_spec

pytestmark = pytest.mark.slow


def test_tune_function_with_the_example_loop(local_ray, tmp_path, monkeypatch):
    from examples.nanogpt_slw.train import train

    monkeypatch.setenv("SLWTUNE_STORAGE", str(tmp_path / "ray"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # two SLW probes and the control in one round of three concurrent trials, then the full run with
    # the chosen knobs (at this small LR the control may do as well: run_slw keeps SLW in the full run)
    spec = load_spec("examples/nanogpt_slw/spec.yaml", [f"tracking.tracking_uri={uri}",
                                                        "tuning.max_concurrent_trials=3",
                                                        "tuning.when_baseline_wins=run_slw"])
    report = slwtune.tune_function(train, spec, out_dir=tmp_path / "out", job_id="own1")

    trials = report["trials"]
    assert sorted(t["duration_steps"] for t in trials) == [16, 32]
    assert {t["verdict"] for t in trials} <= {M.STABLE, M.FLUCTUATING, M.DIVERGED}  # judged, none crashed
    assert all(t["reason"] for t in trials if t["verdict"] != M.STABLE)
    stable_t = [t["duration_steps"] for t in trials if t["verdict"] == M.STABLE]
    assert report["chosen"] == {"start_length": 8, "duration_steps": max(stable_t)}  # the paper's rule
    assert report["control"]["verdict"] in (M.STABLE, M.FLUCTUATING, M.DIVERGED)
    full = report["full_run"]
    assert full["verdict"] == M.STABLE and full["slw_enabled"] and full["continued_from_probe"] and full["checkpoint"]
    assert full["tokens"] >= spec.budget.train_tokens and full["model"] is None  # the checkpoint is the user's
    assert report["outcome"] == M.OUTCOME_DONE

    from mlflow.tracking import MlflowClient

    from slwtune.tracking import child_runs

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(report["mlflow_parent_run_id"])
    assert parent.data.tags[M.TAG_KIND] == M.KIND_JOB
    assert parent.data.tags[M.TAG_CHOSEN_DURATION] == str(report["chosen"]["duration_steps"])
    assert parent.data.params["model.entrypoint"] == "examples.nanogpt_slw.train:train"
    kids = child_runs(uri, parent.info.run_id)
    kinds = sorted(k.data.tags[M.TAG_KIND] for k in kids)
    assert kinds == sorted([M.KIND_PROBE, M.KIND_PROBE, M.KIND_CONTROL, M.KIND_FULL_RUN])
    assert all(M.TAG_VERDICT in k.data.tags for k in kids)
    # the same metric names as slwtune's own loop, so MLflow's compare view lines the runs up
    names = {M.VAL_PPL, M.TRAIN_SEQLEN, M.TRAIN_LOSS, M.TRAIN_LR, M.TRAIN_GRAD_NORM, M.ADAM_VAR_MAX}
    assert all(names <= set(k.data.metrics) for k in kids)
    control = next(k for k in kids if k.data.tags[M.TAG_KIND] == M.KIND_CONTROL)
    assert control.data.metrics[M.TRAIN_SEQLEN] == spec.slw.full_length  # SLW off: ctx.slw was None
    full_run = next(k for k in kids if k.data.tags[M.TAG_KIND] == M.KIND_FULL_RUN)
    assert full_run.data.params["slw.duration_steps"] == str(report["chosen"]["duration_steps"])
    steps = [h.step for h in client.get_metric_history(full_run.info.run_id, M.TRAIN_LOSS)]
    assert min(steps) > spec.probe_steps()  # it continued from the winning probe's checkpoint
