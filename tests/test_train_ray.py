"""Training on Ray Train (real local Ray): 2 CPU workers, divergence, MLflow metrics."""

import json
from pathlib import Path

import pytest

from slwtune import metrics as M
from slwtune.pacing import make_pacing
from slwtune.schedule import tokens_for_steps
from slwtune.spec import load_spec
from slwtune.train import make_trainer, summarize, train
from slwtune.train_loop import RunOptions

pytestmark = pytest.mark.slow


def tiny(tmp_path, *overrides):
    return load_spec("shakespeare-tiny", ["budget.train_tokens=10240", "run.eval_every_steps=4",
                                          f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *overrides])


def test_two_workers_complete_and_replicas_agree(local_ray, tmp_path):
    spec = tiny(tmp_path, "resources.num_workers=2", "data.batch_size=8")
    trace = tmp_path / "trace"
    trainer = make_trainer(spec, RunOptions(trace_dir=str(trace)), "two-workers", str(tmp_path / "ray"))
    summary = summarize(trainer.fit())
    assert summary["verdict"] == "stable" and summary["tokens"] >= spec.budget.train_tokens
    rank0 = [json.loads(line) for line in (trace / "rank0.jsonl").read_text().splitlines()]
    rank1 = [json.loads(line) for line in (trace / "rank1.jsonl").read_text().splitlines()]
    assert len(rank0) == len(rank1) > 1  # every rank reported equally often
    assert [r[M.TRAIN_LOSS] for r in rank0] == pytest.approx([r[M.TRAIN_LOSS] for r in rank1])
    assert [r[M.STEP] for r in rank0] == [r[M.STEP] for r in rank1]
    # DDP keeps the replicas identical
    assert [r["param_checksum"] for r in rank0] == pytest.approx([r["param_checksum"] for r in rank1], rel=1e-6)
    # tokens count both workers' rows (2 workers x 4 rows x length), not one worker's 4
    pacing = make_pacing(spec.slw)
    assert [r[M.TRAIN_TOKENS] for r in rank0] == [tokens_for_steps(pacing, r[M.STEP], 8) for r in rank0]


def test_absurd_lr_ends_diverged_and_metrics_land_in_mlflow(local_ray, tmp_path):
    from mlflow.tracking import MlflowClient

    spec = tiny(tmp_path, "optim.lr=1", "optim.min_lr=1", "optim.lr_warmup_steps=1")  # the largest LR the spec allows
    summary = train(spec, storage=str(tmp_path / "ray"), progress=False)
    assert summary["verdict"] == "diverged"
    assert "step" in summary["reason"]
    client = MlflowClient(tracking_uri=spec.tracking.tracking_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags[M.TAG_VERDICT] == "diverged"
    assert run.data.tags[M.TAG_REASON] == summary["reason"]
    assert run.data.params["optim.lr"] == "1.0"
    logged = set(run.data.metrics)
    assert {M.TRAIN_LOSS, M.TRAIN_LOSS_RATIO, M.TRAIN_SEQLEN, M.TRAIN_TOKENS, M.TRAIN_LR, M.TRAIN_GRAD_NORM,
            M.ADAM_VAR_MAX, M.ADAM_VAR_L1, M.TOKENS_PER_S} <= logged


def test_stable_run_logs_validation_metrics(local_ray, tmp_path):
    from mlflow.tracking import MlflowClient

    spec = tiny(tmp_path)
    summary = train(spec, storage=str(tmp_path / "ray"), progress=False)
    assert summary["verdict"] == "stable" and Path(summary["checkpoint"]).is_dir()
    client = MlflowClient(tracking_uri=spec.tracking.tracking_uri)
    history = client.get_metric_history(summary["mlflow_run_id"], M.VAL_PPL)
    assert len(history) >= 2 and all(h.value > 1 for h in history)
    seqlens = [h.value for h in client.get_metric_history(summary["mlflow_run_id"], M.TRAIN_SEQLEN)]
    assert seqlens == sorted(seqlens) and seqlens[-1] == spec.slw.full_length


def test_a_crashed_run_is_reported_failed_not_raised(local_ray, tmp_path):
    from slwtune.train import fit_and_summarize

    spec = tiny(tmp_path)
    # a dataset folder that does not exist: every worker raises DataError at start-up
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"path": str(tmp_path / "missing")})})
    summary = fit_and_summarize(make_trainer(spec, RunOptions(), "crash", str(tmp_path / "ray")))
    assert summary["verdict"] == "failed"
    assert "missing" in summary["error"]
