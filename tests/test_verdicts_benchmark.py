"""benchmarks/verdicts.py: the ground truth of a run, the summary, and the offline replay."""

import math
import sys
from pathlib import Path

from slwtune import metrics as M

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # as the script sees its parts: beside it

import verdicts as vb  # noqa: E402


def falling(n=60, start=7.6, end=5.0):
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def test_a_run_that_falls_trains_whatever_its_warmup_spike():
    losses = falling()
    losses[10] = 11.0  # the warmup transient: recovered
    assert vb.outcome(losses)[0]


def test_a_run_that_ends_above_its_first_loss_or_non_finite_blew_up():
    assert not vb.outcome(falling() + [9.0] * 20)[0]
    assert not vb.outcome(falling() + [math.nan])[0]
    assert not vb.outcome([])[0]


def test_a_run_far_above_its_lowest_at_the_end_blew_up():
    losses = falling(end=3.0) + [6.0] * 10  # still below the first loss, but ~1.8x its lowest
    trains, why = vb.outcome(losses)
    assert not trains and "its lowest" in why


def row(config, verdict, trains):
    return {"config": config, "verdict": verdict, "trains": trains}


def test_summary_counts_agreement_false_and_missed_divergence():
    rows = [row("lr0.001", M.STABLE, True), row("lr0.001", M.STABLE, True),
            row("lr0.01", M.DIVERGED, True), row("lr0.01", M.STABLE, True),   # disagree; one false divergence
            row("lr1.0", M.STABLE, False), row("lr1.0", M.STABLE, False)]    # agree; two missed
    configs = [c for c in vb.CONFIGS if c.name in ("lr0.001", "lr0.01", "lr1.0")]
    s = vb.summarize(rows, configs, 2)
    assert (s["agreement"], s["false_divergence"], s["missed_divergence"]) == (round(2 / 3, 3), 1, 2)
    assert (s["configs"], s["seeds"], s["runs_blown_up"]) == (3, 2, 2)


def test_the_configurations_span_a_stable_and_a_failing_lr():
    lrs = [c.lr for c in vb.CONFIGS]
    assert len(vb.CONFIGS) >= 6 and min(lrs) <= 0.001 and max(lrs) >= 1.0
    assert len({c.name for c in vb.CONFIGS}) == len(vb.CONFIGS)


def test_replay_judges_the_recorded_curves_with_other_thresholds():
    losses = falling()
    for s in range(10, 14):
        losses[s] = 12.0  # four steps up: a spike, persisting for four
    recorded = [{"config": "lr0.01", "seed": 1, "trains": True, "losses": losses, "evals": [(10, 6.0, 0.01)]}]
    assert vb.replay(recorded, {}, 60, 2048)[0]["verdict"] == M.STABLE
    strict = vb.replay(recorded, {"spike_patience": 3}, 60, 2048)[0]
    assert strict["verdict"] == M.DIVERGED and "persisted 3 steps" in strict["reason"]


def test_the_ground_truth_trains_on_with_the_stop_rules_at_their_loosest():
    spec = vb.base_spec("builtin:shakespeare", 80, [])
    assert spec.budget.train_tokens == 80 * spec.data.batch_size * spec.slw.full_length
    s = vb.truth_spec(spec).tuning.stability
    assert (s.loss_ratio_max, s.spike_patience, s.spike_recovery_steps, s.loss_ceiling_margin) == (
        100.0, 100_000, 10_000_000, 1000.0)
    assert s.spike_sigmas == spec.tuning.stability.spike_sigmas  # the rest as the spec has it
