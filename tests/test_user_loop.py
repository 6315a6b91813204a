"""Your own training function (`slwtune.user_loop`): the TrainContext's verdicts, stops and reports
in-process (LocalSession), the example package as a probe and as a full run continuing it, and
the entrypoint checks."""

import json
import math

import pytest

import slwtune
from slwtune import metrics as M
from slwtune.errors import SlwtuneError, SpecError
from slwtune.pacing import make_pacing
from slwtune.sessions import LocalSession
from slwtune.spec import load_spec, parse_spec
from slwtune.train_loop import RunOptions
from slwtune.user_loop import (STATE_FILE, StopTraining, TrainContext, entrypoint_of, load_entrypoint,
                               run_user_function)

EXAMPLE_SPEC = "examples/nanogpt_slw/spec.yaml"
REPORT_KEYS = {M.STEP, M.TRAIN_TOKENS, M.VERDICT, M.VERDICT_CODE, M.REASON, M.DONE, M.EARLY, M.MAX_LOSS_RATIO,
               M.BEST_VAL_PPL, M.WALL_S, M.TRAIN_LOSS, M.TRAIN_LOSS_RATIO, M.TRAIN_SEQLEN}


def spec_for(**over):
    data = {"name": "u", "model": {"entrypoint": "tests.test_user_loop:reports_nothing"},
            "data": {"batch_size": 4},
            "optim": {"lr_warmup_steps": 4},
            "slw": {"start_length": 8, "full_length": 32, "duration_steps": 8, "step_size": 8},
            "budget": {"train_tokens": 4 * 32 * 100},
            "run": {"eval_every_steps": 4, "checkpoint_every_steps": 4, "log_every_steps": 1},
            "tuning": {"probe_steps": 12, "stability": {"ppl_rise_tolerance": 0.05}}}
    for key, value in over.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return parse_spec(data)


def probe_ctx(spec=None, session=None, **options):
    options = {"max_steps": 12, "stop_when_unstable": True, **options}
    return TrainContext(spec or spec_for(), RunOptions(**options), session or LocalSession())


# ---- module-level training functions (entrypoints name them) -------------------------------


def reports_nothing(ctx):
    """Returns without a report."""


def ends_early(ctx):
    """Ends on its own after 3 steps, without an evaluation."""
    for step in range(1, 4):
        if ctx.report(step=step, tokens=step * 128, loss=3.0 - 0.1 * step):
            return


def ignores_the_stop(ctx):
    """Keeps reporting whatever report says (a loop that forgot to check)."""
    for step in range(1, 100):
        ctx.report(step=step, tokens=step * 128, loss=2.0, val_loss=2.0 if step % 4 == 0 else None)


def not_a_function():
    return None


NOT_CALLABLE = 3


# ---- TrainContext -------------------------------------------------------------------------------


def test_context_carries_knobs_window_budget_and_warmup():
    spec = spec_for()
    ctx = probe_ctx(spec)
    assert (ctx.knobs.start_length, ctx.knobs.duration_steps, ctx.knobs.enabled) == (8, 8, True)
    assert ctx.max_steps == 12 and ctx.is_probe and ctx.train_tokens == spec.budget.train_tokens
    assert [ctx.slw.length_at(t) for t in (1, 8)] == [make_pacing(spec.slw)(t) for t in (1, 8)]
    assert (ctx.rank, ctx.world_size, ctx.device.type, ctx.resume_from) == (0, 1, "cpu", None)
    control = probe_ctx(spec.without_slw())
    assert control.slw is None and not control.knobs.enabled and control.length_at(1) == 32
    full = TrainContext(spec, RunOptions(), LocalSession())
    assert full.max_steps is None and not full.is_probe


def test_only_evaluation_steps_and_the_last_step_reach_the_session():
    session = LocalSession()
    ctx = probe_ctx(session=session)
    stops = []
    for step in range(1, 13):
        val = 3.0 - 0.1 * step if ctx.eval_due(step, step * 100) else None
        stops.append(ctx.report(step=step, tokens=step * 100, loss=3.0 - 0.05 * step, val_loss=val, lr=1e-3))
    assert stops == [False] * 11 + [True] and ctx.should_stop  # the window ends at step 12
    assert [r[M.STEP] for r in session.reports] == [4, 8, 12]
    assert all(REPORT_KEYS <= set(r) for r in session.reports)
    last = session.reports[-1]
    assert last[M.DONE] and not any(r[M.DONE] for r in session.reports[:-1])
    assert last[M.VERDICT] == M.STABLE and last[M.TRAIN_TOKENS] == 1200 and last[M.MLFLOW_UNSENT] == 0
    assert last[M.VAL_PPL] == pytest.approx(M.perplexity(3.0 - 1.2))
    assert last[M.BEST_VAL_PPL] == pytest.approx(M.perplexity(3.0 - 1.2))
    assert last[M.TRAIN_SEQLEN] == 32 and session.reports[0][M.TRAIN_SEQLEN] == ctx.slw.length_at(4)
    assert last[M.TRAIN_LR] == 1e-3 and M.TOKENS_PER_S in last


def test_a_rising_val_ppl_stops_a_probe_as_fluctuating():
    session = LocalSession()
    ctx = probe_ctx(session=session)
    for step in range(1, 5):
        assert not ctx.report(step=step, tokens=step * 100, loss=2.0, val_loss=2.0 if step == 4 else None)
    for step in range(5, 8):
        assert not ctx.report(step=step, tokens=step * 100, loss=2.0)
    assert not ctx.report(step=8, tokens=800, loss=2.0, val_loss=2.5)  # ppl up 65% > 5%: once is not yet
    assert ctx.report(step=9, tokens=900, loss=2.0, val_loss=2.5)  # twice in a row: fluctuating
    last = session.reports[-1]
    assert last[M.VERDICT] == M.FLUCTUATING and last[M.DONE] and "val ppl" in last[M.REASON]
    assert last[M.VERDICT_CODE] == M.VERDICT_CODES[M.FLUCTUATING]


def test_the_full_run_goes_on_when_fluctuating_but_stops_when_diverged():
    session = LocalSession()
    ctx = TrainContext(spec_for(), RunOptions(), session)  # full run: stop_when_unstable off
    assert not ctx.report(step=4, tokens=400, loss=2.0, val_loss=2.0)
    assert not ctx.report(step=8, tokens=800, loss=2.0, val_loss=2.5)
    assert not ctx.report(step=9, tokens=900, loss=2.0, val_loss=2.5)
    assert session.reports[-1][M.VERDICT] == M.FLUCTUATING and not ctx.should_stop
    assert ctx.report(step=10, tokens=1000, loss=math.nan)  # not an eval step: the stop is still reported
    last = session.reports[-1]
    assert last[M.STEP] == 10 and last[M.VERDICT] == M.DIVERGED and "non-finite" in last[M.REASON]
    assert last[M.TRAIN_LOSS] == M.NONFINITE_STANDIN  # reports stay finite; the verdict says why


def test_a_loss_spike_that_persists_diverges_a_probe():
    session = LocalSession()
    ctx = probe_ctx(session=session)
    assert not ctx.report(step=1, tokens=100, loss=2.0)
    for step in range(2, 6):  # ratio 2 > 1.5, four steps in a row: a spike, not yet a divergence
        assert not ctx.report(step=step, tokens=step * 100, loss=4.0, grad_norm=9.0)
    assert ctx.report(step=6, tokens=600, loss=4.0, grad_norm=9.0)  # the fifth (spike_patience)
    last = session.reports[-1]
    assert last[M.VERDICT] == M.DIVERGED and last[M.EARLY] and last[M.MAX_LOSS_RATIO] == 2.0
    assert last[M.SPIKE_COUNT] == 1 and last[M.SPIKE_STEP] == 2
    assert last[M.TRAIN_GRAD_NORM] == 9.0


def test_the_token_budget_ends_the_full_run():
    spec = spec_for()
    session = LocalSession()
    ctx = TrainContext(spec, RunOptions(), session)
    assert not ctx.report(step=1, tokens=spec.budget.train_tokens - 1, loss=2.0)
    assert ctx.is_last_step(2, spec.budget.train_tokens) and ctx.eval_due(2, spec.budget.train_tokens)
    assert ctx.report(step=2, tokens=spec.budget.train_tokens, loss=2.0)
    assert session.reports[-1][M.DONE]


def test_a_report_after_the_stop_raises_stop_training():
    ctx = probe_ctx()
    ctx.report(step=1, tokens=100, loss=2.0)
    assert ctx.report(step=2, tokens=200, loss=math.nan)  # diverged at once: the run stops
    with pytest.raises(StopTraining, match="stop at step 2"):
        ctx.report(step=3, tokens=300, loss=2.0)


def test_steps_must_increase():
    ctx = probe_ctx()
    ctx.report(step=3, tokens=300, loss=2.0)
    with pytest.raises(ValueError, match="step=3, tokens=300"):
        ctx.report(step=3, tokens=400, loss=2.0)


def test_a_checkpoint_needs_a_report_to_ray():
    ctx = probe_ctx()
    assert not ctx.checkpoint_due(3, 300) and ctx.checkpoint_due(4, 400) and ctx.checkpoint_due(12, 1200)
    with pytest.raises(ValueError, match="checkpoint_due"):
        ctx.report(step=3, tokens=300, loss=2.0, checkpoint_dir="/nowhere")


def test_checkpoints_carry_the_verdict_and_a_resumed_run_keeps_it(tmp_path):
    session = LocalSession(checkpoint_root=str(tmp_path / "kept"))
    ctx = probe_ctx(session=session)
    ckpt = tmp_path / "mine"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"w")
    ctx.report(step=1, tokens=100, loss=2.0)
    ctx.report(step=4, tokens=400, loss=1.9, val_loss=2.0, checkpoint_dir=str(ckpt))
    kept = tmp_path / "kept" / "step_00000004"
    assert (kept / "weights.bin").read_bytes() == b"w"
    assert json.loads((kept / STATE_FILE).read_text())["step"] == 4

    resumed = TrainContext(spec_for(), RunOptions(), LocalSession(resume_dir=str(kept)))
    assert resumed.resume_from == str(kept)
    assert resumed.monitor.best_val_ppl == pytest.approx(M.perplexity(2.0))  # the verdict goes on from there
    resumed.report(step=8, tokens=800, loss=1.9, val_loss=2.5)
    resumed.report(step=9, tokens=900, loss=1.9, val_loss=2.5)  # risen twice against the restored best
    assert resumed.monitor.verdict.status == M.FLUCTUATING
    assert resumed.monitor.verdict.reason.startswith(f"val ppl {M.perplexity(2.5):.1f} at step 8")


def test_init_checkpoint_is_the_resume_point_when_ray_has_none(tmp_path):
    ctx = TrainContext(spec_for(), RunOptions(init_checkpoint=str(tmp_path)), LocalSession())
    assert ctx.resume_from == str(tmp_path)
    ray_wins = TrainContext(spec_for(), RunOptions(init_checkpoint="/x"), LocalSession(resume_dir=str(tmp_path)))
    assert ray_wins.resume_from == str(tmp_path)


def test_adam_variance_is_logged_when_the_optimizer_is_given():
    import torch

    session = LocalSession()
    ctx = probe_ctx(spec_for(run__stats_every_steps=4), session=session)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    opt.step()
    ctx.report(step=4, tokens=400, loss=2.0, val_loss=2.0, optimizer=opt)
    row = session.reports[-1]
    assert row[M.ADAM_VAR_MAX] == pytest.approx((1 - 0.999) * 9.0) and row[M.ADAM_VAR_L1] > row[M.ADAM_VAR_MAX]


def two_ranks(monkeypatch, peer: list[float]) -> LocalSession:
    """A session of rank 0 of 2 whose all-reduce adds the other rank's [loss, val, grad, has val, has grad]."""
    import torch

    import slwtune.user_loop

    def add_peer(t, world):
        return t.add_(torch.tensor(peer, dtype=t.dtype))

    monkeypatch.setattr(slwtune.user_loop, "all_reduce_sum_", add_peer)
    session = LocalSession()
    session.world_size = 2
    return session


def test_signals_are_averaged_over_ranks_so_every_rank_judges_the_same(monkeypatch):
    session = two_ranks(monkeypatch, [4.0, 5.0, 3.0, 1.0, 1.0])
    ctx = probe_ctx(session=session)
    ctx.report(step=4, tokens=400, loss=2.0, val_loss=3.0, grad_norm=1.0)
    row = session.reports[-1]
    assert (row[M.TRAIN_LOSS], row[M.VAL_LOSS], row[M.TRAIN_GRAD_NORM]) == (3.0, 4.0, 2.0)


def test_a_val_loss_on_some_ranks_only_is_an_error_not_a_hang(monkeypatch):
    ctx = probe_ctx(session=two_ranks(monkeypatch, [4.0, 0.0, 3.0, 0.0, 1.0]))
    with pytest.raises(SlwtuneError, match="val_loss given on 1 of 2 ranks"):
        ctx.report(step=4, tokens=400, loss=2.0, val_loss=3.0, grad_norm=1.0)


# ---- run_user_function: the worker side of model.entrypoint --------------------------------------


def test_a_function_that_never_reports_is_an_error_naming_the_entrypoint():
    spec = spec_for()
    with pytest.raises(SlwtuneError, match="tests.test_user_loop:reports_nothing.*without calling ctx.report"):
        run_user_function(spec, RunOptions(max_steps=12), LocalSession())


def test_a_function_that_ends_on_its_own_gets_a_closing_report():
    session = LocalSession()
    spec = spec_for(model__entrypoint="tests.test_user_loop:ends_early")
    last = run_user_function(spec, RunOptions(max_steps=12, stop_when_unstable=True), session)
    assert [r[M.STEP] for r in session.reports] == [3] and last[M.DONE] and last[M.VERDICT] == M.STABLE


def test_a_function_that_ignores_the_stop_ends_at_its_next_report():
    session = LocalSession()
    spec = spec_for(model__entrypoint="tests.test_user_loop:ignores_the_stop")
    last = run_user_function(spec, RunOptions(max_steps=12, stop_when_unstable=True), session)
    assert last[M.STEP] == 12 and last[M.DONE] and [r[M.STEP] for r in session.reports] == [4, 8, 12]


def test_the_example_as_a_probe_and_as_the_full_run_continuing_it(tmp_path):
    spec = load_spec(EXAMPLE_SPEC, ["budget.train_tokens=8192", "tuning.probe_steps=16"])
    probe = LocalSession(checkpoint_root=str(tmp_path / "probe"))
    last = run_user_function(spec, RunOptions(max_steps=16, stop_when_unstable=True), probe)
    pacing = make_pacing(spec.slw)
    assert [r[M.STEP] for r in probe.reports] == [8, 16] and last[M.DONE] and last[M.VERDICT] == M.STABLE
    assert [r[M.TRAIN_SEQLEN] for r in probe.reports] == [pacing(8), pacing(16)]
    assert last[M.TRAIN_TOKENS] == 8 * sum(pacing(t) for t in range(1, 17))  # rows x length, every step
    assert last[M.VAL_PPL] < 0.5 * math.exp(math.log(256))  # it learns: far below a uniform guess
    assert probe.checkpoints == [str(tmp_path / "probe" / "step_00000016")]

    full = LocalSession()
    done = run_user_function(spec, RunOptions(init_checkpoint=probe.checkpoints[0]), full)
    assert full.reports[0][M.STEP] == 24  # continued after the probe's 16 steps, not from 0
    assert done[M.DONE] and done[M.TRAIN_TOKENS] >= spec.budget.train_tokens
    assert done[M.TRAIN_TOKENS] - 8 * 64 < spec.budget.train_tokens  # no step past the budget


def test_the_example_as_the_control_probe_trains_at_full_length():
    spec = load_spec(EXAMPLE_SPEC).without_slw()
    session = LocalSession()
    run_user_function(spec, RunOptions(max_steps=8, stop_when_unstable=True), session)
    assert [r[M.TRAIN_SEQLEN] for r in session.reports] == [64] and session.reports[0][M.TRAIN_TOKENS] == 8 * 64 * 8


# ---- entrypoints -------------------------------------------------------------------------------------


def test_load_entrypoint_gives_the_function():
    from examples.nanogpt_slw.train import train

    assert load_entrypoint("examples.nanogpt_slw.train:train") is train
    assert load_entrypoint(load_spec(EXAMPLE_SPEC).model.entrypoint) is train


@pytest.mark.parametrize("entrypoint, msg", [
    ("no_such_pkg_xyz.mod:train", "cannot import 'no_such_pkg_xyz.mod'"),
    ("tests.test_user_loop:missing", "has no 'missing'"),
    ("tests.test_user_loop:NOT_CALLABLE", "is a int, not a function"),
])
def test_load_entrypoint_errors_name_the_field_and_value(entrypoint, msg):
    with pytest.raises(SpecError, match=msg) as err:
        load_entrypoint(entrypoint)
    assert err.value.problems[0]["loc"] == "model.entrypoint" and err.value.problems[0]["value"] == entrypoint


def test_entrypoint_of_a_module_level_function():
    assert entrypoint_of(not_a_function) == "tests.test_user_loop:not_a_function"


def test_entrypoint_of_refuses_what_workers_cannot_import():
    def local(ctx):
        pass

    with pytest.raises(SlwtuneError, match="not a module-level function"):
        entrypoint_of(local)
    with pytest.raises(SlwtuneError, match="not a module-level function"):
        entrypoint_of(lambda ctx: None)
    local.__module__ = "__main__"
    local.__qualname__ = "train"
    with pytest.raises(SlwtuneError, match="defined in __main__"):
        entrypoint_of(local)


def test_tune_function_runs_the_job_with_the_entrypoint_set(monkeypatch, tmp_path):
    import slwtune.driver

    seen = {}

    def fake_run_job(spec, out_dir, **kw):
        seen.update(spec=spec, out_dir=out_dir, kw=kw)
        return {"outcome": M.OUTCOME_DONE}

    monkeypatch.setattr(slwtune.driver, "run_job", fake_run_job)
    report = slwtune.tune_function(ends_early, EXAMPLE_SPEC, out_dir=tmp_path, job_id="j1", full_run=False)
    assert report == {"outcome": M.OUTCOME_DONE}
    assert seen["spec"].model.entrypoint == "tests.test_user_loop:ends_early"
    assert seen["spec"].name == "nanogpt-slw" and seen["out_dir"] == tmp_path
    assert seen["kw"] == {"job_id": "j1", "full_run": False}
    slwtune.tune_function(ends_early, {"name": "d", "model": {"entrypoint": "x.y:z"}}, out_dir=tmp_path)
    assert seen["spec"].model.entrypoint == "tests.test_user_loop:ends_early"  # the function's, not the dict's


def test_run_job_checks_the_entrypoint_before_anything_starts(tmp_path):
    from slwtune.driver import run_job

    spec = spec_for(model__entrypoint="no_such_pkg_xyz:train")
    with pytest.raises(SpecError, match="model.entrypoint='no_such_pkg_xyz:train'"):
        run_job(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
