"""What a person opens in the MLflow UI: the experiment kind, the job's runs view, the link to a run."""

import json

from slwtune import metrics as M
from slwtune import tracking


def test_job_view_lists_the_jobs_runs_flat_with_the_columns_that_matter():
    view = tracking.job_view("slw-42")
    assert view["searchFilter"] == "tags.`slwtune.job_id` = 'slw-42'"
    # Sorted by creation date, the UI folds the children under a collapsed parent.
    assert view["orderByKey"] != "attributes.start_time"
    for column in ("tags.`slwtune.verdict`", "params.`slw.start_length`", "params.`slw.duration_steps`",
                   "metrics.`val/ppl`"):
        assert column in view["selectedColumns"]


def test_job_runs_link_opens_the_stored_view_in_model_training_mode():
    link = tracking.job_runs_link("http://mlflow:5000", "3", "abc")
    assert link == ("http://mlflow:5000/#/experiments/3/runs?workflowType=machine_learning"
                    "&viewStateShareKey=slwtune-job-abc")


def test_run_hint_links_a_tracking_server():
    hint = tracking.run_ui_hint("http://127.0.0.1:5000/", "1", "r1")
    assert hint == "MLflow run: http://127.0.0.1:5000/#/experiments/1/runs/r1?workflowType=machine_learning"


def test_run_hint_for_a_sqlite_store_gives_the_command_that_serves_it():
    hint = tracking.run_ui_hint("sqlite:////tmp/my runs/mlflow.db", "1", "r1")
    assert "mlflow ui --backend-store-uri 'sqlite:////tmp/my runs/mlflow.db'" in hint
    assert "mlflow.db/#" not in hint
    assert hint.endswith("http://127.0.0.1:5000/#/experiments/1/runs/r1?workflowType=machine_learning")


class FakeClient:
    """The few MlflowClient calls tracking makes here, kept in memory."""

    def __init__(self):
        self.experiments: dict[str, dict] = {}  # id -> {"name", "tags"}
        self.runs: dict[str, str] = {}  # run id -> experiment id

    def get_experiment_by_name(self, name):
        found = [i for i, e in self.experiments.items() if e["name"] == name]
        return type("E", (), {"experiment_id": found[0]})() if found else None

    def create_experiment(self, name, tags=None):
        experiment_id = str(len(self.experiments) + 1)
        self.experiments[experiment_id] = {"name": name, "tags": dict(tags or {})}
        return experiment_id

    def set_experiment_tag(self, experiment_id, key, value):
        self.experiments[experiment_id]["tags"][key] = value

    def create_run(self, experiment_id, tags=None, run_name=None):
        run_id = f"run{len(self.runs) + 1}"
        self.runs[run_id] = experiment_id
        return self.get_run(run_id)

    def get_run(self, run_id):
        info = type("I", (), {"run_id": run_id, "experiment_id": self.runs[run_id]})()
        return type("R", (), {"info": info})()


def test_new_experiment_is_model_training_and_a_job_shares_its_view(monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(tracking, "_client", lambda uri: client)
    experiment_id = tracking.ensure_experiment("http://mlflow", "slw-exp")
    assert tracking.ensure_experiment("http://mlflow", "slw-exp") == experiment_id
    parent = tracking.create_run("http://mlflow", "slw-exp", "job", tags={M.TAG_JOB_ID: "slw-7"})
    tracking.share_job_view("http://mlflow", parent, "slw-7")

    tags = client.experiments[experiment_id]["tags"]
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(tags[f"mlflow.sharedViewState.slwtune-job-{parent}"]) == tracking.job_view("slw-7")
