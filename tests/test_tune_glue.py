"""The Ray Tune glue with fake Tune results: verdicts, crashes, checkpoints, knobs, the stopper."""

from types import SimpleNamespace

from slwtune import metrics as M
from slwtune.tuning.strategies import Outcome, Probe
from slwtune.tuning.tune_glue import (
    CHECKPOINT_PATH_KEY,
    KnobsResult,
    VerdictStopper,
    lift_knobs,
    result_to_probe,
    with_storage_scheme,
)


def tune_result(metrics=None, error=None, knobs=(8, 100), storage="/tmp/ray"):
    config = {"knobs": {"start_length": knobs[0], "duration_steps": knobs[1]}, "storage": storage}
    return KnobsResult(SimpleNamespace(metrics=metrics, error=error, config=config, metrics_dataframe=None))


def test_a_reported_verdict_becomes_the_probe_outcome():
    r = result_to_probe(tune_result({M.VERDICT: M.FLUCTUATING, M.REASON: "val ppl rose", M.EARLY: True,
                                     M.STEP: 12, M.TRAIN_TOKENS: 960, M.BEST_VAL_PPL: 30.0,
                                     M.VAL_PPL: M.NONFINITE_STANDIN}), round_index=2)
    assert r.outcome() == Outcome(Probe(8, 100), M.FLUCTUATING, True, "val ppl rose", 30.0)
    assert (r.steps, r.tokens, r.round) == (12, 960, 2)
    assert r.final_val_ppl is None  # a stand-in for inf is not a perplexity


def test_a_crash_is_failed_with_its_error_even_after_a_stable_report():
    r = result_to_probe(tune_result({M.VERDICT: M.STABLE}, error=RuntimeError("worker died")), 1)
    assert r.verdict == M.FAILED and r.reason == "RuntimeError: worker died"


def test_a_trial_that_reported_nothing_is_failed():
    assert result_to_probe(tune_result({}), 1).verdict == M.FAILED


def test_checkpoint_paths_keep_the_storage_scheme():
    r = result_to_probe(tune_result({M.VERDICT: M.STABLE, CHECKPOINT_PATH_KEY: "bucket/runs/ckpt_0"},
                                    storage="s3://bucket/runs"), 1)
    assert r.checkpoint == "s3://bucket/runs/ckpt_0"
    assert with_storage_scheme("/abs/ckpt", "file:///abs") == "file:///abs/ckpt"
    assert with_storage_scheme("/abs/ckpt", "/abs") == "/abs/ckpt"
    assert with_storage_scheme("s3://b/c", "s3://b") == "s3://b/c"


def test_lift_knobs_puts_the_grid_point_at_the_top_level():
    seen = {}
    trial = lift_knobs(lambda config: seen.update(config))
    trial({"spec": {}, "knobs": {"start_length": 16, "duration_steps": 40}})
    assert seen["start_length"] == 16 and seen["duration_steps"] == 40


def test_stopper_stops_at_the_first_unstable_report_only():
    stop = VerdictStopper()
    assert not stop("t", {M.VERDICT: M.STABLE, M.DONE: True})
    assert stop("t", {M.VERDICT: M.DIVERGED}) and stop("t", {M.VERDICT: M.FLUCTUATING})
    assert not stop.stop_all()
