"""The selection report: costs, outcomes, advice only where it helps, the markdown a user reads."""

from slwtune import metrics as M
from slwtune.spec import load_spec
from slwtune.tuning.report import ADVICE_NONE_STABLE, build_report, report_markdown, write_plots, write_report
from slwtune.tuning.strategies import Probe
from tests.test_driver import probe_result


def report(probes, chosen, outcome, error=None, reuse=True):
    spec = load_spec("shakespeare-tiny")
    return build_report(spec=spec, job_id="j", strategy="paper", probes=probes, chosen=chosen, notes=["n"],
                        violations=[], reuse_probe=reuse, parent_run_id=None, outcome=outcome, error=error)


def test_costs_count_every_probe_and_net_out_the_reused_winner():
    probes = [probe_result(Probe(8, 16), M.STABLE, tokens=1000), probe_result(Probe(8, 64), M.FLUCTUATING, tokens=400)]
    probes[0].checkpoint = "/ckpt"
    r = report(probes, Probe(8, 16), M.OUTCOME_DONE)
    full = load_spec("shakespeare-tiny").budget.train_tokens
    assert r["tuning_tokens"] == 1400 and r["tuning_fraction"] == 1400 / full
    assert r["reused_probe_tokens"] == 1000 and r["net_tuning_fraction"] == 400 / full
    assert report(probes, Probe(8, 16), M.OUTCOME_DONE, reuse=False)["reused_probe_tokens"] == 0


def test_advice_only_when_no_probe_was_stable():
    bad = [probe_result(Probe(8, 64), M.DIVERGED)]
    assert report(bad, None, M.OUTCOME_NONE_STABLE)["advice"] == ADVICE_NONE_STABLE
    crashed = report([probe_result(Probe(8, 64), M.FAILED)], None, M.OUTCOME_PROBES_CRASHED, "probes crashed: x")
    assert crashed["advice"] == []
    text = report_markdown(crashed)
    assert "**Failed:** probes crashed: x" in text and "lower optim.lr" not in text


def test_markdown_tells_the_full_run(tmp_path):
    r = report([probe_result(Probe(8, 16), M.STABLE)], Probe(8, 16), M.OUTCOME_RUN_FAILED, "full run diverged: x")
    r["full_run"] = {"verdict": M.DIVERGED, "reason": "loss ratio 3 at step 9", "steps": 9, "tokens": 500,
                     "final_val_ppl": None, "best_val_ppl": 40.0, "continued_from_probe": True, "model": None}
    text = report_markdown(r)
    assert "verdict diverged (loss ratio 3 at step 9), 9 steps, 500 tokens" in text
    paths = write_report(r, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md"]


def test_plots_are_written_with_and_without_a_choice(tmp_path):
    spec = load_spec("shakespeare-tiny")
    probe = probe_result(Probe(8, 16), M.STABLE)
    probe.curve = [[4, 30.0, 1.0], [8, 25.0, 1.01]]
    assert [p.name for p in write_plots([probe], spec, Probe(8, 16), tmp_path)] == ["probes.png", "schedule.png"]
    assert [p.name for p in write_plots([probe], spec, None, tmp_path / "none")] == ["probes.png"]


def raced_decision(winner="slw"):
    from slwtune.tuning import race as R

    spec = load_spec("shakespeare-tiny")
    arms = {R.ARM_SLW: R.Arm(R.ARM_SLW, 8, 16, "/race/slw", 1000, tokens=5000, points=[[3000, 4.0, 0.02],
                                                                                      [5000, 3.5, 0.02]]),
            R.ARM_BASELINE: R.Arm(R.ARM_BASELINE, 64, 0, "/race/base", 4000, tokens=5000,
                                  points=[[5000, 3.9, 0.02]])}
    decision = R.Decision(winner, True, R.RULE_BAND, "SLW led by more than the band", 5000, -0.4, 0.057)
    return R.decision_report(spec, arms, decision)


def test_the_decision_section_says_which_arm_why_where_and_what_the_race_cost(tmp_path):
    d = raced_decision()
    assert d["race_tokens"] == 4000 + 1000 and d["race_cost_tokens"] == 1000  # the loser's (the control's) tokens
    probes = [probe_result(Probe(8, 16), M.STABLE, tokens=1000), probe_result(Probe(8, 64), M.FLUCTUATING, tokens=400)]
    probes[0].checkpoint = "/ckpt"
    spec = load_spec("shakespeare-tiny")
    r = build_report(spec=spec, job_id="j", strategy="paper", probes=probes, chosen=Probe(8, 16), notes=[],
                     violations=[], reuse_probe=True, parent_run_id=None, outcome=M.OUTCOME_DONE, decision=d)
    assert r["decision"]["winner"] == "slw" and r["race_tokens"] == 5000
    assert r["tuning_tokens"] == 1400 + 5000
    assert r["reused_probe_tokens"] == 5000  # the full run continues from the SLW arm: probe + race tokens
    text = report_markdown(r)
    assert "## Decision (race at equal tokens)" in text and "**SLW** at 5,000 tokens" in text
    assert "gap SLW - control -0.400 nats, noise band 0.057" in text and "1,000 of them the loser's" in text
    spec = load_spec("shakespeare-tiny")
    names = [p.name for p in write_plots(probes, spec, Probe(8, 16), tmp_path, decision=d)]
    assert names == ["probes.png", "race.png", "schedule.png"]

def test_recovered_spikes_are_shown_per_probe():
    quiet, spiky = probe_result(Probe(8, 16), M.STABLE), probe_result(Probe(8, 64), M.STABLE)
    spiky.spike_count, spiky.spike_max_ratio, spiky.spike_step = 2, 1.934, 11
    r = report([quiet, spiky], Probe(8, 16), M.OUTCOME_DONE)
    assert [t["spike_count"] for t in r["trials"]] == [0, 2] and r["trials"][1]["spike_step"] == 11
    text = report_markdown(r)
    assert "| spikes |" in text and "| 2 (largest x1.93 at step 11) |" in text
