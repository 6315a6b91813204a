"""service.app: the routers and the OpenAPI page it wires, the error handlers registered once."""

from service.api import handlers
from service.backends import BackendError


def test_openapi_documents_the_v1_routes(api):
    paths = api.call("GET", "/openapi.json", who=None).json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/trials", "/v1/jobs/{job_id}/logs",
            "/v1/jobs/{job_id}/cancel", "/v1/search-spaces", "/v1/search-spaces/{name}"} <= set(paths)
    assert api.call("GET", "/docs", who=None).status_code == 200


def test_every_service_error_has_one_handler(api):
    registered = api.app.exception_handlers
    for exc, handler in [("SpecError", handlers.spec_error), ("NotFound", handlers.not_found),
                         ("Conflict", handlers.conflict), ("BackendUnavailable", handlers.backend_unavailable),
                         ("BackendError", handlers.backend_error)]:
        assert [h for cls, h in registered.items() if getattr(cls, "__name__", "") == exc] == [handler], exc


def test_backend_errors_become_503_with_retry_after_and_502(api):
    job = api.submit()
    logs = f"/v1/jobs/{job['id']}/logs"
    api.ray.down = True
    r = api.call("GET", logs)
    assert (r.status_code, r.headers["retry-after"]) == (503, str(handlers.RETRY_AFTER_S))
    assert r.json() == {"detail": "Ray is unavailable: down (test)"}
    api.ray.down = False

    def refuse(job_id):
        raise BackendError("Ray", "logs: no such file (test)")

    api.ray.logs = refuse
    r = api.call("GET", logs)
    assert r.status_code == 502 and "retry-after" not in r.headers
    assert r.json() == {"detail": "Ray refused the request: logs: no such file (test)"}


def test_cors_is_closed(api):
    """No CORS middleware: a page on another origin cannot read the API's answers with a user's token."""
    pre = api.client.options("/v1/jobs", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    got = api.call("GET", "/v1/jobs", headers={"Origin": "https://evil.example"})
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers
