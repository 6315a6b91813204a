"""The evaluation's evidence: what `plan` assumes, what the probes measured, and the report's say."""

import math
from dataclasses import replace

import pytest

from slwtune import metrics as M
from slwtune.spec import load_spec
from slwtune.tuning.evidence import (SEQUENCE_LOSS_SD, eval_noise, evaluation_note, measured_evaluation,
                                     se_target)
from slwtune.tuning.report import build_report, report_markdown
from slwtune.tuning.results import probe_from
from slwtune.tuning.strategies import Probe
from tests.test_driver import probe_result

DEMO = load_spec("shakespeare-demo")  # 320 evaluated sequences


def with_se(result, se):
    return replace(result, val_loss_se=se)


def probes_measuring(spec, sequence_sd: float, n: int = 3) -> list:
    se = sequence_sd / math.sqrt(eval_noise(spec)["eval_sequences"])
    return [with_se(probe_result(Probe(8, 16 * (i + 1)), M.STABLE), se) for i in range(n)]


def test_a_probe_result_carries_its_last_evaluations_standard_error():
    knobs = Probe(8, 16).as_config()
    assert probe_from({M.VERDICT: M.STABLE, M.VAL_LOSS_SE: 0.031}, knobs, round_index=1).val_loss_se == 0.031
    assert probe_from({M.VERDICT: M.DIVERGED}, knobs, round_index=1).val_loss_se is None  # never evaluated
    assert probe_from({M.VERDICT: M.STABLE, M.VAL_LOSS_SE: float("nan")}, knobs, round_index=1).val_loss_se is None


def test_nothing_measured_says_nothing():
    assert measured_evaluation(DEMO, [probe_result(Probe(8, 16), M.DIVERGED), None]) is None
    assert evaluation_note(None) is None


def test_the_spread_plan_assumes_is_large_enough_for_the_demo():
    measured = measured_evaluation(DEMO, probes_measuring(DEMO, SEQUENCE_LOSS_SD))
    assert measured["se_measured"] == pytest.approx(measured["se_planned"])
    assert measured["sequence_sd"] == pytest.approx(SEQUENCE_LOSS_SD)
    assert measured["large_enough"] == eval_noise(DEMO)["eval_large_enough"] is True
    assert evaluation_note(measured) is None


def test_a_noisier_corpus_is_named_with_the_evaluation_it_needs():
    """A spread of 0.63 nats (the held-out KJV measures more) makes the demo's 320 sequences too few."""
    measured = measured_evaluation(DEMO, probes_measuring(DEMO, 0.63))
    assert not measured["large_enough"] and measured["probes"] == 3
    needed_batches = measured["eval_batches_needed"]
    note = evaluation_note(measured)
    assert f"run.eval_batches >= {needed_batches}" in note and "noisier than planned" in note
    # at this noise a rise counts only above 2 combined standard errors, more than the 5% tolerance
    assert measured["noise_bar"] == pytest.approx(2 * math.sqrt(2) * measured["se_measured"])
    assert measured["noise_bar"] > math.log(1.05)
    assert f"rises below {measured['noise_bar']:.3f} nats count as noise" in note
    # what the note asks for is enough on this corpus, one batch fewer is not
    batch = DEMO.run.eval_batch_size or DEMO.data.batch_size
    assert 0.63 / math.sqrt(needed_batches * batch) <= se_target(DEMO) < 0.63 / math.sqrt((needed_batches - 1) * batch)


def test_the_median_over_probes_and_control_decides_not_one_noisy_probe():
    probes = probes_measuring(DEMO, SEQUENCE_LOSS_SD, n=2)
    control = with_se(probe_result(Probe.control(64), M.STABLE), SEQUENCE_LOSS_SD / math.sqrt(320))
    outlier = with_se(probe_result(Probe(8, 99), M.STABLE), 1.0)
    measured = measured_evaluation(DEMO, [*probes, outlier, control])
    assert measured["probes"] == 4 and measured["large_enough"]


def test_the_report_holds_the_measurement_and_a_note_when_it_falls_short():
    def report(probes):
        return build_report(spec=DEMO, job_id="j", strategy="paper", probes=probes, chosen=Probe(8, 16), notes=["n"],
                            violations=[], reuse_probe=True, parent_run_id=None, outcome=M.OUTCOME_DONE)

    fine = report(probes_measuring(DEMO, SEQUENCE_LOSS_SD))
    assert fine[M.REPORT_EVALUATION]["large_enough"] and fine[M.REPORT_NOTES] == ["n"]
    assert "large enough" in report_markdown(fine)
    noisy = report(probes_measuring(DEMO, 0.63))
    assert noisy[M.REPORT_NOTES][0] == "n" and "run.eval_batches >=" in noisy[M.REPORT_NOTES][1]
    assert "too small, this corpus needs" in report_markdown(noisy)
    assert report([probe_result(Probe(8, 16), M.DIVERGED)])[M.REPORT_EVALUATION] is None
