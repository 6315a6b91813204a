"""The README's examples match the product: curl calls against the OpenAPI schema, the CLI error text."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from slwtune import metrics as M

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def curl_calls():
    calls = []
    for line in README.splitlines():
        if not line.startswith("curl "):
            continue
        args = shlex.split(line)
        method = args[args.index("-X") + 1] if "-X" in args else "GET"
        url = next(a for a in args if a.startswith("http"))
        body = json.loads(args[args.index("-d") + 1]) if "-d" in args else None
        path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
        calls.append((method, path, body, "Authorization: Bearer $TOKEN" in args))
    return calls


@pytest.fixture(scope="module")
def openapi():
    from service.app import create_app
    from service.settings import Settings

    return create_app(Settings(api_tokens="alice:" + "x" * 24)).openapi()


def test_readme_has_curl_examples_for_every_route(openapi):
    documented = {(m, p) for m, p, _, _ in curl_calls()}
    as_template = {(m, re.sub(r"JOB_ID", "{job_id}", p).replace("gpt2-1.5b", "{name}")) for m, p in documented}
    routes = {(m.upper(), p) for p, ops in openapi["paths"].items() for m in ops}
    assert as_template == routes, f"undocumented: {routes - as_template}, unknown: {as_template - routes}"


def test_readme_curl_auth_matches_the_api(openapi):
    for method, path, _, has_auth in curl_calls():
        assert has_auth == path.startswith("/v1/"), (method, path)


def test_readme_curl_bodies_are_valid_jobs():
    from service.schemas import JobCreate
    from slwtune.spec import apply_overrides, parse_spec, preset_data

    bodies = [b for m, p, b, _ in curl_calls() if b is not None]
    assert len(bodies) >= 2
    for body in bodies:
        job = JobCreate.model_validate(body)
        data = preset_data(job.preset) if job.preset else job.spec
        parse_spec(apply_overrides(data, job.overrides))


def test_readme_validation_example_is_what_the_cli_prints():
    block = README.split("$ slwtune validate", 1)[1].split("```", 1)[0]
    command, *expected = block.strip().splitlines()
    out = subprocess.run([sys.executable, "-m", "slwtune.cli", "validate", *shlex.split(command)],
                         capture_output=True, text=True)
    assert out.returncode == M.EXIT_INVALID
    assert out.stderr.strip().splitlines() == [line.rstrip() for line in expected]


def test_readme_first_screen_gives_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make demo" in first_screen and "make test" in first_screen
