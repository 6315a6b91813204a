"""service.jobs.validation: bad requests, one test per rule family; each leaves the registry and Ray untouched."""

import json

import pytest
from service_kit import TINY, fields, rejected

from slwtune.plan import planned_trials
from slwtune.spec import load_spec


def test_unknown_fields_are_rejected(api):
    assert fields(rejected(api, {"spec": {"slw": {"start_len": 8}}})) == {"slw.start_len": 8}
    assert "tuning.stratgy" in fields(rejected(api, {**TINY, "overrides": {"tuning.stratgy": "grid"}}))
    assert "priority" in fields(rejected(api, {**TINY, "priority": 1}))  # the request body itself


def test_nan_is_rejected_and_named(api):
    detail = rejected(api, content=b'{"spec": {"optim": {"lr": NaN}}}')
    assert fields(detail) == {"optim.lr": "nan"}
    assert detail[0]["loc"] == ["body", "spec", "optim", "lr"]


def test_cross_field_rules_report_every_problem(api):
    got = fields(rejected(api, {**TINY, "overrides": {"slw.start_length": 12, "optim.min_lr": 1.0}}))
    assert got == {"slw.start_length": 12, "optim.min_lr": 1.0}


def test_spec_xor_preset(api):
    rejected(api, {"spec": {}, "preset": "shakespeare-tiny"})
    rejected(api, {"overrides": {"seed": 1}})


def test_unknown_preset(api):
    detail = rejected(api, {"preset": "gpt5-huge"})
    assert detail[0]["loc"] == ["body", "preset"] and detail[0]["input"] == "gpt5-huge"
    assert "shakespeare-tiny" in detail[0]["msg"]


@pytest.mark.parametrize("path", ["/etc", "../outside", "link/inside"])
def test_data_paths_must_resolve_inside_the_data_root(api, tmp_path, path):
    (tmp_path / "outside").mkdir()
    (api.settings.data_root / "link").symlink_to(tmp_path / "outside")
    assert fields(rejected(api, {"spec": {"data": {"path": path}}})) == {"data.path": path}


def test_sqlite_optuna_study_must_lie_inside_the_data_root(api):
    bad = "sqlite:////tmp/elsewhere.db"
    assert fields(rejected(api, {**TINY, "overrides": {"tuning.optuna_storage": bad}})) == {
        "tuning.optuna_storage": bad}


def test_budget_limit(api):
    got = fields(rejected(api, {**TINY, "overrides": {"budget.train_tokens": 10**13}}))
    assert got == {"budget.train_tokens": 10**13}


def test_trials_limit(api):
    body = {**TINY, "overrides": {"tuning.strategy": "optuna", "tuning.n_trials": 500}}
    detail = rejected(api, body)
    assert fields(detail) == {"tuning.n_trials": 500} and "allows 200" in detail[0]["msg"]


def test_paper_trials_repeat_per_start_length():
    spec = load_spec("shakespeare-tiny", ["slw.start_length=8", "tuning.max_start_length=32",
                                          "tuning.slots=2", "tuning.max_rounds=3"])
    once = planned_trials(spec.model_copy(update={"tuning": spec.tuning.model_copy(update={"max_start_length": 8})}))
    assert planned_trials(spec) == 3 * once  # start lengths 8, 16, 32


def test_body_too_large_is_413(api):
    body = json.dumps({**TINY, "overrides": {"name": "x" * (api.settings.max_body_bytes + 1)}}).encode()
    rejected(api, content=body, status=413)
