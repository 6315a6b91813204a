"""The UIs as a person meets them, in a real headless Chromium (the OS package, driven by playwright).

One small job runs through the real API on a real Ray head and MLflow server. The Ray dashboard
test signs in with the token exactly as the demo prints it (typed into the dashboard's own
prompt) and finds the job on the jobs page. Screenshots are kept under the folder the tests
print (default .slwtune/test-artifacts/ui, or $SLWTUNE_TEST_ARTIFACTS/ui).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from devstack.waiting import retrying, wait_for
from service.states import SUCCEEDED, TERMINAL_STATES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SLWTUNE_TEST_ARTIFACTS", ROOT / ".slwtune" / "test-artifacts")) / "ui"
# Headless, and nothing that reaches outside this machine (updates, sync, field trials, QUIC).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 60_000
JOB_TIMEOUT_S = 600
# A job small enough to finish in about a minute on 2 cores: one round of two probes, a short full run.
JOB_OVERRIDES = {"name": "ui-e2e", "tuning.max_rounds": 1, "budget.train_tokens": 8192}


def chromium_path() -> str:
    """The OS's Chromium (Debian package `chromium`); `make test` installs it."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "no chromium on PATH: `apt-get install -y chromium` (make test does it)"
    return path


def keep_screenshot(page, name: str, capsys) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n[ui screenshot] {path}")
    return path


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A fresh Chromium profile: nothing signed in, no cookies."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium_path(), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1920, "height": 1080})
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def job(api_server):
    """The job, submitted under one Idempotency-Key; a 503 (Ray slow on a busy machine) is tried again."""
    headers = {**api_server.headers(), "Idempotency-Key": f"ui-e2e-{time.time()}"}
    body = {"preset": "shakespeare-tiny", "overrides": JOB_OVERRIDES}
    return retrying(lambda: httpx.post(f"{api_server.url}/v1/jobs", json=body, headers=headers, timeout=60)
                    .raise_for_status().json(), "the API to accept the job", 300, say=print)


@pytest.fixture(scope="module")
def finished_job(api_server, job):
    state = wait_for(lambda: get(api_server, f"/v1/jobs/{job['id']}"), lambda s: s["state"] in TERMINAL_STATES,
                     JOB_TIMEOUT_S, f"job {job['id']} to end", every=3)
    assert state["state"] == SUCCEEDED, get(api_server, f"/v1/jobs/{job['id']}/logs?tail=60")
    return state


def get(api_server, path: str) -> dict:
    r = httpx.get(f"{api_server.url}{path}", headers=api_server.headers(), timeout=60)
    if r.status_code >= 500:
        r.raise_for_status()  # waited out by wait_for (devstack.waiting.transient)
    assert r.status_code == 200, r.text
    return r.json()


def printed_token(sign_in_text: str) -> str:
    """The token as a person reads it off the demo's output."""
    match = re.search(r"sign in with token: (\S+)", sign_in_text)
    assert match, sign_in_text
    return match.group(1)


def test_dashboard_jobs_page_signs_in_with_the_printed_token(ray_head, job, browser_context, capsys):
    text = ray_head.sign_in_text()  # what `make demo` prints when the head is up
    url = re.search(r"Ray dashboard\s+(\S+)", text).group(1)
    assert url == f"{ray_head.address}/#/jobs"
    # Token auth is on: the Jobs API refuses a request without it.
    assert httpx.get(f"{ray_head.address}/api/jobs/", timeout=10).status_code in (401, 403)

    page = browser_context.new_page()
    page.goto(url)
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Authentication Token Required").wait_for()
    token_box = dialog.get_by_label("Authentication Token")
    token_box.fill("not-the-token")
    dialog.get_by_role("button", name="Submit").click()
    dialog.get_by_role("alert").wait_for()  # a wrong token is refused and the prompt stays
    token_box.fill(printed_token(text))
    dialog.get_by_role("button", name="Submit").click()
    dialog.wait_for(state="hidden")

    page.get_by_text(job["id"]).first.wait_for()
    shot = keep_screenshot(page, "ray-dashboard-jobs", capsys)
    assert shot.stat().st_size > 10_000
    assert job["links"]["ray_dashboard"] == f"{ray_head.address}/#/jobs/{job['id']}"
    page.close()


def test_dashboard_token_is_in_no_api_response_job_log_or_mlflow_run(ray_head, api_server, mlflow_server,
                                                                      finished_job):
    from mlflow import MlflowClient

    job_id = finished_job["id"]
    answers = [httpx.get(f"{api_server.url}{path}", headers=api_server.headers(), timeout=60).text
               for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/trials", f"/v1/jobs/{job_id}/logs?tail=5000",
                            "/v1/jobs", "/readyz")]
    assert len(answers[2]) > 1000  # the driver's log is really there
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(JOB_OVERRIDES["name"]).experiment_id])
    assert len(runs) >= 4  # the parent, two probes, the full run
    recorded = [str(run.data.params) + str(run.data.tags) for run in runs]
    assert all(ray_head.token not in text for text in answers + recorded)


def test_mlflow_link_opens_the_jobs_runs_with_the_columns_that_matter(api_server, mlflow_server, finished_job,
                                                                     browser_context, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(JOB_OVERRIDES["name"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], f"tags.`slwtune.job_id` = '{finished_job['id']}'")
    probes = [r for r in runs if r.data.tags.get("slwtune.kind") == "probe"]
    assert len(runs) >= 4 and len(probes) >= 2  # the parent, the probes, the full run

    page = browser_context.new_page()
    page.goto(finished_job["links"]["mlflow_run"])
    for run in runs:  # flat: the parent and every child are rows, none folded away
        page.get_by_text(run.info.run_name, exact=True).wait_for()
    shot = keep_screenshot(page, "mlflow-job-runs", capsys)
    assert "/runs?" in page.url and "workflowType=machine_learning" in page.url  # not the GenAI overview
    for column in ("slwtune.verdict", "slw.start_length", "slw.duration_steps", "val/ppl"):
        assert page.get_by_text(column, exact=True).count() >= 1, column
    for verdict in {r.data.tags["slwtune.verdict"] for r in probes}:
        assert page.get_by_text(verdict, exact=True).count() >= 1, verdict
    assert shot.stat().st_size > 10_000

    # One run's page, as `slwtune train` prints it: still in model-training mode once loaded.
    from slwtune.tracking import run_ui_hint

    full_run = next(r for r in runs if r.data.tags.get("slwtune.kind") == "full_run")
    page.goto(run_ui_hint(mlflow_server.uri, experiment.experiment_id, full_run.info.run_id).split(": ", 1)[1])
    page.get_by_text(full_run.info.run_name).first.wait_for()
    keep_screenshot(page, "mlflow-full-run", capsys)
    assert "workflowType=machine_learning" in page.url
    page.close()
