"""Fixtures of the service tests: `api` (the real app on a temp registry, fakes for Ray and MLflow)
and `make_api` (the same with other settings)."""

import shutil
from pathlib import Path

import pytest
from service_kit import Api, make_settings

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


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


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory) -> Path:
    """A real dataset, made once by `slwtune data prepare`'s function (bytes tokenizer, the fixture corpus)."""
    from slwtune.data import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "corpus"
    prepare_dataset(str(CORPUS), out, tokenizer="bytes", vocab_size=256)
    return out


@pytest.fixture
def dataset_in(prepared_dataset):
    """dataset_in(folder) copies the prepared dataset to `folder` and returns it."""
    return lambda folder: Path(shutil.copytree(prepared_dataset, folder))
