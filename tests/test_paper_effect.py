"""benchmarks/paper_effect.py: the pure analysis, the shipped defaults, and `--quick` end to end."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slwtune.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "paper_effect.py"
sys.path.insert(0, str(ROOT / "benchmarks"))  # as the script sees its parts: beside it

import paper_analysis  # noqa: E402
import paper_arms  # noqa: E402


def job(**over):
    data = {"name": "pe", "data": {"batch_size": 16}, "optim": {"lr_warmup_steps": 20},
            "slw": {"full_length": 128, "start_length": 8}, "budget": {"train_tokens": 16 * 128 * 200}}
    for key, value in over.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return parse_spec(data)


# ---- the defaults other tools ship -------------------------------------------------------------


def test_composer_default_is_30_percent_of_the_baseline_steps():
    assert paper_arms.baseline_steps(job()) == 200
    assert paper_arms.composer_knobs(job()) == (8, 60)
    assert paper_arms.composer_knobs(job(budget__train_tokens=16 * 128 * 333 + 1)) == (8, 100)  # 334 steps


def test_deepspeed_default_is_five_lr_warmups():
    assert paper_arms.deepspeed_knobs(job()) == (8, 100)
    assert paper_arms.deepspeed_knobs(job(optim__lr_warmup_steps=0)) == (8, 5)


def test_slw_spec_uses_step_8_fixed_linear_truncation():
    s = paper_arms.slw_spec(job(slw__step_size=16, slw__start_length=16, slw__pacing="fixed_root"), 8, 60)
    assert (s.slw.enabled, s.slw.start_length, s.slw.duration_steps, s.slw.step_size) == (True, 8, 60, 8)
    assert (s.slw.pacing, s.slw.mode) == ("fixed_linear", "truncate")


def test_full_runs_do_not_stop_on_a_loss_spike():
    s = paper_arms.full_run_spec(job())
    assert s.tuning.stability.loss_ratio_max == paper_arms.NO_RATIO_STOP
    assert s.tuning.stability.loss_ceiling_margin == 1000.0  # its largest value: off in effect
    assert job().tuning.stability.loss_ratio_max == 1.5  # the probes keep the spec's threshold


# ---- curves and targets --------------------------------------------------------------------------


def test_first_reach_interpolates_between_evaluations():
    curve = [(100, 4.0), (200, 3.0), (300, 2.0)]
    assert paper_analysis.first_reach(curve, 2.5) == pytest.approx(250)
    assert paper_analysis.first_reach(curve, 4.5) == 100
    assert paper_analysis.first_reach(curve, 1.9) is None
    # the first time it gets there, even when it rises again later
    assert paper_analysis.first_reach([(1, 5.0), (2, 3.0), (3, 4.0), (4, 2.0)], 3.5) == pytest.approx(1.75)


def test_mean_curve_averages_on_the_common_range():
    a, b = [(0, 4.0), (10, 2.0)], [(5, 3.0), (20, 1.0)]
    assert paper_analysis.mean_curve([a, b]) == [(5, pytest.approx((3.0 + 3.0) / 2)),
                                                 (10, pytest.approx((2.0 + 3.0 - 2 / 3) / 2))]
    assert paper_analysis.mean_curve([]) == []


def fake_run(arm, lr, seed, evals, final=None, tuning_tokens=0, ratios=(1.0,)):
    steps = [{"train/loss_ratio": r, "optim/adam_var_max": lr * i} for i, r in enumerate(ratios)]
    curve = paper_analysis.Curve(evals=[(t, t / 1000, t / 2000, v) for t, v in evals], steps=steps)
    return paper_analysis.Run(arm, lr, seed, "k", curve, final if final is not None else evals[-1][1], "stable",
                              int(evals[-1][0]), 1.0, 1.0, tuning_tokens=tuning_tokens)


def synthetic_runs():
    """Baseline at 0.01 ends at 3.0 (the target); at 0.1 it stalls. SLW at 0.1 gets to 3.0 at 500 tokens."""
    runs = []
    for seed in (0, 1):
        runs += [
            fake_run("baseline", 0.01, seed, [(250, 3.5), (1000, 3.0)], ratios=(1.0, 1.3)),
            fake_run("baseline", 0.1, seed, [(250, 3.4), (1000, 3.3)], ratios=(1.6, 1.3)),
            fake_run("tuned", 0.1, seed, [(400, 3.2), (600, 2.8), (1200, 2.7)], tuning_tokens=300),
            fake_run("composer", 0.1, seed, [(250, 3.2), (1000, 2.8)]),
            fake_run("deepspeed", 0.1, seed, [(250, 3.1), (1000, 2.9)]),
        ]
    return runs


def test_summary_targets_the_best_baseline_and_reports_speedups():
    summary = paper_analysis.summarize(synthetic_runs())
    assert summary["best_baseline_lr"] == 0.01 and summary["target_val_loss"] == pytest.approx(3.0)
    rows = {(r["lr"], r["arm"]): r for r in summary["rows"]}
    assert rows[(0.01, "baseline")]["tokens_to_target"] == pytest.approx(1000)
    assert rows[(0.1, "baseline")]["tokens_to_target"] is None
    assert rows[(0.1, "tuned")]["tokens_to_target"] == pytest.approx(500)
    assert rows[(0.1, "deepspeed")]["tokens_to_target"] == pytest.approx(250 + 750 * 0.1 / 0.2)
    h = summary["headline"]
    assert h["tokens_to_target_speedup"] == pytest.approx(1000 / 500)
    assert h["time_to_target_speedup"] == pytest.approx(1000 / 500)  # wall = tokens / 1000 here
    assert h["tuned_vs_default_val_loss"] == pytest.approx(2.7 - 2.8)
    # per run: 0.01 has one step > 1.2, 0.1 has two > 1.2 and one > 1.5; the mean over the 4 runs
    assert h["spikes_baseline"] == {"gt_1.2": pytest.approx(1.5), "gt_1.5": pytest.approx(0.5)}
    assert h["spikes_slw"] == {"gt_1.2": 0.0, "gt_1.5": 0.0}
    assert h["best_slw_by_tokens"] == "tuned@lr=0.1"
    assert rows[(0.1, "baseline")]["max_adam_var"] == pytest.approx(0.1)  # the largest over the run


def test_no_speedup_when_no_slw_arm_reaches_the_target():
    runs = [r for r in synthetic_runs() if r.arm == "baseline"]
    runs += [fake_run("tuned", 0.1, s, [(500, 3.2), (1000, 3.1)]) for s in (0, 1)]
    h = paper_analysis.summarize(runs)["headline"]
    assert h["tokens_to_target_speedup"] is None and h["time_to_target_speedup"] is None
    assert h["tuned_vs_default_val_loss"] is None  # no default arm ran


# ---- end to end ------------------------------------------------------------------------------------


def run_script(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_outputs(proc, out: Path, lrs: list[float], seeds: int):
    lines = proc.stdout.strip().splitlines()
    headline = json.loads(lines[-1])
    for key in ("tokens_to_target_speedup", "time_to_target_speedup", "tuned_vs_default_val_loss"):
        assert key in headline
        assert headline[key] is None or math.isfinite(headline[key])
    for key in ("spikes_baseline", "spikes_slw"):
        assert set(headline[key]) == {"gt_1.2", "gt_1.5"}
        assert all(v is None or v >= 0 for v in headline[key].values())
    assert headline["spikes_baseline"]["gt_1.5"] <= headline["spikes_baseline"]["gt_1.2"]
    results = json.loads((out / "results.json").read_text())
    assert {(r["lr"], r["arm"]) for r in results["rows"]} == {(lr, a) for lr in lrs for a in paper_arms.ARMS}
    assert len(results["runs"]) == len(lrs) * len(paper_arms.ARMS) * seeds
    assert results["headline"] == headline
    # the target is a baseline's final val loss, and that baseline reaches it
    best = [r for r in results["rows"] if r["arm"] == "baseline" and r["lr"] == results["best_baseline_lr"]][0]
    assert best["final_val_loss"] == pytest.approx(results["target_val_loss"])
    assert best["tokens_to_target"] is not None
    for run in results["runs"]:
        evals = run["evals"]
        if run["arm"] == "tuned":
            assert run["tuning_tokens"] > 0
            if evals:  # its curve starts after the other probes: tuning is counted
                assert evals[-1][0] > run["tuning_tokens"]
        elif evals:
            assert run["tuning_tokens"] == 0 and evals[-1][0] == run["tokens"]
    table = (out / "table.md").read_text()
    assert all(f"| {arm} |" in table for arm in paper_arms.ARMS)
    assert "curriculum-learning.md" in table and "seq_length_warmup" in table  # the defaults are cited
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_quick_runs_every_arm_and_ends_with_json(tmp_path):
    proc = run_script(tmp_path, "--quick")
    scale = paper_arms.SCALES["quick"]
    check_outputs(proc, tmp_path, list(scale.lrs), scale.seeds)


def test_gpu_scale_dry_run_on_cpu(tmp_path):
    proc = run_script(tmp_path, "--gpu", "--dry-run", "--seeds", "1")
    results = check_outputs(proc, tmp_path, list(paper_arms.SCALES["gpu"].lrs), 1)
    assert results["device"] == "cpu" and results["dry_run"]
    assert results["spec"]["model"]["preset"] == "gpt2-117m"
    assert results["spec"]["data"]["batch_size"] // results["spec"]["data"]["micro_batch_size"] > 1  # accumulation


def test_everything_under_one_mlflow_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_script(tmp_path, "--quick", "--seeds", "1", "--lrs", "0.03", "--mlflow-uri", uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("paper-effect")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    arms = {r.data.tags.get("arm") for r in children}
    assert arms == set(paper_arms.ARMS)
    assert any(r.data.tags.get("slwtune.kind") == "control" for r in children)
    assert all(r.data.metrics.get("val/loss") is not None for r in children if r.data.tags.get("slwtune.kind") == "train")
    assert {"target_val_loss", "spikes_baseline_gt_1.2", "spikes_slw_gt_1.5"} <= set(parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"table.md", "results.json", "curves.png"} <= artifacts
    assert parent.info.status == "FINISHED"


def test_jobs_runs_seeds_in_processes_with_the_same_results(tmp_path):
    """--jobs only spreads (LR, seed) units over processes: every run's final loss is the serial one."""
    (tmp_path / "serial").mkdir()
    (tmp_path / "parallel").mkdir()
    serial = run_script(tmp_path / "serial", "--quick", "--seeds", "2", "--lrs", "0.03", "--mlflow-uri", "none")
    check_outputs(serial, tmp_path / "serial", [0.03], 2)
    parallel = run_script(tmp_path / "parallel", "--quick", "--seeds", "2", "--lrs", "0.03", "--jobs", "2",
                          "--mlflow-uri", "none")
    check_outputs(parallel, tmp_path / "parallel", [0.03], 2)

    def finals(path):
        runs = json.loads((path / "results.json").read_text())["runs"]
        return sorted((r["arm"], r["seed"], r["final_val_loss"]) for r in runs)

    assert finals(tmp_path / "parallel") == finals(tmp_path / "serial")


def test_jobs_refuses_mlflow(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--jobs", "2", "--mlflow-uri", "http://x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--jobs=2" in proc.stderr and "--mlflow-uri" in proc.stderr
