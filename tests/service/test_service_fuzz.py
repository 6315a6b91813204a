"""The whole API fuzzed from its own OpenAPI schema (schemathesis): every route, positive and
negative data, no server error, responses as documented, and no rejected request changing the registry.

The app is the real one (SQLite registry, the real validation, quotas and handlers) with the
in-memory Ray and MLflow of the other service tests. The last test checks the totals.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from service_kit import ALICE, TINY, Api, make_settings

EXAMPLES_PER_OPERATION = 150
MIN_REQUESTS = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

sent: Counter[str] = Counter()  # requests per operation
statuses: Counter[int] = Counter()
started = time.perf_counter()


def _start_api() -> Api:
    # Built at import: schemathesis reads the schema when the tests are collected (its lazy
    # `from_fixture` loader does not work with this pytest). `fuzzed` ends it with the module.
    root = Path(tempfile.mkdtemp(prefix="slwtune-fuzz-"))
    (root / "data").mkdir()
    api = Api(make_settings(root, max_jobs_per_principal=20)).__enter__()
    api.root = root
    api.seeded = [api.submit(TINY)["id"] for _ in range(3)]  # real ids, so the {job_id} routes go past 404
    api.ray.jobs[api.seeded[1]]["status"] = "RUNNING"
    return api


API = _start_api()
schema = schemathesis.openapi.from_asgi("/openapi.json", API.app)


@pytest.fixture(scope="module")
def fuzzed():
    yield API
    API.__exit__(None, None, None)
    shutil.rmtree(API.root, ignore_errors=True)


def registry_state(api: Api) -> tuple:
    return api.rows(), len(api.ray.jobs), len(api.job_dirs())


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz(case, fuzzed):
    if "job_id" in (case.path_parameters or {}) and len(str(case.path_parameters["job_id"])) % 2:
        # half the generated ids become real jobs, so reads, logs, trials and cancel go past the 404
        case.path_parameters["job_id"] = fuzzed.seeded[len(sent) % len(fuzzed.seeded)]
    before = registry_state(fuzzed)
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ALICE}"}  # past auth, into the routes
    response = case.call()
    sent[f"{case.method.upper()} {case.path}"] += 1
    statuses[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert registry_state(fuzzed) == before, f"a rejected request ({response.status_code}) changed the registry"


def test_fuzz_totals(fuzzed):
    """At least 1,000 generated requests, over every route, and no 5xx among them."""
    routes = {f"{m.upper()} {p}" for p, ops in fuzzed.app.openapi()["paths"].items() for m in ops}
    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests over {len(sent)} operations in {time.perf_counter() - started:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert routes <= set(sent), f"operations never fuzzed: {routes - set(sent)} (run the whole module)"
    assert total >= MIN_REQUESTS
    assert not [code for code in statuses if code >= 500]
