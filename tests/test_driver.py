"""The job driver's round loop, retries and outcomes, with Ray and training replaced by fakes.

`run_round` and the full run's trainer are the only parts that touch Ray; here they answer
from a stated landscape, so a mistake in the loop shows in `make test-fast`.
"""

import json

import pytest

from slwtune import driver
from slwtune import metrics as M
from slwtune.cli import main
from slwtune.simulation import Landscape
from slwtune.spec import load_spec
from slwtune.tuning.results import ProbeResult
from slwtune.tuning.strategies import Probe


def probe_result(probe, verdict, reason="", round_index=1, tokens=1000, val_ppl=21.0):
    return ProbeResult(start_length=probe.start_length, duration_steps=probe.duration_steps, verdict=verdict,
                       reason=reason, early=False, best_val_ppl=val_ppl, final_val_ppl=val_ppl, max_loss_ratio=1.0,
                       steps=10, tokens=tokens, wall_s=1.0, checkpoint=f"/ckpt/{probe.start_length}-{probe.duration_steps}",
                       trial_id="", round=round_index, slw=probe.slw)


class FakeCluster:
    """Answers `run_round` from a landscape; `crash` decides which attempts crash; the control
    probe (SLW off) gets `control` = (verdict, val ppl): by default it diverges, as at a high LR."""

    def __init__(self, landscape: Landscape, crash=lambda probe, attempt: False, control=(M.DIVERGED, 40.0),
                 race_gap=0.0):
        self.landscape, self.crash, self.control, self.calls = landscape, crash, control, []
        self.race_gap, self.race_calls = race_gap, []  # the race: SLW's val loss = the control's + race_gap

    def run_race_round(self, spec, arms, until, index, **_):
        """Each live arm trains to `until`: evaluations every 256 tokens, the control's loss falling."""
        self.race_calls.append((index, until, [a.name for a in arms]))
        for arm in arms:
            grid = range(arm.tokens + 256 - arm.tokens % 256, until + 1, 256)
            arm.points += [[t, 6.0 - t / 1e4 + (self.race_gap if arm.slw else 0.0), 0.01] for t in grid]
            arm.tokens, arm.checkpoint, arm.segments = until, f"/race/{arm.name}/seg{index}", arm.segments + 1

    def answer(self, p, round_index, attempt):
        if self.crash(p, attempt):
            return probe_result(p, M.FAILED, "RuntimeError: worker died", round_index)
        if not p.slw:
            return probe_result(p, self.control[0], round_index=round_index, tokens=4000, val_ppl=self.control[1])
        return probe_result(p, self.landscape.verdict(p)[0], round_index=round_index)

    def run_round(self, spec, probes, *, round_index, attempt=1, **_):
        self.calls.append((round_index, attempt, list(probes)))
        return [self.answer(p, round_index, attempt) for p in probes]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    def install(cluster, full_run=None):
        monkeypatch.setattr(driver, "ensure_ray", lambda *a, **k: None)
        monkeypatch.setattr(driver, "run_round", cluster.run_round)
        monkeypatch.setattr(driver, "run_race_round", cluster.run_race_round)
        monkeypatch.setattr(driver, "make_trainer", lambda spec, options, *a, **k: cluster.trained.append(
            (spec.slw.enabled, options.init_checkpoint)))
        cluster.trained = []
        summary = {"verdict": M.STABLE, "reason": "", "steps": 100, "tokens": 10_000, "final_val_ppl": 12.0,
                   "best_val_ppl": 11.5, "max_loss_ratio": 1.1, "checkpoint": None, "error": None}
        summary.update(full_run or {})
        monkeypatch.setattr(driver, "fit_and_summarize", lambda trainer: dict(summary))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("SLWTUNE_STORAGE", str(tmp_path / "storage"))
        return cluster
    return install


def spec(*overrides):
    return load_spec("shakespeare-tiny", ["tuning.duration_min=8", "tuning.duration_max=64",
                                          "tuning.resolution=8", "tuning.max_rounds=4", *overrides])


def test_one_loop_runs_every_round_the_search_asks_for(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(diverged_below=20, fluctuating_above=40)))
    report = driver.run_job(spec(), tmp_path, job_id="j1")
    assert [c[0] for c in cluster.calls] == list(range(1, len(cluster.calls) + 1))
    assert len(report["trials"]) == sum(1 for c in cluster.calls for p in c[2] if p.slw)
    assert report["outcome"] == M.OUTCOME_DONE and report["error"] is None
    assert 32 <= report["chosen"]["duration_steps"] <= 40
    assert report["full_run"]["verdict"] == M.STABLE and report["full_run"]["slw_enabled"] is True
    assert json.loads((tmp_path / "report.json").read_text())["chosen"] == report["chosen"]


def test_a_crashed_probe_is_retried_once_and_its_retry_counts(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(), crash=lambda p, attempt: p.duration_steps == 64 and attempt == 1))
    report = driver.run_job(spec(), tmp_path, job_id="j2", full_run=False)
    retries = [c for c in cluster.calls if c[1] == 2]
    assert len(retries) == 1 and [p.duration_steps for p in retries[0][2]] == [64]
    assert report["chosen"]["duration_steps"] == 64  # the retry was stable
    assert any("retried 1 crashed probe" in n for n in report["notes"])


def test_every_probe_crashing_is_an_infrastructure_failure_without_advice(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(), crash=lambda p, attempt: True))
    report = driver.run_job(spec(), tmp_path, job_id="j3")
    assert cluster.trained == []
    assert report["outcome"] == M.OUTCOME_PROBES_CRASHED
    assert report["error"].startswith("probes crashed: RuntimeError: worker died")
    assert report["advice"] == [] and report["full_run"] is None


def test_no_stable_probe_gives_advice_and_no_full_run(fake, tmp_path):
    fake(FakeCluster(Landscape(fluctuating_above=1)))
    report = driver.run_job(spec(), tmp_path, job_id="j4")
    assert report["outcome"] == M.OUTCOME_NONE_STABLE and report["chosen"] is None
    assert report["advice"] and report["full_run"] is None


@pytest.mark.parametrize("verdict,reason", [(M.DIVERGED, "loss ratio 3.1 at step 57 above 1.5"),
                                            (M.FAILED, "TrainingFailedError: ...worker OOM")])
def test_a_full_run_that_diverges_or_crashes_fails_the_job(fake, tmp_path, verdict, reason):
    fake(FakeCluster(Landscape()), full_run={"verdict": verdict, "reason": reason})
    report = driver.run_job(spec(), tmp_path, job_id="j5")
    assert report["outcome"] == M.OUTCOME_RUN_FAILED
    assert report["error"] == f"full run {verdict}: {reason}"
    assert report["full_run"]["verdict"] == verdict and report["full_run"]["model"] is None


def printed_result(out: str) -> dict:
    """The CLI's result: the JSON object after the driver's progress lines."""
    return json.loads(out[out.index('{\n  "outcome"'):])


@pytest.mark.parametrize("full_run,landscape,code", [
    ({}, Landscape(), M.EXIT_OK),
    ({"verdict": M.DIVERGED, "reason": "at step 5"}, Landscape(), M.EXIT_RUN_FAILED),
    ({}, Landscape(fluctuating_above=1), M.EXIT_NONE_STABLE),
])
def test_cli_tune_exit_codes_follow_the_outcome(fake, tmp_path, capsys, full_run, landscape, code):
    fake(FakeCluster(landscape), full_run=full_run)
    assert main(["tune", "shakespeare-tiny", "--out", str(tmp_path)]) == code
    printed = printed_result(capsys.readouterr().out)
    assert printed["outcome"] == json.loads((tmp_path / "report.json").read_text())["outcome"]


def test_cli_tune_exits_3_when_every_probe_crashes(fake, tmp_path, capsys):
    fake(FakeCluster(Landscape(), crash=lambda p, attempt: True))
    assert main(["tune", "shakespeare-tiny", "--out", str(tmp_path)]) == M.EXIT_INFRA
    assert "probes crashed" in printed_result(capsys.readouterr().out)["error"]


def test_the_control_runs_in_round_one_only_and_is_never_told_to_the_search(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(diverged_below=20, fluctuating_above=40)))
    report = driver.run_job(spec(), tmp_path, job_id="c1")
    controls = [(c[0], p) for c in cluster.calls for p in c[2] if not p.slw]
    assert controls == [(1, driver.Probe.control(64))]
    assert all(t["duration_steps"] > 0 for t in report["trials"])
    assert report["control"]["verdict"] == M.DIVERGED and report["baseline_wins"] is False
    assert report["tuning_tokens"] == sum(t["tokens"] for t in report["trials"]) + report["control"]["tokens"]
    assert cluster.trained == [(True, f"/ckpt/8-{report['chosen']['duration_steps']}")]


def test_a_baseline_that_wins_the_race_runs_the_full_run_without_slw_from_its_race_checkpoint(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(), control=(M.STABLE, 15.0), race_gap=0.2))
    report = driver.run_job(spec(), tmp_path, job_id="c2")
    assert report["baseline_wins"] and "SLW is not needed" in report["message"]
    d = report["decision"]
    assert d["raced"] and d["winner"] == "baseline" and d["decided"] and d["gap"] > d["band"]
    assert report["full_run"]["slw_enabled"] is False and report["outcome"] == M.OUTCOME_DONE
    assert cluster.trained == [(False, "/race/baseline/seg1")]  # continues from the control's race checkpoint
    assert d["race_cost_tokens"] == d["arms"]["slw"]["race_tokens"] > 0  # the loser's tokens
    assert report["tuning_tokens"] == sum(t["tokens"] for t in report["trials"]) + 4000 + d["race_tokens"]
    md = (tmp_path / "report.md").read_text()
    assert "SLW is not needed" in md and "## Decision (race at equal tokens)" in md
    assert (tmp_path / "race.png").is_file()


def test_an_early_probe_window_lead_of_the_baseline_does_not_decide_the_race(fake, tmp_path):
    """The probe window's comparison favours the control (15 < 21 ppl), the race favours SLW."""
    cluster = fake(FakeCluster(Landscape(), control=(M.STABLE, 15.0), race_gap=-0.2))
    report = driver.run_job(spec("tuning.duration_max=16", "tuning.race_max_fraction=1.0"), tmp_path, job_id="c6")
    assert all(c["delta_val_loss"] > 0 for c in report["comparison"])  # early: the control looked better
    assert report["decision"]["winner"] == "slw" and not report["baseline_wins"] and report["message"] is None
    assert report["decision"]["tokens"] >= report["decision"]["slw_from_tokens"]
    assert cluster.trained == [(True, "/race/slw/seg1")]


def test_an_undecided_race_runs_the_baseline(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(), control=(M.STABLE, 30.0), race_gap=0.0))
    report = driver.run_job(spec(), tmp_path, job_id="c7")
    assert report["decision"]["winner"] == "baseline" and not report["decision"]["decided"]
    assert "undecided at the race budget" in report["decision"]["reason"] and report["baseline_wins"]
    assert cluster.trained == [(False, "/race/baseline/seg1")]


@pytest.mark.parametrize("choice,trained", [("stop", []), ("run_slw", [(True, "/race/slw/seg1")])])
def test_when_baseline_wins_decides_the_full_run(fake, tmp_path, choice, trained):
    cluster = fake(FakeCluster(Landscape(), control=(M.STABLE, 15.0), race_gap=0.2))
    report = driver.run_job(spec(f"tuning.when_baseline_wins={choice}"), tmp_path, job_id="c3")
    assert report["baseline_wins"] and cluster.trained == trained
    assert report["outcome"] == M.OUTCOME_DONE


def test_a_worse_baseline_leaves_slw_in_charge(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(), control=(M.STABLE, 30.0), race_gap=-0.2))
    report = driver.run_job(spec("tuning.duration_max=16", "tuning.race_max_fraction=1.0"), tmp_path, job_id="c4")
    assert not report["baseline_wins"] and report["message"] is None
    assert cluster.trained == [(True, "/race/slw/seg1")]


def test_without_the_race_the_probe_window_decides_as_before(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape(), control=(M.STABLE, 15.0)))
    report = driver.run_job(spec("tuning.race=false"), tmp_path, job_id="c8")
    assert report["baseline_wins"] and not report["decision"]["raced"] and cluster.race_calls == []
    assert cluster.trained == [(False, "/ckpt/64-0")]  # continues from the control probe


def test_a_resumed_job_goes_on_with_the_race_without_rerunning_finished_segments(fake, tmp_path):
    overrides = ("tuning.race_max_fraction=1.0", "tuning.race_patience=1")  # several segments, a wide band
    first = FakeCluster(Landscape(), control=(M.STABLE, 15.0), race_gap=0.0)
    original = first.run_race_round

    def dies_in_segment_2(spec_, arms, until, index, **kw):
        if index == 2:
            raise Killed()
        return original(spec_, arms, until, index, **kw)

    first.run_race_round = dies_in_segment_2
    fake(first)
    with pytest.raises(Killed):
        driver.run_job(spec(*overrides), tmp_path, job_id="r3")
    journal = json.loads((tmp_path / "job.json").read_text())["race"]
    assert journal["segments_done"] == 1 and journal["decision"] is None

    second = fake(FakeCluster(Landscape(), control=(M.STABLE, 15.0), race_gap=0.0))
    report = driver.run_job(None, tmp_path, resume=True)
    assert second.calls == [] and second.race_calls[0][0] == 2  # no probe, no first segment rerun
    assert report["decision"]["arms"]["slw"]["segments"] == len(second.race_calls) + 1


def test_the_control_can_be_turned_off(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape()))
    report = driver.run_job(spec("tuning.control_probe=false"), tmp_path, job_id="c5")
    assert report["control"] is None and all(p.slw for c in cluster.calls for p in c[2])


class Killed(BaseException):
    """The driver process dying mid-job (not an Exception: nothing in the driver may catch it)."""


def test_resume_does_not_rerun_finished_rounds(fake, tmp_path):
    first = FakeCluster(Landscape(diverged_below=20, fluctuating_above=40))
    original = first.run_round

    def dies_in_round_2(spec, probes, *, round_index, **kw):
        if round_index == 2:
            raise Killed()
        return original(spec, probes, round_index=round_index, **kw)

    first.run_round = dies_in_round_2
    fake(first)
    with pytest.raises(Killed):
        driver.run_job(spec(), tmp_path, job_id="r1")

    second = fake(FakeCluster(Landscape(diverged_below=20, fluctuating_above=40)))
    report = driver.run_job(None, tmp_path, resume=True)
    assert report["job_id"] == "r1"
    assert [c[0] for c in second.calls][0] == 2  # round 1 (with the control) came from job.json
    assert not any(not p.slw for c in second.calls for p in c[2])
    assert report["control"] is not None and [r["rounds_done"] for r in report["restarts"]] == [1]
    assert report["outcome"] == M.OUTCOME_DONE and 32 <= report["chosen"]["duration_steps"] <= 40


class DiesMidRound(FakeCluster):
    """Round 2 as a driver killed in the middle of it saw it: its first probe ended (journaled),
    the second had reported up to step 40, with a checkpoint at step 32, when the driver died."""

    def run_round(self, spec, probes, *, round_index, attempt=1, journal=None, **kw):
        if round_index < 2:
            return super().run_round(spec, probes, round_index=round_index, attempt=attempt, **kw)
        first, second = probes[0], probes[1]
        for step in (8, 16):
            journal.progress(first, "t-first", [step, 30.0, 1.0, step * 100], None)
        journal.done(self.answer(first, round_index, attempt))
        for step in (8, 16, 24, 32, 40):
            journal.progress(second, "t-second", [step, 30.0, 1.0, step * 100], "/ckpt/t-second" if step == 32 else None)
        raise Killed()


class Resumed(FakeCluster):
    """Records each round's probes with the resume knobs it got; its probes report steps 40 and 48."""

    def run_round(self, spec, probes, *, round_index, attempt=1, resume=None, journal=None, **kw):
        self.calls.append((round_index, attempt, list(probes)))
        self.resumed = getattr(self, "resumed", []) + [dict(resume or {})]
        results = [self.answer(p, round_index, attempt) for p in probes]
        for r in results:
            r.curve = [[40, 29.0, 1.0, 4000], [48, 28.0, 1.0, 4800]]
            r.trial_id = (resume or {}).get(r.probe, {}).get("resume_trial_id", "t-new")
        return results


def test_resume_reuses_the_finished_probes_of_a_round_and_continues_the_others_from_their_checkpoint(fake, tmp_path):
    landscape = Landscape(diverged_below=20, fluctuating_above=40)
    fake(DiesMidRound(landscape))
    with pytest.raises(Killed):
        driver.run_job(spec("tuning.control_probe=false"), tmp_path, job_id="p1")
    second = fake(Resumed(landscape))
    report = driver.run_job(None, tmp_path, resume=True)
    # each probe of round 2 once in the report, in the round's order
    first_probe, second_probe = [Probe(t["start_length"], t["duration_steps"]) for t in report["trials"]
                                 if t["round"] == 2]
    round_2 = [c for c in second.calls if c[0] == 2]
    assert [p for c in round_2 for p in c[2]] == [second_probe]  # the finished probe is not run again
    assert second.resumed[0] == {second_probe: {"resume_trial_id": "t-second", "resumed_from_step": 32}}
    resumed = json.loads((tmp_path / "job.json").read_text())["probes"]
    entry = resumed[f"round2/attempt1/s{second_probe.start_length}-T{second_probe.duration_steps}"]
    assert entry["result"]["resumed_from_step"] == 32 and entry["result"]["trial_id"] == "t-second"
    # its curve: the killed attempt's reports up to the checkpoint, then the resumed attempt's
    assert [row[0] for row in entry["result"]["curve"]] == [8, 16, 24, 32, 40, 48]
    assert report["outcome"] == M.OUTCOME_DONE


def test_resume_after_the_full_run_finished_does_not_train_again(fake, tmp_path):
    fake(FakeCluster(Landscape()))
    done = driver.run_job(spec(), tmp_path, job_id="r2")
    again = fake(FakeCluster(Landscape()))
    report = driver.run_job(None, tmp_path, resume=True)
    assert again.calls == [] and again.trained == []
    assert report["full_run"] == done["full_run"]


def test_resume_without_a_job_folder_names_the_folder(tmp_path):
    from slwtune.errors import SlwtuneError

    with pytest.raises(SlwtuneError, match=str(tmp_path)):
        driver.run_job(None, tmp_path, resume=True)


def test_probe_checkpoints_are_dropped_after_selection_except_the_one_continued(fake, tmp_path, monkeypatch):
    cluster = fake(FakeCluster(Landscape(fluctuating_above=40)))
    runs = tmp_path / "ray"
    original = cluster.answer

    def answer_with_checkpoint(p, round_index, attempt):
        r = original(p, round_index, attempt)
        ckpt = runs / f"probe-{p.start_length}-{p.duration_steps}" / "checkpoint_000"
        ckpt.mkdir(parents=True)
        r.checkpoint = str(ckpt)
        return r

    cluster.answer = answer_with_checkpoint
    report = driver.run_job(spec(), tmp_path / "out", job_id="k1")
    kept = sorted(p.name for p in runs.iterdir())
    assert kept == [f"probe-8-{report['chosen']['duration_steps']}"]
    assert any("deleted the checkpoints" in n for n in report["notes"])
    assert report["disk_bytes"] > 0


def test_keep_probe_checkpoints_keeps_them(fake, tmp_path):
    cluster = fake(FakeCluster(Landscape()))
    ckpt = tmp_path / "ray" / "probe" / "checkpoint_000"
    ckpt.mkdir(parents=True)
    original = cluster.answer
    cluster.answer = lambda p, i, a: (lambda r: (setattr(r, "checkpoint", str(ckpt)), r)[1])(original(p, i, a))
    driver.run_job(spec("tuning.keep_probe_checkpoints=true"), tmp_path / "out", job_id="k2")
    assert ckpt.is_dir()


def test_a_job_finishes_with_a_warning_when_mlflow_is_down(fake, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on: every MLflow call is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake(FakeCluster(Landscape()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    report = driver.run_job(spec(), tmp_path, job_id="m1")
    assert report["outcome"] == M.OUTCOME_DONE and report["chosen"] is not None
    assert report["warnings"] and all("MLflow unavailable" in w for w in report["warnings"])
    assert report["mlflow_parent_run_id"] is None


def test_a_fluctuating_control_still_races_a_diverged_one_does_not(fake, tmp_path):
    """An early val-ppl wobble does not make the control unusable: it trained, and the race judges it."""
    cluster = fake(FakeCluster(Landscape(), control=(M.FLUCTUATING, 15.0), race_gap=0.2))
    report = driver.run_job(spec(), tmp_path / "a", job_id="f1")
    assert report["decision"]["raced"] and report["decision"]["winner"] == "baseline"
    assert cluster.trained == [(False, "/race/baseline/seg1")]
    cluster = fake(FakeCluster(Landscape(), control=(M.DIVERGED, 15.0)))
    report = driver.run_job(spec(), tmp_path / "b", job_id="f2")
    assert not report["decision"]["raced"] and "diverged" in report["decision"]["reason"]
    assert report["decision"]["winner"] == "slw" and cluster.race_calls == []


def test_race_runs_are_dropped_as_the_race_goes_on_except_the_one_continued(fake, tmp_path):
    cluster = FakeCluster(Landscape(), control=(M.STABLE, 15.0), race_gap=0.0)
    original = cluster.run_race_round
    runs = tmp_path / "storage"

    def with_run_folders(spec_, arms, until, index, **kw):
        original(spec_, arms, until, index, **kw)
        for arm in arms:
            ckpt = runs / f"job-race-{arm.name}-seg{index}" / "checkpoint_000"
            ckpt.mkdir(parents=True)
            arm.checkpoint = str(ckpt)

    cluster.run_race_round = with_run_folders
    fake(cluster)
    report = driver.run_job(spec("tuning.race_max_fraction=1.0", "tuning.race_patience=1"), tmp_path / "out",
                            job_id="k3")
    segments = report["decision"]["arms"]["baseline"]["segments"]
    assert segments > 1 and report["decision"]["winner"] == "baseline"
    assert sorted(p.name for p in runs.iterdir()) == [f"job-race-baseline-seg{segments}"]
    assert cluster.trained == [(False, str(runs / f"job-race-baseline-seg{segments}" / "checkpoint_000"))]


def test_cli_tune_exits_4_naming_an_entrypoint_it_cannot_import(tmp_path, capsys):
    # invalid input, not a tuning result: exit 2 would read as "no stable configuration"
    code = main(["tune", "shakespeare-tiny", "--set", "model.entrypoint=no_such_pkg_xyz.loop:train",
                 "--out", str(tmp_path)])
    assert code == M.EXIT_INVALID
    from service.jobs.results import cli_error

    said = cli_error(capsys.readouterr().err)  # what the service reads from the driver's log
    assert said.startswith("invalid job spec: model.entrypoint='no_such_pkg_xyz.loop:train': cannot import")


def test_help_lists_one_meaning_per_exit_code():
    from slwtune.cli import build_parser

    lines = [line.split(None, 1) for line in build_parser().epilog.splitlines()[1:] if line.strip()]
    codes = [int(code) for code, _ in lines]
    assert codes == sorted(set(codes)) and M.EXIT_INVALID in codes and M.EXIT_NONE_STABLE in codes
    meaning = dict((int(code), text) for code, text in lines)
    assert "invalid" in meaning[M.EXIT_INVALID] and "invalid" not in meaning[M.EXIT_NONE_STABLE]
