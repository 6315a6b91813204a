"""Over REST a job may name its own training function (model.entrypoint) only when the operator
allows that exact entrypoint (SLWTUNE_ALLOWED_ENTRYPOINTS): the code runs on the cluster."""

import pytest

from service.settings import Settings
from service_kit import TINY, Api, fields, make_settings, rejected

ENTRY = "examples.nanogpt_slw.train:train"


@pytest.fixture
def api_allowing(tmp_path):
    (tmp_path / "data").mkdir()
    with Api(make_settings(tmp_path, allowed_entrypoints=[ENTRY])) as a:
        yield a


def test_no_entrypoint_is_allowed_by_default(tmp_path):
    (tmp_path / "data").mkdir()
    with Api(make_settings(tmp_path)) as api:
        detail = rejected(api, {**TINY, "overrides": {"model.entrypoint": ENTRY}})
    assert fields(detail) == {"model.entrypoint": ENTRY}
    assert "SLWTUNE_ALLOWED_ENTRYPOINTS" in detail[0]["msg"]


def test_an_allowed_entrypoint_is_submitted_and_others_are_not(api_allowing):
    job = api_allowing.submit({**TINY, "overrides": {"model.entrypoint": ENTRY}})
    assert job["spec"]["model"]["entrypoint"] == ENTRY
    other = "examples.nanogpt_slw.train:save"  # same module, another function: not on the list
    assert fields(rejected_after_one(api_allowing, {"spec": {"model": {"entrypoint": other}}})) == {
        "model.entrypoint": other}


def rejected_after_one(api, body):
    r = api.call("POST", "/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert api.rows() == 1  # only the allowed job
    return r.json()["detail"]


def test_the_allowlist_reads_a_comma_separated_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("SLWTUNE_API_TOKENS", "alice:" + "a" * 20)
    monkeypatch.setenv("SLWTUNE_ALLOWED_ENTRYPOINTS", f" {ENTRY} , mypkg.loop:train ,")
    assert Settings().allowed_entrypoints == [ENTRY, "mypkg.loop:train"]
    monkeypatch.delenv("SLWTUNE_ALLOWED_ENTRYPOINTS")
    assert Settings().allowed_entrypoints == []
