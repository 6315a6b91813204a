"""The SLW training loop in-process (LocalSession): schedule, tokens, resume, divergence."""

import math

import pytest

from slwtune import metrics as M
from slwtune.pacing import make_pacing
from slwtune.schedule import lr_schedule_from_spec
from slwtune.spec import parse_spec
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop


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


# ---- two DDP workers in-process (gloo) -------------------------------------------------


class _RankSession:
    """A DDP rank on CPU for the test: keeps its reports like LocalSession."""

    def __init__(self, rank: int, world_size: int):
        import torch

        self.rank, self.world_size, self.device = rank, world_size, torch.device("cpu")
        self.reports: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))

    def checkpoint_dir(self) -> None:
        return None


def _ddp_rank(rank: int, world: int, store: str, spec_dict: dict, out: str, steps: int) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        session = _RankSession(rank, world)
        train_loop(parse_spec(spec_dict), RunOptions(report_every_steps=1, max_steps=steps), session)
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(session.reports, f)
    finally:
        dist.destroy_process_group()


def run_two_ranks(spec, tmp_path, steps: int) -> list[list[dict]]:
    """Run the loop on 2 gloo ranks in forked processes; returns each rank's reports."""
    import json
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # no re-import of torch in the children: seconds, not tens
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, str(tmp_path / "store"), spec.to_dict(), str(tmp_path),
                                                 steps)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_one_and_two_workers_log_the_same_adam_statistics(tmp_path):
    # every DDP rank holds the whole optimizer state: its L1 must not grow with the worker count
    one = tiny_spec()
    two = tiny_spec(resources__num_workers=2)
    single = LocalSession()
    train_loop(one, RunOptions(report_every_steps=1, max_steps=4), single)
    rank0, rank1 = run_two_ranks(two, tmp_path, steps=4)

    def column(reports, key):  # {step: value} of the reports that carry `key`
        return {r[M.STEP]: r[key] for r in reports if key in r}

    assert sorted(column(single.reports, M.ADAM_VAR_L1)) == [1, 2, 4]  # stats_every_steps=2, and step 1
    for key in (M.ADAM_VAR_L1, M.ADAM_VAR_MAX, M.TRAIN_LOSS, M.TRAIN_TOKENS):
        expected = column(single.reports, key)
        assert column(rank0, key) == pytest.approx(expected, rel=1e-4), key  # same data, same state
        assert column(rank1, key) == pytest.approx(expected, rel=1e-4), key


# ---- torch.compile under SLW --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["truncate", "reshape"])
def test_compiled_slw_uses_a_handful_of_graphs_and_matches_eager(mode):
    import torch._dynamo
    from torch._dynamo.utils import counters

    over = dict(slw__full_length=80, slw__duration_steps=20, slw__mode=mode, budget__train_tokens=10**9)
    eager = LocalSession()
    train_loop(tiny_spec(**over), RunOptions(report_every_steps=1, max_steps=24), eager)
    torch._dynamo.reset()
    counters.clear()
    compiled = LocalSession()
    train_loop(tiny_spec(run__compile=True, **over), RunOptions(report_every_steps=1, max_steps=24), compiled)

    lengths = [r[M.TRAIN_SEQLEN] for r in compiled.reports]
    assert len(lengths) == 24 and len(set(lengths)) >= 8  # SLW visits every multiple of 8 up to 80
    # The bound is "a handful" (<= 3). We hold one: the training graph, dynamic in the length
    # from the first step (no static graph for the first length), the full length included;
    # evaluation runs uncompiled.
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert [r[M.TRAIN_LOSS] for r in compiled.reports] == pytest.approx([r[M.TRAIN_LOSS] for r in eager.reports],
                                                                        rel=1e-4)
    assert [r[M.VAL_LOSS] for r in compiled.reports] == pytest.approx([r[M.VAL_LOSS] for r in eager.reports],
                                                                      rel=1e-4)
