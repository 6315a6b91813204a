"""The job spec: one test per rule, all problems reported at once, overrides, YAML round-trip."""

import json

import pytest
import yaml

from slwtune.errors import SpecError
from slwtune.spec import apply_overrides, load_spec, parse_override, parse_spec


def locs(exc: SpecError) -> set[str]:
    return {p["loc"] for p in exc.problems}


def bad(data: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value


def test_defaults_are_valid():
    spec = parse_spec({})
    assert spec.slw.start_length == 8 and spec.tuning.strategy == "paper"


def test_unknown_key_is_an_error_naming_it():
    err = bad({"slw": {"start_len": 8}})
    assert "slw.start_len" in locs(err)
    assert "unknown field" in str(err)


def test_unknown_top_level_key():
    assert "modle" in locs(bad({"modle": {}}))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_rejected(value):
    err = bad({"optim": {"lr": value}})
    assert "optim.lr" in locs(err)


def test_wrong_type_names_field_and_value():
    err = bad({"optim": {"lr_warmup_steps": "lots"}})
    (p,) = err.problems
    assert p["loc"] == "optim.lr_warmup_steps" and p["value"] == "lots"


def test_negative_lr_rejected():
    assert "optim.lr" in locs(bad({"optim": {"lr": -1.0}}))


def test_start_not_multiple_of_step():
    err = bad({"slw": {"start_length": 12, "step_size": 8}})
    assert "slw.start_length" in locs(err)
    assert "12" in str(err) and "step_size=8" in str(err)


def test_start_above_full():
    err = bad({"slw": {"start_length": 256, "full_length": 128}, "tuning": {"max_start_length": 256}})
    assert "slw.start_length" in locs(err)


def test_full_length_above_model_context():
    err = bad({"model": {"preset": "tiny", "context_length": 64}, "slw": {"full_length": 128}})
    assert "slw.full_length" in locs(err)
    assert "context_length=64" in str(err)


@pytest.mark.parametrize("entrypoint", ["mypkg.train:train", "train:Trainer.run", "a_b.c2:f"])
def test_entrypoint_of_the_right_shape_is_accepted(entrypoint):
    assert parse_spec({"model": {"entrypoint": entrypoint}}).model.entrypoint == entrypoint


@pytest.mark.parametrize("entrypoint", ["mypkg.train", "mypkg.train:", ":train", "my pkg:train", "a:b:c",
                                        "pkg/train.py:train", "1pkg:train"])
def test_entrypoint_of_another_shape_names_field_and_value(entrypoint):
    (p,) = bad({"model": {"entrypoint": entrypoint}}).problems
    assert p["loc"] == "model.entrypoint" and p["value"] == entrypoint and "package.module:function" in p["msg"]


def test_entrypoint_is_not_an_hf_model():
    err = bad({"model": {"entrypoint": "mypkg:train", "family": "hf", "architecture": "llama"}})
    assert "model.entrypoint trains your own model" in str(err)


def test_entrypoint_context_is_unchecked_unless_given():
    # the preset's context (tiny: 128) is slwtune's GPT's, not the user's model's
    spec = parse_spec({"model": {"entrypoint": "mypkg:train"}, "slw": {"full_length": 1024},
                       "budget": {"train_tokens": 10**8}})
    assert spec.context_length() is None
    err = bad({"model": {"entrypoint": "mypkg:train", "context_length": 512}, "slw": {"full_length": 1024},
               "budget": {"train_tokens": 10**8}})
    assert "slw.full_length" in locs(err) and "context_length=512" in str(err)


def test_duration_must_be_positive():
    assert "slw.duration_steps" in locs(bad({"slw": {"duration_steps": 0}}))


def test_discrete_lists_required_and_matching():
    assert "slw.discrete_lengths" in locs(bad({"slw": {"pacing": "fixed_discrete"}}))
    err = bad({"slw": {"pacing": "fixed_discrete", "discrete_lengths": [8, 16, 32], "discrete_max_steps": [5]}})
    assert "slw.discrete_max_steps" in locs(err)


def test_discrete_steps_must_increase():
    err = bad({"slw": {"pacing": "fixed_discrete", "discrete_lengths": [8, 16, 32], "discrete_max_steps": [5, 5]}})
    assert "slw.discrete_max_steps" in locs(err)


def test_unknown_model_preset():
    err = bad({"model": {"preset": "gpt5"}})
    assert "model.preset" in locs(err) and "gpt5" in str(err)


def test_embd_not_multiple_of_heads():
    assert "model.n_embd" in locs(bad({"model": {"n_head": 3, "n_embd": 64}}))


def test_min_lr_above_lr():
    assert "optim.min_lr" in locs(bad({"optim": {"lr": 1e-4, "min_lr": 1e-3}}))


def test_betas_range():
    assert "optim.betas" in locs(bad({"optim": {"betas": [0.9, 1.0]}}))


def test_batch_not_divisible_by_workers():
    assert "data.batch_size" in locs(bad({"data": {"batch_size": 5}, "resources": {"num_workers": 2}}))


def test_micro_batch_must_divide_per_worker_batch():
    assert "data.micro_batch_size" in locs(bad({"data": {"batch_size": 16, "micro_batch_size": 3}}))


def test_budget_smaller_than_one_step():
    assert "budget.train_tokens" in locs(bad({"budget": {"train_tokens": 10}}))


def test_duration_range_inverted():
    assert "tuning.duration_min" in locs(bad({"tuning": {"duration_min": 500, "duration_max": 100}}))


def test_grid_needs_lists():
    err = bad({"tuning": {"strategy": "grid"}})
    assert {"tuning.start_lengths", "tuning.durations"} <= locs(err)


def test_grid_start_lengths_multiple_of_step():
    err = bad({"tuning": {"strategy": "grid", "start_lengths": [8, 12], "durations": [100]}})
    assert "tuning.start_lengths" in locs(err)


def test_unknown_strategy():
    assert "tuning.strategy" in locs(bad({"tuning": {"strategy": "random"}}))


def test_bad_job_name():
    assert "name" in locs(bad({"name": "../etc"}))


def test_all_cross_field_problems_reported_at_once():
    err = bad({"slw": {"start_length": 12, "full_length": 512}, "optim": {"lr": 1e-4, "min_lr": 1e-3}})
    assert {"slw.start_length", "slw.full_length", "optim.min_lr"} <= locs(err)


def test_all_field_problems_reported_at_once():
    err = bad({"optim": {"lr": -1, "eps": 0}, "slw": {"foo": 1}})
    assert {"optim.lr", "optim.eps", "slw.foo"} <= locs(err)


def test_non_mapping_rejected():
    assert "<root>" in locs(bad([1, 2]))


def test_yaml_and_json_round_trip():
    spec = parse_spec({"slw": {"start_length": 16}, "optim": {"lr": 3e-4}})
    assert parse_spec(yaml.safe_load(spec.to_yaml())) == spec
    assert parse_spec(json.loads(spec.to_json())) == spec


def test_flat_params_use_dotted_names():
    flat = parse_spec({}).flat()
    assert flat["slw.start_length"] == 8 and "budget.train_tokens" in flat


def test_derived_values():
    spec = parse_spec({"optim": {"lr_warmup_steps": 40}, "tuning": {"probe_warmup_multiples": 2.5},
                       "data": {"batch_size": 16, "micro_batch_size": 4}, "resources": {"num_workers": 2}})
    assert spec.probe_steps() == 100
    assert spec.micro_batch_size() == 4 and spec.grad_accum_steps() == 2
    assert spec.decay_tokens() == spec.budget.train_tokens


def test_parse_override_reads_yaml_values():
    assert parse_override("optim.lr=3e-4") == ("optim.lr", 3e-4)
    assert parse_override("slw.enabled=false") == ("slw.enabled", False)
    assert parse_override("tuning.durations=[100,200]") == ("tuning.durations", [100, 200])
    with pytest.raises(SpecError, match="dotted.key=value"):
        parse_override("optim.lr")


def test_overrides_do_not_mutate_input():
    data = {"optim": {"lr": 1e-3}}
    out = apply_overrides(data, ["optim.lr=2e-3", "slw.start_length=16"])
    assert data == {"optim": {"lr": 1e-3}}
    assert out == {"optim": {"lr": 2e-3}, "slw": {"start_length": 16}}


def test_override_of_unknown_key_is_reported():
    with pytest.raises(SpecError) as info:
        load_spec("shakespeare-tiny", ["slw.bogus=1"])
    assert "slw.bogus" in locs(info.value)


def test_load_spec_from_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "x1", "slw": {"start_length": 16}}))
    spec = load_spec(path, ["optim.lr=5e-4"])
    assert spec.name == "x1" and spec.slw.start_length == 16 and spec.optim.lr == 5e-4


def test_load_spec_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        load_spec("/nope/job.yaml")


def test_unknown_preset_lists_known():
    with pytest.raises(SpecError, match="unknown preset"):
        load_spec("no-such-preset")
