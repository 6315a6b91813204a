"""`slwtune plan` builds the model the training loop would: same config function, same vocabulary."""

import math

import pytest

from slwtune.data import prepare_dataset
from slwtune.model import config_from_spec, flops_per_token
from slwtune.plan import make_plan, planned_vocab
from slwtune.spec import load_spec


def test_plan_uses_the_tokenizer_vocab_before_the_data_is_prepared():
    spec = load_spec("shakespeare-demo", ["data.tokenizer=bytes"])
    vocab, source = planned_vocab(spec)
    assert vocab == 256 and "data.tokenizer=bytes" in source  # not data.vocab_size: bytes has 256 ids


def test_plan_uses_the_prepared_dataset_vocab(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be, that is the question\n" * 200)
    meta = prepare_dataset(tmp_path / "a.txt", tmp_path / "ds", tokenizer="bytes")
    spec = load_spec("shakespeare-tiny", [f"data.path={tmp_path / 'ds'}", "data.vocab_size=1024"])
    plan = make_plan(spec)
    assert plan["vocab_size"] == meta.vocab_size == 256
    assert str(tmp_path / "ds") in plan["vocab_source"]
    # the FLOPs are those of the model the loop would build on that data
    config = config_from_spec(spec, meta.vocab_size)
    assert plan["full_run_flops"] == spec.budget.train_tokens * flops_per_token(config, spec.slw.full_length)


def test_the_spec_vocab_wins():
    spec = load_spec("shakespeare-tiny", ["model.vocab_size=999"])
    assert planned_vocab(spec) == (999, "model.vocab_size")


def test_plan_of_an_hf_model_costs_what_the_same_gpt_costs():
    # an HF GPT-2 and the built-in GPT of the same sizes do the same FLOPs per token
    from slwtune.plan import make_plan
    from slwtune.spec import load_spec

    sizes = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.context_length=128",
             "data.tokenizer=bytes"]
    gpt = make_plan(load_spec("shakespeare-tiny", sizes))
    hf = make_plan(load_spec("shakespeare-tiny", sizes + ["model.family=hf", "model.architecture=gpt2"]))
    assert hf["tuning_flops"] == pytest.approx(gpt["tuning_flops"], rel=1e-9)
    assert hf["full_run_flops"] == pytest.approx(gpt["full_run_flops"], rel=1e-9)


def test_plan_says_how_large_the_evaluation_must_be():
    from slwtune.plan import SEQUENCE_LOSS_SD, eval_noise, format_plan, make_plan

    small = load_spec("shakespeare-tiny", ["run.eval_batches=1", "run.eval_batch_size=4"])
    noise = eval_noise(small)
    assert noise["eval_sequences"] == 4 and not noise["eval_large_enough"]
    assert noise["eval_se_estimate"] == SEQUENCE_LOSS_SD / 2
    # at the needed size the standard error is at most half the 5% tolerance (in nats), one fewer is not
    needed = noise["eval_sequences_needed"]
    assert SEQUENCE_LOSS_SD / math.sqrt(needed) <= math.log(1.05) / 2 < SEQUENCE_LOSS_SD / math.sqrt(needed - 1)
    assert "too small" in format_plan(make_plan(small))
    looser = load_spec("shakespeare-tiny", ["tuning.stability.ppl_rise_tolerance=0.2"])
    assert eval_noise(looser)["eval_sequences_needed"] < needed


def test_presets_evaluate_enough_for_the_fluctuation_rule():
    from slwtune.plan import eval_noise

    for name in ("shakespeare-demo", "gpt2-117m", "gpt3-125m", "gpt2-1.5b"):
        assert eval_noise(load_spec(name))["eval_large_enough"], name
