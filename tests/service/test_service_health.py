"""service.api.routes.health: liveness and readiness, no token needed."""


def test_healthz_needs_no_token(api):
    assert api.call("GET", "/healthz", who=None).json() == {"status": "ok"}


def test_readyz_names_the_unreachable_backends(api):
    api.ray.down = True
    r = api.call("GET", "/readyz", who=None)
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and not checks["ray"]["ok"] and checks["mlflow"]["ok"]
    assert "Ray is unavailable" in checks["ray"]["detail"]


def test_readyz_is_ready_when_every_backend_answers(api):
    r = api.call("GET", "/readyz", who=None)
    assert r.status_code == 200 and r.json()["status"] == "ready"
