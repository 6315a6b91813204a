"""slwtune.tuning.local: the driver's probe phase in-process (no Ray), and the loop's on_step hook."""

from pathlib import Path

from slwtune import metrics as M
from slwtune.spec import parse_spec
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning.local import CPU_S, LocalTuning, StepRecorder, run_probe, tune_locally
from slwtune.tuning.results import ProbeResult
from slwtune.tuning.strategies import Probe, choose_paper_rule

PROBE_STEPS = 8


def tiny_spec(**tuning):
    return parse_spec({
        "name": "local",
        "model": {"preset": "tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 32},
        "data": {"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 4},
        "optim": {"lr": 3e-3, "lr_warmup_steps": 2},
        "slw": {"start_length": 8, "full_length": 32, "duration_steps": 8, "step_size": 8},
        "budget": {"train_tokens": 4 * 32 * 20},
        "run": {"eval_every_steps": 2, "eval_batches": 1, "stats_every_steps": 2, "checkpoint_every_steps": 1000},
        "tuning": {"strategy": "grid", "start_lengths": [8], "durations": [4, 12], "probe_steps": PROBE_STEPS,
                   **tuning},
    })


def test_on_step_sees_every_step_once_in_order():
    recorder = StepRecorder()
    train_loop(tiny_spec(), RunOptions(max_steps=6, on_step=recorder), LocalSession())
    assert [r[M.STEP] for r in recorder.rows] == [1, 2, 3, 4, 5, 6]
    assert all(M.TRAIN_LOSS_RATIO in r and M.TRAIN_TOKENS in r for r in recorder.rows)
    # Adam stats at step 1 and every stats_every_steps (2)
    assert [r[M.STEP] for r in recorder.rows if M.ADAM_VAR_MAX in r] == [1, 2, 4, 6]
    walls, cpus = [r[M.WALL_S] for r in recorder.rows], [r[CPU_S] for r in recorder.rows]
    assert walls == sorted(walls) and cpus == sorted(cpus)


def test_tune_locally_runs_the_search_and_the_control_in_round_one():
    spec = tiny_spec()
    tuning = tune_locally(spec)
    assert sorted(r.duration_steps for r in tuning.results) == [4, 12]
    assert all(r.slw and r.round == 1 for r in tuning.results)
    assert tuning.control is not None and not tuning.control.slw
    assert tuning.control.start_length == spec.slw.full_length
    # the chosen probe is what the grid's own rule picks from these outcomes
    assert tuning.chosen == choose_paper_rule(r.outcome() for r in tuning.results)
    # the cost counts every probe, the control too
    assert tuning.tokens == sum(r.tokens for r in tuning.results) + tuning.control.tokens
    assert tuning.wall_s > 0 and tuning.total_cpu_s > 0
    for result in tuning.probes:
        assert result.verdict in (M.STABLE, M.FLUCTUATING, M.DIVERGED)
        assert 1 <= result.steps <= PROBE_STEPS
        assert [r[M.STEP] for r in tuning.rows[result.probe]] == list(range(1, result.steps + 1))
        assert tuning.reports[result.probe][-1][M.STEP] == result.steps
        assert result.curve[-1][0] == result.steps  # [step, val ppl, loss ratio, tokens]
    # the control trains at full length, an SLW probe starts short
    assert tuning.rows[tuning.control.probe][0][M.TRAIN_SEQLEN] == 32
    assert tuning.rows[tuning.results[0].probe][0][M.TRAIN_SEQLEN] == 8
    assert "baseline_wins" in tuning.comparison


def test_no_control_probe_when_turned_off():
    tuning = tune_locally(tiny_spec(control_probe=False))
    assert tuning.control is None and len(tuning.probes) == 2


def test_a_probe_that_crashes_is_failed_not_unstable():
    spec = parse_spec({**tiny_spec().to_dict(), "data": {**tiny_spec().data.model_dump(), "path": "/no/such/data"}})
    result = run_probe(spec, Probe(8, 4), round_index=1)
    assert result.verdict == M.FAILED
    assert "DataError" in result.reason and result.tokens == 0


def test_kept_checkpoints_let_a_full_run_continue_from_its_probe():
    spec = tiny_spec(durations=[12])
    tuning = tune_locally(spec, keep_checkpoints=True)
    try:
        winner = next(r for r in tuning.results if r.probe == tuning.chosen) if tuning.chosen else tuning.results[0]
        assert winner.checkpoint and Path(winner.checkpoint).is_dir()
        session = LocalSession()
        train_loop(spec.with_slw(winner.start_length, winner.duration_steps),
                   RunOptions(init_checkpoint=winner.checkpoint, max_steps=winner.steps + 2), session)
        assert session.reports[0][M.STEP] > winner.steps  # it went on from the probe's step
    finally:
        workdir = tuning.workdir
        tuning.cleanup()
    assert not Path(workdir).exists()


def _result(t: int, verdict: str, val_ppl: float, slw: bool = True) -> ProbeResult:
    return ProbeResult(start_length=8 if slw else 32, duration_steps=t, verdict=verdict, reason="", early=False,
                       best_val_ppl=val_ppl, final_val_ppl=val_ppl, max_loss_ratio=1.0, steps=8, tokens=1000,
                       wall_s=1.0, checkpoint=f"/ckpt/{t}", trial_id="", round=1,
                       curve=[[8, val_ppl, 1.0, 1000]], slw=slw)


def test_full_run_plan_is_the_drivers_rule():
    from slwtune.tuning.report import compare_with_control

    spec = tiny_spec()
    results, control = [_result(12, M.STABLE, 30.0)], _result(0, M.STABLE, 20.0, slw=False)
    wins = LocalTuning(results, control, Probe(8, 12), compare_with_control(results, control))
    assert wins.baseline_wins
    assert wins.full_run_plan(spec) == (True, None, control)  # run_baseline, from the control's checkpoint
    control = _result(0, M.STABLE, 40.0, slw=False)
    loses = LocalTuning(results, control, Probe(8, 12), compare_with_control(results, control))
    assert loses.full_run_plan(spec) == (True, Probe(8, 12), results[0])


def test_tune_locally_runs_the_drivers_race_and_counts_its_tokens():
    from slwtune.tuning.race import ARM_BASELINE, ARM_SLW

    spec = tiny_spec(race_max_fraction=1.0)
    tuning = tune_locally(spec)
    try:
        assert tuning.control.verdict == M.STABLE and tuning.chosen is not None  # seeded: both arms can race
        d = tuning.decision
        assert d["raced"] and d["winner"] in (ARM_SLW, ARM_BASELINE)
        assert tuning.baseline_wins == (d["winner"] == ARM_BASELINE)
        race = sum(a.race_tokens for a in tuning.arms.values())
        assert race == d["race_tokens"] > 0
        assert tuning.tokens == sum(r.tokens for r in tuning.probes) + race
        for name, arm in tuning.arms.items():  # every race step recorded, its time counted from the race's start
            assert tuning.race_reports[name] and tuning.race_rows[name]
            walls = [r[M.WALL_S] for r in tuning.race_rows[name]]
            assert walls == sorted(walls)
        go, knobs, seed = tuning.full_run_plan(spec)
        start = tuning.start_point(knobs, seed)
        assert start == tuning.arms[ARM_SLW if knobs else ARM_BASELINE].checkpoint and Path(start).is_dir()
    finally:
        tuning.cleanup()
