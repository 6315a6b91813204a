"""Fixtures of the service tests: `api` (the real app on a temp registry, fakes for Ray and MLflow)
and `make_api` (the same with other settings)."""

import pytest
from service_kit import Api, make_settings


@pytest.fixture
def api(tmp_path):
    (tmp_path / "data").mkdir()
    with Api(make_settings(tmp_path)) as a:
        yield a


@pytest.fixture
def make_api(tmp_path):
    """make_api(**settings) -> an Api (use it as a context manager)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return lambda fakes=True, **kw: Api(make_settings(tmp_path, **kw), fakes=fakes)
