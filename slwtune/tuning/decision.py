"""What the job does after the search: race or not, who won, the full run's plan, the job's outcome.

Torch-free and Ray-free, beside the strategies: the Ray driver (`slwtune.driver`) and the in-process
tuning (`slwtune.tuning.local`) both decide through these functions; only the race's runner differs
(`decide(..., race=...)`).
"""

from __future__ import annotations

from typing import Callable

from slwtune import metrics as M
from slwtune.spec import JobSpec
from slwtune.tuning import race as R
from slwtune.tuning.race import ARM_BASELINE, ARM_SLW
from slwtune.tuning.report import SLW_NOT_NEEDED, compare_with_control
from slwtune.tuning.results import ProbeResult
from slwtune.tuning.strategies import Probe

RaceRunner = Callable[[Probe, ProbeResult, ProbeResult], "tuple[dict[str, R.Arm], R.Decision]"]


def race_skipped_because(spec: JobSpec, chosen: Probe | None, seed: ProbeResult | None,
                         control: ProbeResult | None) -> str | None:
    """Why there is no race (None: there is one). Without a race, a stable control wins only when
    no SLW probe was stable, and SLW stays otherwise (the control cannot be judged)."""
    if not spec.tuning.race:
        return "tuning.race is off: decided on the probe window alone (an early comparison)"
    if control is None:
        return "no control probe (tuning.control_probe is off)"
    if control.verdict in M.RUN_FAILED_VERDICTS:  # a fluctuating control still trains: the race judges it
        return f"the control probe {control.verdict}: SLW stays"
    if chosen is None:
        return "no SLW probe was stable: the baseline runs"
    if spec.model.entrypoint:
        return "a training function (model.entrypoint) cannot stop at a token count: no race"
    if seed is None or not seed.checkpoint or not control.checkpoint:
        return "a probe checkpoint to race from is missing"
    return None


def decide(spec: JobSpec, chosen: Probe | None, results: list[ProbeResult], control: ProbeResult | None,
           race: RaceRunner) -> tuple[dict, dict, dict | None]:
    """(the report's `comparison`, its `decision`, the race's arms or None) after the search.

    `race(chosen, seed, control)` runs the race and returns (arms, Decision): on Ray for the driver,
    in-process for tune_locally. The comparison is the probe window's (early) view, with who won
    (`baseline_wins`) and, when the baseline did, the message that says so.
    """
    comparison = compare_with_control(results, control)
    seed = winning_probe(results, chosen)
    why_not = race_skipped_because(spec, chosen, seed, control)
    arms = None
    if why_not is None:
        arms, raced = race(chosen, seed, control)
        baseline, decision = raced.winner == ARM_BASELINE, R.decision_report(spec, arms, raced)
    else:
        if not spec.tuning.race:
            baseline = comparison[M.REPORT_BASELINE_WINS]
        else:
            baseline = control is not None and control.verdict == M.STABLE and chosen is None
        decision = R.decision_report(spec, None, None, note=why_not)
        decision["winner"] = ARM_BASELINE if baseline else (ARM_SLW if chosen else None)
    comparison.update({M.REPORT_BASELINE_WINS: baseline, M.REPORT_MESSAGE: SLW_NOT_NEEDED if baseline else None})
    return comparison, decision, arms


def start_point(arms: dict | None, knobs: Probe | None, seed_probe: ProbeResult | None) -> str | None:
    """The checkpoint the full run continues from: the raced arm with these knobs, else the probe."""
    if arms is not None:
        return arms[ARM_SLW if knobs else ARM_BASELINE].checkpoint
    return seed_probe.checkpoint if seed_probe else None


def winning_probe(results: list[ProbeResult], chosen: Probe | None) -> ProbeResult | None:
    """The stable probe that ran the chosen knobs (its checkpoint can seed the full run)."""
    if chosen is None:
        return None
    return next((r for r in results if r.verdict == M.STABLE and r.start_length == chosen.start_length
                 and r.duration_steps == chosen.duration_steps), None)


def job_outcome(results: list[ProbeResult], chosen: Probe | None, full_run: dict | None,
                baseline_wins: bool = False) -> tuple[str, str | None]:
    """(outcome, error) of a job, told truthfully: a crash is not instability, a failed full run is a failure."""
    if results and all(r.verdict == M.FAILED for r in results):
        return M.OUTCOME_PROBES_CRASHED, f"probes crashed: {results[0].reason}"
    if chosen is None and not baseline_wins:
        return M.OUTCOME_NONE_STABLE, None
    if full_run is not None and full_run["verdict"] in M.RUN_FAILED_VERDICTS:
        return M.OUTCOME_RUN_FAILED, f"full run {full_run['verdict']}: {full_run['reason']}"
    return M.OUTCOME_DONE, None


def full_run_plan(spec: JobSpec, chosen: Probe | None, baseline_wins: bool,
                  control: ProbeResult | None, results: list[ProbeResult]) -> tuple[bool, Probe | None, ProbeResult | None]:
    """(run it?, knobs or None for the baseline, probe to continue from), by `tuning.when_baseline_wins`."""
    if baseline_wins and spec.tuning.when_baseline_wins == "stop":
        return False, None, None
    if baseline_wins and (spec.tuning.when_baseline_wins == "run_baseline" or chosen is None):
        return True, None, control
    return chosen is not None, chosen, winning_probe(results, chosen)
