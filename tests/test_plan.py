"""`slwtune plan` builds the model the training loop would: same config function, same vocabulary."""

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
