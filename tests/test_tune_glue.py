"""The Ray Tune glue with fake Tune results: verdicts, crashes, checkpoints, knobs, the stopper."""

from types import SimpleNamespace

from slwtune import metrics as M
from slwtune.tuning.strategies import Outcome, Probe
from slwtune.tuning.results import CHECKPOINT_PATH_KEY, with_storage_scheme
from slwtune.tuning.tune_glue import KnobsResult, VerdictStopper, lift_knobs, result_to_probe


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


class Journal:
    def __init__(self):
        self.seen = []

    def progress(self, probe, trial_id, row, checkpoint):
        self.seen.append(("progress", probe, trial_id, row, checkpoint))

    def done(self, result):
        self.seen.append(("done", result.probe, result.trial_id, result.verdict, result.resumed_from_step))


def trial(knobs, last_result=None, trial_id="t2"):
    return SimpleNamespace(trial_id=trial_id, config={"knobs": knobs, "storage": "/tmp/ray"}, last_result=last_result)


def test_the_journal_hears_each_report_and_end_under_the_probes_first_trial_id():
    from slwtune.tuning.tune_glue import JournalCallback

    journal = Journal()
    callback = JournalCallback(journal, round_index=2)
    resumed = {"start_length": 8, "duration_steps": 64, "resume_trial_id": "t1", "resumed_from_step": 32}
    callback.on_trial_result(0, [], trial(resumed), {M.STEP: 40, M.VAL_PPL: 30.0, M.TRAIN_LOSS_RATIO: 1.1,
                                                     M.TRAIN_TOKENS: 4000, CHECKPOINT_PATH_KEY: "/tmp/ray/c"})
    callback.on_trial_complete(0, [], trial(resumed, {M.VERDICT: M.STABLE, M.STEP: 48}))
    fresh = {"start_length": 8, "duration_steps": 16}
    callback.on_trial_result(0, [], trial(fresh, trial_id="t3"), {M.STEP: 8})
    assert journal.seen == [
        ("progress", Probe(8, 64), "t1", [40, 30.0, 1.1, 4000], "/tmp/ray/c"),
        ("done", Probe(8, 64), "t1", M.STABLE, 32),
        ("progress", Probe(8, 16), "t3", [8, None, None, None], None),
    ]


def test_a_failing_journal_never_stops_the_probes(capsys):
    from slwtune.tuning.tune_glue import JournalCallback

    class Broken(Journal):
        def progress(self, *args):
            raise OSError("disk full")

    JournalCallback(Broken(), 1).on_trial_result(0, [], trial({"start_length": 8, "duration_steps": 16}), {M.STEP: 8})
    assert "the probe journal failed: OSError: disk full" in capsys.readouterr().out


def test_a_resumed_probe_keeps_its_first_trial_id_and_says_where_it_went_on_from():
    r = result_to_probe(tune_result({M.VERDICT: M.STABLE, "trial_id": "t9"}, knobs=(8, 64)), 1)
    assert (r.trial_id, r.resumed_from_step) == ("t9", None)
    config = {"knobs": {"start_length": 8, "duration_steps": 64, "resume_trial_id": "t1", "resumed_from_step": 32}}
    r = result_to_probe(KnobsResult(SimpleNamespace(metrics={M.VERDICT: M.STABLE, "trial_id": "t9"}, error=None,
                                                    config=config, metrics_dataframe=None)), 1)
    assert (r.trial_id, r.resumed_from_step) == ("t1", 32)
