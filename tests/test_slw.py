"""slwtune.slw: SeqLengthWarmup for your own loop, a facade over pacing, batching and schedule."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slwtune.errors import SpecError
from slwtune.pacing import make_pacing
from slwtune.schedule import LRSchedule, TokenClock
from slwtune.slw import SeqLengthWarmup
from slwtune.spec import JobSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "slw_own_loop.py"
HEAVY = ("ray", "mlflow", "optuna", "service", "fastapi", "uvicorn", "sqlalchemy", "transformers")


def test_fixed_linear_golden_vector_through_the_facade():
    slw = SeqLengthWarmup(start_length=2, full_length=10, duration_steps=8, step_size=2)
    assert [slw.length_at(t) for t in range(1, 11)] == [2, 4, 4, 6, 6, 8, 8, 10, 10, 10]


def test_fixed_discrete_golden_vector_through_the_facade():
    slw = SeqLengthWarmup(1, 5, 8, 1, "fixed_discrete", lengths=[1, 2, 3, 4, 5], max_steps=[2, 4, 6, 8])
    assert [slw.length_at(t) for t in range(1, 10)] == [1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_from_spec_gives_the_lengths_of_slwtunes_own_loop():
    spec = JobSpec.model_validate({"slw": {"start_length": 16, "full_length": 128, "duration_steps": 50,
                                           "step_size": 8, "pacing": "fixed_root", "root_degree": 2.0}})
    slw, loop = SeqLengthWarmup.from_spec(spec), make_pacing(spec.slw)
    assert [slw.length_at(t) for t in range(1, 80)] == [loop(t) for t in range(1, 80)]
    assert slw.pacing == "fixed_root" and slw.steps_to_full_length() == 50


def test_custom_pacing_callable_is_used_and_checked():
    slw = SeqLengthWarmup(8, 64, 10, 8, pacing=lambda t: min(64, 8 * t))
    assert [slw.length_at(t) for t in (1, 3, 9)] == [8, 24, 64]
    bad = SeqLengthWarmup(8, 64, 10, 8, pacing=lambda t: 65)
    with pytest.raises(ValueError, match="length=65"):
        bad.length_at(1)


@pytest.mark.parametrize("kwargs, loc", [
    (dict(start_length=6, full_length=64, duration_steps=10, step_size=8), "start_length"),
    (dict(start_length=128, full_length=64, duration_steps=10, step_size=8), "start_length"),
    (dict(start_length=8, full_length=64, duration_steps=0, step_size=8), "duration_steps"),
    (dict(start_length=8, full_length=64, duration_steps=10, step_size=8, pacing="cosine"), "pacing"),
    (dict(start_length=8, full_length=64, duration_steps=10, step_size=8, mode="pad"), "mode"),
    (dict(start_length=1, full_length=5, duration_steps=8, step_size=1, pacing="fixed_discrete",
          lengths=[1, 2, 3], max_steps=[2]), "max_steps"),
])
def test_invalid_knobs_name_the_argument_and_value(kwargs, loc):
    with pytest.raises(SpecError) as err:
        SeqLengthWarmup(**kwargs)
    assert loc in [p["loc"] for p in err.value.problems]


def test_step_zero_rejected():
    with pytest.raises(ValueError, match="step=0"):
        SeqLengthWarmup(8, 64, 10).length_at(0)


def test_apply_truncates_windows_cutting_before_the_split():
    slw = SeqLengthWarmup(8, 32, 4, 8)
    windows = torch.arange(2 * 33).reshape(2, 33)  # (B, e+1)
    x, y, n = slw.apply(windows, 1)
    assert x.shape == y.shape == (2, 8) and n == 16
    assert torch.equal(y, windows[:, 1:9])  # the last kept input's target is the next token


def test_apply_truncates_aligned_pairs():
    slw = SeqLengthWarmup(8, 32, 4, 8)
    x, y = torch.arange(64).reshape(2, 32), torch.arange(64).reshape(2, 32) + 1
    xs, ys, n = slw.apply((x, y), 2)  # length 16
    assert torch.equal(xs, x[:, :16]) and torch.equal(ys, y[:, :16]) and n == 32


def test_apply_reshape_keeps_every_token_and_counts_them_exactly():
    slw = SeqLengthWarmup(8, 32, 4, 8, mode="reshape")
    x = torch.arange(64).reshape(2, 32)
    xs, ys, n = slw.apply((x, x + 1), 1)  # length 8: 2 rows -> 8 rows
    assert xs.shape == (8, 8) and n == 64
    assert torch.equal(xs.reshape(-1), x.reshape(-1)) and torch.equal(ys, xs + 1)
    assert slw.apply((x, x + 1), 4).inputs.shape == (2, 32)  # full length: unchanged


def test_apply_dict_cuts_every_sequence_tensor_together():
    slw = SeqLengthWarmup(8, 16, 4, 8)
    ids = torch.arange(32).reshape(2, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 4:] = 0  # row 1 is padded after 4 tokens
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.clone(),
             "mask4d": torch.ones(2, 1, 16, 16), "row_id": torch.tensor([7, 9]), "note": "kept"}
    out, tokens = slw.apply_dict(batch, 1)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape == (2, 8)
    assert out["mask4d"].shape == (2, 1, 8, 8)
    assert torch.equal(out["row_id"], batch["row_id"]) and out["note"] == "kept"
    assert tokens == 8 + 4  # real tokens, not rows * L


def test_apply_dict_reshape_rebuilds_position_ids_and_refuses_per_row_values():
    slw = SeqLengthWarmup(8, 16, 4, 8, mode="reshape")
    ids = torch.arange(32).reshape(2, 16)
    out, tokens = slw.apply_dict({"input_ids": ids, "position_ids": torch.arange(16).expand(2, 16)}, 1)
    assert out["input_ids"].shape == (4, 8) and tokens == 32
    assert torch.equal(out["position_ids"], torch.arange(8).expand(4, 8))
    with pytest.raises(ValueError, match="row_id"):
        slw.apply_dict({"input_ids": ids, "row_id": torch.tensor([1, 2])}, 1)


def test_token_helpers_match_the_schedule_module():
    slw = SeqLengthWarmup(8, 64, 10, 8)
    assert slw.tokens_for_steps(3, 4) == 4 * sum(slw.length_at(t) for t in (1, 2, 3))
    budget = slw.tokens_for_steps(25, 4)
    assert slw.steps_for_tokens(budget, 4) == 25


def test_token_clock_records_tokens_at_warmup_end_for_the_decay():
    sched, clock = LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=2, decay_tokens=100, decay="linear"), TokenClock(2)
    lrs = []
    for step, n in enumerate([10, 10, 40, 40], start=1):
        lrs.append(sched(step, clock.tokens, clock.warmup_tokens))
        clock.advance(step, n)
    assert clock.warmup_tokens == 20 and clock.tokens == 100
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])  # decay over tokens 20..100, not over steps
    restored = TokenClock(2)
    restored.load_state_dict(clock.state_dict())
    assert restored == clock


def test_import_pulls_in_no_ray_mlflow_optuna_or_service():
    code = ("import sys, slwtune\n"
            "from slwtune import SeqLengthWarmup, LRSchedule, TokenClock\n"
            "import slwtune.slw\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def _load_example():
    spec = importlib.util.spec_from_file_location("slw_own_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_loop_follows_the_warmup_and_learns():
    result = _load_example().train(steps=40, batch_size=8, full_length=64, start_length=8, duration_steps=24,
                                   warmup_steps=8, log_every=20)
    slw, history = result["slw"], result["history"]
    assert [h["length"] for h in history] == [slw.length_at(t) for t in range(1, 41)]
    assert history[0]["length"] == 8 and history[-1]["length"] == 64
    assert history[-1]["tokens"] == 8 * sum(h["length"] for h in history)
    assert history[7]["lr"] == max(h["lr"] for h in history) > history[-1]["lr"]
    assert result["val_losses"][-1] < result["val_losses"][0] - 1.0  # from ~ln(256)=5.5


def test_example_runs_as_a_script_without_heavy_imports():
    code = ("import runpy, sys\n"
            "sys.argv = ['slw_own_loop.py', '--steps', '16', '--duration-steps', '8', '--full-length', '32',"
            " '--log-every', '8']\n"
            "try:\n"
            f"    runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            f"print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "step   16  seqlen   32" in out.stdout and "HEAVY []" in out.stdout, out.stdout
