"""slwtune.tuning.race: the decision rule on synthetic curves, and a race on the tiny preset in-process."""

import math

import pytest

from slwtune import metrics as M
from slwtune.spec import parse_spec
from slwtune.tuning import race as R
from slwtune.tuning import race_runs
from slwtune.tuning.race import ARM_BASELINE, ARM_SLW, Arm, Point, RaceRule, decide, paired_gaps

RULE = RaceRule(z=2.0, patience=3, slw_from_tokens=5000, budget_tokens=10_000)


def curve(tokens, losses, se=0.01):
    return [Point(t, v, se) for t, v in zip(tokens, losses)]


CONTROL_TOKENS = [1000 * i for i in range(1, 11)]


def control(losses=None):
    return curve(CONTROL_TOKENS, losses or [5.0 - 0.1 * i for i in range(10)])


def slw_offset(offsets):
    """SLW evaluated at other token counts (between the control's), loss = control's + offset."""
    base = {t: v.loss for t, v in zip(CONTROL_TOKENS, control())}
    toks = [500] + [t + 500 for t in CONTROL_TOKENS]
    # linear in tokens around the control's curve, plus the offset at that point
    return [Point(t, (base.get(t - 500, 5.1) + base.get(t + 500, base.get(t - 500, 5.1) - 0.1)) / 2 + o, 0.01)
            for t, o in zip(toks, offsets)]


def test_pairing_interpolates_the_slw_arm_at_the_controls_tokens():
    slw = [Point(0, 6.0, 0.02), Point(2000, 4.0, 0.04)]
    gaps = paired_gaps(slw, [Point(1000, 4.5, 0.03), Point(3000, 4.0, 0.03)], RULE)
    assert len(gaps) == 1  # 3000 lies outside the SLW arm's evaluations: not compared
    assert gaps[0].tokens == 1000 and gaps[0].gap == pytest.approx(0.5)
    assert gaps[0].band == pytest.approx(2.0 * math.sqrt(0.03 ** 2 + 0.03 ** 2))
    assert not gaps[0].slw_may_win


def test_the_baseline_wins_when_it_leads_by_more_than_the_band_three_times_in_a_row():
    slw = slw_offset([0.0, 0.2, 0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    d = decide(slw, control(), RULE)
    assert d.winner == ARM_BASELINE and d.decided and d.rule == R.RULE_BAND
    assert d.gap > d.band and d.tokens < RULE.slw_from_tokens  # the control may win early


def test_an_early_slw_lead_predicts_nothing_but_a_lead_past_the_warmup_wins():
    early_only = slw_offset([-0.3] * 5 + [0.0] * 6)
    assert decide(early_only, control(), RULE) is None  # the race goes on
    later = slw_offset([-0.3] * 11)
    d = decide(later, control(), RULE)
    assert d.winner == ARM_SLW and d.decided and d.tokens >= RULE.slw_from_tokens


def test_a_gap_inside_the_band_is_undecided_until_the_budget_then_the_baseline_goes_on():
    tie = slw_offset([-0.01, 0.01] * 5 + [-0.01])
    assert decide(tie, control(), RULE) is None
    d = decide(tie, control(), RULE, at_budget=True)
    assert d.winner == ARM_BASELINE and not d.decided and d.rule == R.RULE_BUDGET
    assert "inside the noise band" in d.reason


def test_one_noisy_evaluation_does_not_decide():
    spike = slw_offset([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0])  # each shows at 2 paired evals
    assert decide(spike, control(), RULE) is None


def test_a_diverged_arm_loses():
    d = decide([], [], RULE, control_failed=True)
    assert d.winner == ARM_SLW and d.rule == R.RULE_DIVERGED
    assert decide([], [], RULE, slw_failed=True).winner == ARM_BASELINE


def tiny(**tuning):
    return parse_spec({
        "name": "race",
        "model": {"preset": "tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 32},
        "data": {"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 4},
        "optim": {"lr": 3e-3, "lr_warmup_steps": 2},
        "slw": {"start_length": 8, "full_length": 32, "duration_steps": 4, "step_size": 8},
        "budget": {"train_tokens": 4 * 32 * 60},
        "run": {"eval_every_steps": 2, "eval_batches": 2, "stats_every_steps": 2, "checkpoint_every_steps": 1000},
        "tuning": {"strategy": "grid", "start_lengths": [8], "durations": [4], "probe_steps": 4,
                   "race_max_fraction": 0.5, "race_patience": 2, **tuning},
    })


def test_segment_milestones_are_shared_and_end_at_the_budget():
    spec = tiny()
    ms = R.segment_milestones(512, spec)
    assert ms[-1] == spec.race_tokens() == 3840 and ms == sorted(ms)
    assert ms[0] == 512 + 2 * 2 * 4 * 32


def probe_arms(spec, tmp_path):
    """Both arms' probes in-process, as the race's starting points."""
    from slwtune.tuning.local import run_probe
    from slwtune.tuning.strategies import Probe

    slw = run_probe(spec, Probe(8, 4), round_index=1, checkpoint_root=str(tmp_path / "p-slw"))
    base = run_probe(spec, Probe.control(32), round_index=1, checkpoint_root=str(tmp_path / "p-base"))
    return {ARM_SLW: Arm(ARM_SLW, 8, 4, slw.checkpoint, slw.tokens, tokens=slw.tokens),
            ARM_BASELINE: Arm(ARM_BASELINE, 32, 0, base.checkpoint, base.tokens, tokens=base.tokens)}


def test_an_in_process_race_on_the_tiny_preset_decides_and_keeps_the_winners_checkpoint(tmp_path):
    spec = tiny()
    arms = probe_arms(spec, tmp_path)
    saved = []
    d = R.race(spec, arms, race_runs.local_segment_runner(spec, str(tmp_path)), save=saved.append)
    assert d.winner in (ARM_SLW, ARM_BASELINE)
    for arm in arms.values():
        assert arm.segments >= 1 and arm.points and arm.checkpoint.startswith(str(tmp_path / f"race-{arm.name}"))
        assert arm.tokens > arm.start_tokens
    # both arms trained to the same milestone (each stops at the first step that reaches it)
    assert abs(arms[ARM_SLW].tokens - arms[ARM_BASELINE].tokens) < 4 * 32
    assert saved[-1]["decision"]["winner"] == d.winner and saved[-1]["arms"][ARM_SLW]["points"]
    report = R.decision_report(spec, arms, d)
    assert report["raced"] and report["race_cost_tokens"] == arms[
        ARM_BASELINE if d.winner == ARM_SLW else ARM_SLW].race_tokens


def test_a_resumed_race_does_not_rerun_finished_segments(tmp_path):
    spec = tiny()
    arms = probe_arms(spec, tmp_path)
    journal, calls = [], []
    real = race_runs.local_segment_runner(spec, str(tmp_path))

    def runner(arms_, until, index):  # real segments, read as a tie so that the race runs to its budget
        real(arms_, until, index)
        arms_[0].points = [list(p) for p in arms_[1].points]

    class Killed(Exception):
        pass

    def dies_in_segment_2(arms_, until, index):
        calls.append(index)
        if index == 2:
            raise Killed  # the driver dies mid-race
        runner(arms_, until, index)

    with pytest.raises(Killed):
        R.race(spec, arms, dies_in_segment_2, save=journal.append)
    assert journal[-1]["segments_done"] == 1 and journal[-1]["decision"] is None

    resumed_arms, done, decision = R.from_journal(journal[-1])
    assert done == 1 and decision is None
    seen = []

    def counts(arms_, until, index):
        seen.append(index)
        runner(arms_, until, index)

    d = R.race(spec, resumed_arms, counts, save=journal.append, done_segments=done)
    n = len(R.segment_milestones(max(a.start_tokens for a in resumed_arms.values()), spec))
    assert seen == list(range(2, n + 1))  # segment 1 was not rerun
    assert d.winner == ARM_BASELINE and not d.decided  # undecided at the budget: the safer arm
    assert resumed_arms[ARM_SLW].segments == n and resumed_arms[ARM_BASELINE].tokens == spec.race_tokens()


def test_update_arm_reads_a_diverged_segment_as_lost():
    arm = Arm(ARM_SLW, 8, 4, "/c", 100)
    R.update_arm(arm, [{M.TRAIN_TOKENS: 200, M.VAL_LOSS: 9.0, M.VERDICT: M.DIVERGED, M.REASON: "loss ratio"}],
                 "/c2", 1.0, None)
    assert arm.failed and arm.points == [[200, 9.0, None]] and arm.checkpoint == "/c2"


# ---- the spec's fields, the T cap, the plan, MLflow's view ---------------------------------------


@pytest.mark.parametrize("field,value", [("race_max_fraction", 0.0), ("race_max_fraction", 1.5),
                                         ("race_patience", 0), ("race_z", -1.0), ("race_warmup_margin", -0.1)])
def test_race_fields_are_validated_naming_the_field(field, value):
    from slwtune.errors import SpecError

    with pytest.raises(SpecError) as err:
        tiny(**{field: value})
    assert any(p["loc"] == f"tuning.{field}" for p in err.value.problems)


def test_the_t_cap_leaves_the_race_room_to_see_slw_past_its_warmup():
    from slwtune.spec import load_spec

    spec = load_spec("shakespeare-demo")
    cap = spec.duration_cap()
    fitted, note = spec.fitted_to_run()
    assert fitted.tuning.duration_max == cap < spec.tuning.duration_max and "capped" in note
    # at the cap, SLW's warmup + margin and `patience` full-length evaluations fit in the race budget
    room = spec.race_tokens() - R.slw_past_warmup_tokens(spec, spec.slw.start_length, cap)
    full_eval = spec.run.eval_every_steps * spec.data.batch_size * spec.slw.full_length
    assert spec.tuning.race_patience * full_eval <= room < (spec.tuning.race_patience + 1) * full_eval
    assert load_spec("shakespeare-demo", ["tuning.race=false"]).fitted_to_run() == (
        load_spec("shakespeare-demo", ["tuning.race=false"]), None)


@pytest.mark.parametrize("stated,full_run", [("slw", "slw"), ("baseline", "baseline"), ("tie", "baseline")])
def test_simulate_states_the_races_outcome(stated, full_run):
    from slwtune.simulation import format_simulation, parse_landscape, simulate
    from slwtune.spec import load_spec

    sim = simulate(load_spec("shakespeare-demo"), parse_landscape(f"diverged<60,race={stated}"))
    assert sim["race"]["raced"] and sim["race"]["full_run"] == full_run
    assert sim["race"]["slw_from_tokens"] < sim["race"]["race_budget_tokens"]
    assert "race: SLW may win only past" in format_simulation(sim)


def test_simulate_names_a_bad_race_outcome():
    from slwtune.errors import SpecError
    from slwtune.simulation import parse_landscape

    with pytest.raises(SpecError) as err:
        parse_landscape("race=maybe")
    assert err.value.problems[0]["loc"] == "--simulate"


def test_a_run_without_slw_shows_no_slw_knobs_in_mlflow():
    from slwtune import tracking

    spec = tiny()
    off = spec.without_slw()
    assert tracking.knob_tags(off) == {M.TAG_SLW_ENABLED: "false"}
    params = tracking.run_params(off)
    assert params["slw.enabled"] is False and "slw.start_length" not in params and "slw.duration_steps" not in params
    on = tracking.knob_tags(spec.with_slw(8, 4))
    assert on == {M.TAG_SLW_ENABLED: "true", M.TAG_START_LENGTH: 8, M.TAG_DURATION_STEPS: 4}
    assert tracking.run_params(spec)["slw.start_length"] == 8


def test_max_tokens_stops_a_run_at_a_token_count_and_keeps_the_full_runs_lr_schedule():
    from slwtune.sessions import LocalSession
    from slwtune.train_loop import RunOptions, train_loop
    from slwtune.tuning.local import StepRecorder

    spec = tiny().with_slw(8, 4)
    full, cut = StepRecorder(), StepRecorder()
    train_loop(spec, RunOptions(max_steps=12, on_step=full), LocalSession())
    last = train_loop(spec, RunOptions(max_tokens=1000, on_step=cut), LocalSession())
    assert last[M.TRAIN_TOKENS] >= 1000 and cut.rows[-2][M.TRAIN_TOKENS] < 1000 and last[M.DONE]
    assert M.VAL_LOSS in last  # the segment ends with an evaluation (the race's shared milestone)
    n = len(cut.rows)
    assert [r[M.TRAIN_LR] for r in cut.rows] == [r[M.TRAIN_LR] for r in full.rows[:n]]


def test_a_crashed_segment_runs_once_more_before_the_arm_loses():
    spec = tiny()
    arms = {ARM_SLW: Arm(ARM_SLW, 8, 4, "/s", 512, tokens=512), ARM_BASELINE: Arm(ARM_BASELINE, 32, 0, "/b", 512,
                                                                                   tokens=512)}
    calls = []

    def runner(arms_, until, index):
        calls.append((index, [a.name for a in arms_]))
        for arm in arms_:
            crash = arm.slw and len(calls) == 1  # the SLW arm's first attempt crashes
            R.update_arm(arm, [] if crash else [{M.TRAIN_TOKENS: until, M.VAL_LOSS: 5.0, M.VAL_LOSS_SE: 0.1}],
                         None if crash else f"/{arm.name}/{index}", 1.0, "RuntimeError: worker died" if crash else None)

    R.race(spec, arms, runner)
    assert calls[:3] == [(1, [ARM_SLW, ARM_BASELINE]), (1, [ARM_SLW]), (2, [ARM_SLW, ARM_BASELINE])]
    assert not arms[ARM_SLW].failed and arms[ARM_SLW].checkpoint == f"/slw/{calls[-1][0]}"


def test_an_arm_that_crashes_twice_loses():
    spec = tiny()
    arms = {ARM_SLW: Arm(ARM_SLW, 8, 4, "/s", 512, tokens=512), ARM_BASELINE: Arm(ARM_BASELINE, 32, 0, "/b", 512,
                                                                                   tokens=512)}

    def runner(arms_, until, index):
        for arm in arms_:
            R.update_arm(arm, [{M.TRAIN_TOKENS: until, M.VAL_LOSS: 5.0, M.VAL_LOSS_SE: 0.1}], None, 1.0,
                         "RuntimeError: worker died" if arm.slw else None)

    d = R.race(spec, arms, runner)
    assert d.winner == ARM_BASELINE and d.rule == R.RULE_DIVERGED and arms[ARM_SLW].segments == 2


def test_the_drivers_segment_runs_each_arm_as_a_train_run_and_reads_its_reports_back(monkeypatch, tmp_path):
    import json
    from pathlib import Path

    import slwtune.train as T

    made = []

    def make_trainer(spec, options, name, storage):
        made.append((spec.slw.enabled, options.init_checkpoint, options.max_tokens, name))
        return options

    def fit_and_summarize(options):  # what rank 0's trace holds after a segment
        trace = Path(options.trace_dir)
        trace.mkdir(parents=True)
        rows = [{M.TRAIN_TOKENS: t, M.VAL_LOSS: 5.0, M.VAL_LOSS_SE: 0.1, M.VERDICT: M.STABLE}
                for t in (options.max_tokens - 256, options.max_tokens)]
        (trace / "rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"verdict": M.STABLE, "reason": "", "checkpoint": str(trace / "ckpt")}

    monkeypatch.setattr(T, "make_trainer", make_trainer)
    monkeypatch.setattr(T, "fit_and_summarize", fit_and_summarize)
    arms = [Arm(ARM_SLW, 8, 4, "/probe/slw", 512, tokens=512), Arm(ARM_BASELINE, 32, 0, "/probe/base", 512,
                                                                   tokens=512)]
    race_runs.run_race_round(tiny(), arms, 2048, 1, job_id="j", storage=str(tmp_path), mlflow_uri=None,
                     trace_root=str(tmp_path))
    assert [(m[0], m[1], m[2]) for m in made] == [(True, "/probe/slw", 2048), (False, "/probe/base", 2048)]
    assert all(f"race-{a.name}-seg1" in m[3] for a, m in zip(arms, made))
    for arm in arms:
        assert arm.points == [[1792, 5.0, 0.1], [2048, 5.0, 0.1]] and arm.tokens == 2048 and arm.segments == 1
        assert arm.checkpoint.startswith(str(tmp_path / "race" / f"{arm.name}-seg1"))


def test_a_race_over_the_whole_run_leaves_the_full_run_its_last_evaluation():
    spec = tiny(race_max_fraction=1.0)
    last_eval = spec.run.eval_every_steps * spec.data.batch_size * spec.slw.full_length
    assert spec.race_tokens() == spec.budget.train_tokens - last_eval
    assert R.segment_milestones(512, spec)[-1] == spec.race_tokens()


def test_the_t_cap_never_leaves_the_paper_search_an_interval_narrower_than_its_resolution():
    spec = tiny(strategy="paper", duration_min=4, duration_max=64, resolution=16, race_max_fraction=0.3)
    fitted, note = spec.fitted_to_run()
    assert spec.duration_cap() < 4 + 16  # the bare cap would leave less than one resolution
    assert fitted.tuning.duration_max == 4 + 16 and "capped" in note
