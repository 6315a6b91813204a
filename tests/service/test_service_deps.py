"""service.api.deps: every /v1 route needs a bearer token, and a principal sees only its own jobs."""

import logging

import pytest
from service_kit import ALICE, TINY


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("GET", "/v1/jobs/x/trials"),
    ("GET", "/v1/jobs/x/logs"), ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/search-spaces"),
    ("GET", "/v1/search-spaces/shakespeare-tiny"),
])
def test_every_v1_endpoint_needs_a_token(api, method, path):
    r = api.call(method, path, who=None, json=TINY if method == "POST" else None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401_and_never_logged(api, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "not-a-real-token-0123456789"
    for header in (f"Bearer {wrong}", f"Basic {wrong}", wrong):
        r = api.client.get("/v1/jobs", headers={"Authorization": header})
        assert r.status_code == 401
    assert wrong not in caplog.text and ALICE not in caplog.text


def test_another_principals_job_is_a_404(api):
    job = api.submit(who="alice")
    for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/trials"),
                         ("GET", f"/v1/jobs/{job['id']}/logs"), ("POST", f"/v1/jobs/{job['id']}/cancel")]:
        r = api.call(method, path, who="bob")
        assert r.status_code == 404, path
        assert r.json() == {"detail": f"no job {job['id']!r}"}
    assert api.call("GET", "/v1/jobs", who="bob").json() == {"data": [], "count": 0}
    assert api.ray.jobs[job["id"]]["status"] == "PENDING"  # bob's cancel did not reach Ray
