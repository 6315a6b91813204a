"""service.jobs.validation: bad requests, one test per rule family; each leaves the registry and Ray untouched."""

import json

import pytest
from service_kit import TINY, fields, rejected

from slwtune.errors import SpecError
from slwtune.plan import planned_trials
from slwtune.spec import load_spec, preset_data

from service.jobs.validation import BUILTIN_DATASETS


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


# ---- data.path: a prepared dataset inside the data root, after resolving links -----------------------


@pytest.mark.parametrize("path", ["/etc", "../outside", "link/inside", "link", "~/x", "../data/../outside"])
def test_data_paths_must_resolve_inside_the_data_root(api, tmp_path, dataset_in, path):
    dataset_in(tmp_path / "outside")  # a real dataset, but not under the data root
    (api.settings.data_root / "link").symlink_to(tmp_path / "outside")
    assert fields(rejected(api, {"spec": {"data": {"path": path}}})) == {"data.path": path}


def test_data_path_must_exist_after_resolving_links(api, dataset_in):
    detail = rejected(api, {"spec": {"data": {"path": "no-such-set"}}})
    assert fields(detail) == {"data.path": "no-such-set"} and "no such dataset folder" in detail[0]["msg"]
    (api.settings.data_root / "dangling").symlink_to(api.settings.data_root / "gone")
    assert fields(rejected(api, {"spec": {"data": {"path": "dangling"}}})) == {"data.path": "dangling"}
    dataset_in(api.settings.data_root / "sets" / "corpus")
    (api.settings.data_root / "current").symlink_to(api.settings.data_root / "sets" / "corpus")
    job = api.submit({"spec": {"data": {"path": "current"}}})  # a link inside the root: stored resolved
    assert job["spec"]["data"]["path"] == str((api.settings.data_root / "sets" / "corpus").resolve())


@pytest.mark.parametrize("break_it,why", [
    (lambda d, out: (d / "meta.json").unlink(), "no meta.json"),
    (lambda d, out: (d / "meta.json").write_text(SECRET + " {not json"), "unreadable meta.json"),
    (lambda d, out: (d / "meta.json").write_text("[1, 2]"), "unreadable meta.json"),
    (lambda d, out: ((d / "meta.json").unlink(), (d / "meta.json").symlink_to(out)), "no meta.json"),
    (lambda d, out: (d / "meta.json").unlink() or (d / "meta.json").mkdir(), "no meta.json"),
    (lambda d, out: (d / "train.bin").unlink(), "no train.bin"),
    (lambda d, out: ((d / "val.bin").unlink(), (d / "val.bin").symlink_to(out)), "no val.bin"),
])
def test_data_path_must_be_a_prepared_dataset(api, dataset_in, outside_yaml, break_it, why):
    folder = dataset_in(api.settings.data_root / "set")
    break_it(folder, outside_yaml)
    detail = rejected(api, {"spec": {"data": {"path": "set"}}})
    assert fields(detail) == {"data.path": "set"} and why in detail[0]["msg"]
    assert SECRET not in str(detail)


@pytest.mark.parametrize("path,status", [("builtin:shakespeare", 201), ("builtin:wikipedia", 422),
                                         ("builtin:../../etc", 422)])
def test_builtin_data(api, path, status):
    assert api.call("POST", "/v1/jobs", json={"spec": {"data": {"path": path}}}).status_code == status


def test_the_builtin_names_match_the_library():
    from slwtune.data import BUILTIN_SHAKESPEARE

    assert BUILTIN_DATASETS == {BUILTIN_SHAKESPEARE}


@pytest.mark.parametrize("path", ["a\x00b", "x" * 5000, "/".join(["d"] * 2000), ""])
def test_unusable_data_paths_are_422_not_500(api, path):
    assert "data.path" in fields(rejected(api, {"spec": {"data": {"path": path}}}))


# ---- presets are names, resolved inside the presets folder ------------------------------------------


SECRET = "hunter2-do-not-echo"


@pytest.fixture
def outside_yaml(tmp_path):
    """A YAML file outside the presets folder, as an attacker would like the API to read."""
    path = tmp_path / "private" / "secret.yaml"
    path.parent.mkdir()
    path.write_text(f"password: {SECRET}\nname: {SECRET}\n")
    return path


def test_a_preset_path_is_refused_and_nothing_is_read_or_echoed(api, outside_yaml):
    for name in (str(outside_yaml.with_suffix("")), "../private/secret", "./shakespeare-tiny", "a/b", "..",
                 "Shakespeare-Tiny", ".hidden", "-x", "x" * 129, "shakespeare-tiny\x00", "%2e%2e%2fsecret"):
        r = api.call("POST", "/v1/jobs", json={"preset": name})
        assert r.status_code == 422, (name, r.text)
        assert SECRET not in r.text and "password" not in r.text
        assert r.json()["detail"][0]["loc"] == ["body", "preset"]
    assert api.rows() == 0 and api.ray.jobs == {}


def test_a_preset_linked_out_of_the_presets_folder_is_unknown(api, outside_yaml, tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "evil.yaml").symlink_to(outside_yaml)
    monkeypatch.setenv("SLWTUNE_PRESETS_DIR", str(presets))
    detail = rejected(api, {"preset": "evil"})
    assert fields(detail) == {"preset": "evil"} and "unknown preset" in detail[0]["msg"]
    assert SECRET not in str(detail)


def test_the_library_refuses_preset_paths_too(outside_yaml):
    with pytest.raises(SpecError) as info:
        preset_data(str(outside_yaml.with_suffix("")))
    assert info.value.problems[0]["loc"] == "preset" and SECRET not in str(info.value)


# ---- backends belong to the server ------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("tracking.tracking_uri", "http://169.254.169.254/latest"), ("tracking.tracking_uri", "sqlite:////tmp/x.db"),
    ("tracking.tracking_uri", "file:///etc"), ("tuning.optuna_storage", "postgresql://internal-host/db"),
    ("tuning.optuna_storage", "sqlite:///file:/tmp/x.db?uri=true"), ("tuning.optuna_storage", "sqlite:///study.db"),
])
def test_backend_uris_are_refused_over_rest_naming_the_field(api, field, value):
    section, key = field.split(".")
    for body in ({**TINY, "overrides": {field: value}}, {"spec": {section: {key: value}}}):
        detail = rejected(api, body)
        assert fields(detail) == {field: value} and "set by the server" in detail[0]["msg"]
    assert api.mlflow.health_checked == []  # the API never called the caller's URI
    job = api.submit()  # without them: the server's tracking server, checked and handed to the driver
    assert api.ray.jobs[job["id"]]["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == api.settings.mlflow_tracking_uri
    assert api.mlflow.health_checked == [api.settings.mlflow_tracking_uri]


# ---- per-job limits of this service (422 naming the field, the limit and its setting) ---------------


def test_budget_limit(api):
    detail = rejected(api, {**TINY, "overrides": {"budget.train_tokens": 10**13}})
    assert fields(detail) == {"budget.train_tokens": 10**13} and "SLWTUNE_MAX_TRAIN_TOKENS" in detail[0]["msg"]


def test_trials_limit(api):
    body = {**TINY, "overrides": {"tuning.strategy": "optuna", "tuning.n_trials": 500}}
    detail = rejected(api, body)
    assert fields(detail) == {"tuning.n_trials": 500} and "allows 200" in detail[0]["msg"]


def test_resource_limits_per_job(make_api):
    with make_api(max_workers=4, max_cpus_per_worker=2, max_gpus_per_worker=1) as api:
        over = {"resources.num_workers": 8, "resources.cpus_per_worker": 4.0, "resources.use_gpu": True,
                "resources.gpus_per_worker": 2.0, "data.batch_size": 16}
        detail = rejected(api, {**TINY, "overrides": over})
        assert fields(detail) == {"resources.num_workers": 8, "resources.cpus_per_worker": 4.0,
                                  "resources.gpus_per_worker": 2.0}
        msgs = {d["field"]: d["msg"] for d in detail}
        assert "limit of 4 (SLWTUNE_MAX_WORKERS)" in msgs["resources.num_workers"]
        assert "limit of 1.0 (SLWTUNE_MAX_GPUS_PER_WORKER)" in msgs["resources.gpus_per_worker"]
        at_limit = {"resources.num_workers": 4, "resources.cpus_per_worker": 2.0, "data.batch_size": 16}
        assert api.call("POST", "/v1/jobs", json={**TINY, "overrides": at_limit}).status_code == 201


def test_gpus_per_worker_do_not_count_without_use_gpu(make_api):
    with make_api(max_gpus_per_worker=0) as api:  # a CPU-only service
        assert api.call("POST", "/v1/jobs", json=TINY).status_code == 201  # gpus_per_worker=1.0, use_gpu=false
        rejected_gpu = api.call("POST", "/v1/jobs", json={**TINY, "overrides": {"resources.use_gpu": True}})
        assert rejected_gpu.status_code == 422 and api.rows() == 1


def test_paper_trials_repeat_per_start_length():
    spec = load_spec("shakespeare-tiny", ["slw.start_length=8", "tuning.max_start_length=32",
                                          "tuning.slots=2", "tuning.max_rounds=3"])
    once = planned_trials(spec.model_copy(update={"tuning": spec.tuning.model_copy(update={"max_start_length": 8})}))
    assert planned_trials(spec) - 1 == 3 * (once - 1)  # start lengths 8, 16, 32, plus one control probe
    no_control = spec.model_copy(update={"tuning": spec.tuning.model_copy(update={"control_probe": False})})
    assert planned_trials(no_control) == planned_trials(spec) - 1


def test_body_too_large_is_413(api):
    body = json.dumps({**TINY, "overrides": {"name": "x" * (api.settings.max_body_bytes + 1)}}).encode()
    rejected(api, content=body, status=413)


# ---- malformed requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b'{"preset": ', b"\xff\xfe", b"null", b"[]", b'"shakespeare-tiny"', b"{}",
                                     b'{"preset": null, "spec": null}', b'{"spec": [1]}', b'{"overrides": "x=1"}',
                                     b'{"preset": 7}', b'{"spec": {"optim": {"lr": "1e-3x"}}}'])
def test_malformed_bodies_are_422(api, content):
    rejected(api, content=content)


def test_deeply_nested_json_is_refused_not_a_crash(api):
    r = api.call("POST", "/v1/jobs", content=b'{"spec": ' + b'{"a":' * 3000 + b"1" + b"}" * 3001,
                 headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and api.rows() == 0


def test_wrong_types_and_nulls_name_the_field(api):
    got = fields(rejected(api, {"spec": {"name": 7, "seed": None, "slw": {"enabled": "maybe"},
                                         "resources": {"use_gpu": None}, "data": {"path": None}}}))
    assert {"name", "seed", "slw.enabled", "resources.use_gpu", "data.path"} <= set(got)


def test_sections_must_be_mappings(api):
    assert "optim" in fields(rejected(api, {"spec": {"optim": 0.001}}))
    detail = rejected(api, {**TINY, "overrides": {"optim.lr.value": 1}})
    assert fields(detail) == {"optim.lr": 0.003} and "is not a section" in detail[0]["msg"]
