"""The SLW training loop in-process (LocalSession): schedule, tokens, resume, divergence."""

import math

import pytest

from slwtune import metrics as M
from slwtune.pacing import make_pacing
from slwtune.schedule import lr_schedule_from_spec
from slwtune.spec import parse_spec
from slwtune.train_loop import LocalSession, RunOptions, train_loop


def tiny_spec(**over):
    data = {
        "name": "t",
        "model": {"preset": "tiny"},
        "data": {"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 4},
        "optim": {"lr": 3e-3, "lr_warmup_steps": 6},
        "slw": {"start_length": 8, "full_length": 32, "duration_steps": 12, "step_size": 8},
        "budget": {"train_tokens": 4 * 32 * 20},
        "run": {"eval_every_steps": 4, "eval_batches": 1, "stats_every_steps": 2, "checkpoint_every_steps": 4},
    }
    for key, value in over.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return parse_spec(data)


def test_every_step_follows_pacing_and_lr_schedule():
    spec = tiny_spec()
    session = LocalSession()
    train_loop(spec, RunOptions(report_every_steps=1, max_steps=14), session)
    pacing, lr_at = make_pacing(spec.slw), lr_schedule_from_spec(spec)
    tokens, warm = 0, None
    for r in session.reports:
        step = r[M.STEP]
        assert r[M.TRAIN_SEQLEN] == pacing(step)
        assert r[M.TRAIN_LR] == pytest.approx(lr_at(step, tokens, warm))
        tokens += 4 * pacing(step)  # tokens trained on = rows x current length
        assert r[M.TRAIN_TOKENS] == tokens
        if warm is None and step >= spec.optim.lr_warmup_steps:
            warm = tokens
    assert [r[M.STEP] for r in session.reports] == list(range(1, 15))


def test_stops_at_the_token_budget():
    spec = tiny_spec()
    session = LocalSession()
    last = train_loop(spec, RunOptions(), session)
    assert last[M.DONE] and last[M.TRAIN_TOKENS] >= spec.budget.train_tokens
    assert last[M.TRAIN_TOKENS] - 4 * 32 < spec.budget.train_tokens  # no step past the budget
    assert math.isfinite(last[M.VAL_PPL]) and last[M.VERDICT] in ("stable", "fluctuating")


def test_resume_mid_warmup_reproduces_uninterrupted_run(tmp_path):
    spec = tiny_spec()
    full = LocalSession(checkpoint_root=str(tmp_path / "a"))
    train_loop(spec, RunOptions(report_every_steps=1, max_steps=16), full)
    mid = next(c for c in full.checkpoints if c.endswith("step_00000004"))  # inside the LR warmup (6 steps)

    resumed = LocalSession(resume_dir=mid)
    train_loop(spec, RunOptions(report_every_steps=1, max_steps=16), resumed)
    keys = (M.STEP, M.TRAIN_SEQLEN, M.TRAIN_TOKENS, M.TRAIN_LR, M.TRAIN_LOSS)
    expected = [tuple(r[k] for k in keys) for r in full.reports if r[M.STEP] > 4]
    got = [tuple(r[k] for k in keys) for r in resumed.reports]
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    # same data order, RNG and optimizer state: the losses match too
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expected], rel=1e-5)


def test_absurd_lr_diverges_with_reason():
    spec = tiny_spec(optim__lr=1.0, optim__lr_warmup_steps=1, optim__min_lr=1.0)
    session = LocalSession()
    last = train_loop(spec, RunOptions(), session)
    assert last[M.VERDICT] == "diverged"
    assert last[M.REASON]
    assert last[M.DONE]
    # it stopped at the report that shows the verdict, far before the budget
    assert last[M.TRAIN_TOKENS] < spec.budget.train_tokens
    assert session.reports[-1][M.VERDICT] == "diverged"
    assert all(r[M.VERDICT] != "diverged" for r in session.reports[:-1])


def test_reports_are_finite_numbers():
    spec = tiny_spec(optim__lr=1.0, optim__lr_warmup_steps=1, optim__min_lr=1.0)
    session = LocalSession()
    train_loop(spec, RunOptions(), session)
    for r in session.reports:
        for key in M.ALL:
            if key in r:
                assert math.isfinite(r[key]), key


def test_probe_stops_on_fluctuation_full_run_does_not():
    from types import SimpleNamespace

    from slwtune.train_loop import should_stop

    fluct, div = SimpleNamespace(status="fluctuating"), SimpleNamespace(status="diverged")
    assert should_stop(fluct, RunOptions(stop_when_unstable=True))
    assert not should_stop(fluct, RunOptions())
    assert should_stop(div, RunOptions())


def test_reshape_mode_trains_on_all_tokens():
    spec = tiny_spec(slw__mode="reshape")
    session = LocalSession()
    train_loop(spec, RunOptions(report_every_steps=1, max_steps=3), session)
    # at step 1 the length is 8: 4 windows of 32 tokens re-chunked into 16 rows of 8
    assert session.reports[0][M.TRAIN_TOKENS] == 4 * 32
