"""MLflow conventions: run statuses, and a metric logger that survives an outage."""

import json

import pytest

from slwtune import metrics as M
from slwtune.tracking import RunLogger, run_status


def test_run_status_tells_verdicts_apart_in_the_ui():
    assert run_status(M.STABLE) == "FINISHED"
    assert run_status(M.FLUCTUATING) == run_status(M.DIVERGED) == "KILLED"
    assert run_status(M.FAILED) == "FAILED"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FlakyClient:
    """An MLflow client whose server is down for the first `down` calls."""

    def __init__(self, down: int):
        self.down, self.calls, self.metrics, self.tags = down, 0, [], {}

    def log_batch(self, run_id, metrics=(), tags=()):
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionError("MLflow is down")
        self.metrics += [(m.key, m.step, m.value) for m in metrics]
        self.tags.setdefault(run_id, {}).update({t.key: t.value for t in tags})


def logger(client, clock, **kw):
    return RunLogger("http://mlflow", "run1", flush_every=10**6, clock=clock, client=client, **kw)


def test_an_outage_keeps_metrics_and_sends_them_in_order_when_mlflow_returns():
    client, clock = FlakyClient(down=2), Clock()
    log = logger(client, clock)
    log.log({M.TRAIN_LOSS: 3.0}, step=1)
    assert log.flush() is False and log.outages == 1
    log.log({M.TRAIN_LOSS: 2.5}, step=2)
    assert log.flush() is False and client.calls == 1  # backing off: no call before the retry time
    clock.t = 1.0
    assert log.flush() is False and log.outages == 2  # still down; the backoff doubles
    clock.t = 2.5
    assert log.flush() is False and client.calls == 2
    clock.t = 3.0
    log.log({M.TRAIN_LOSS: 2.0}, step=3)
    assert log.flush() is True
    assert client.metrics == [(M.TRAIN_LOSS, 1, 3.0), (M.TRAIN_LOSS, 2, 2.5), (M.TRAIN_LOSS, 3, 2.0)]


def test_tags_wait_for_mlflow_like_metrics():
    client, clock = FlakyClient(down=1), Clock()
    log = logger(client, clock)
    log.set_tags({M.TAG_VERDICT: M.STABLE})
    log.set_tags({M.TAG_PROGRESS: "50%"}, run_id="parent")
    clock.t = 10
    assert log.flush() is True
    assert client.tags == {"run1": {M.TAG_VERDICT: M.STABLE}, "parent": {M.TAG_PROGRESS: "50%"}}


def test_close_spills_what_mlflow_never_took_to_the_job_folder(tmp_path):
    client, clock = FlakyClient(down=10**6), Clock()
    log = logger(client, clock, spill_dir=str(tmp_path))
    for step in range(1, 4):
        log.log({M.TRAIN_LOSS: 1.0 / step}, step=step)
    assert log.close(wait_s=0) == 3 and log.unsent == 3
    rows = [json.loads(line) for line in (tmp_path / "run1.jsonl").read_text().splitlines()]
    assert [(r["key"], r["step"]) for r in rows] == [(M.TRAIN_LOSS, 1), (M.TRAIN_LOSS, 2), (M.TRAIN_LOSS, 3)]


def test_close_sends_everything_when_mlflow_is_up(tmp_path):
    client, clock = FlakyClient(down=0), Clock()
    log = logger(client, clock, spill_dir=str(tmp_path))
    log.log({M.VAL_PPL: float("inf")}, step=1)
    assert log.close() == 0 and not list(tmp_path.iterdir())
    assert client.metrics == [(M.VAL_PPL, 1, M.NONFINITE_STANDIN)]  # Inf breaks MLflow's charts


def test_a_real_store_takes_the_batches(tmp_path):
    from mlflow.tracking import MlflowClient

    from slwtune.tracking import create_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = create_run(uri, "exp", "r", tags={M.TAG_KIND: M.KIND_PROBE})
    log = RunLogger(uri, run_id)
    log.log({M.TRAIN_LOSS: 2.0}, step=1)
    log.set_tags({M.TAG_VERDICT: M.STABLE})
    assert log.close() == 0
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.metrics[M.TRAIN_LOSS] == pytest.approx(2.0) and run.data.tags[M.TAG_VERDICT] == M.STABLE
