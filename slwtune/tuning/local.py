"""`slwtune tune`'s probe phase in this process: no Ray, no MLflow needed.

The same search as the job driver: the strategy object (`make_search`) proposes rounds,
each probe is `train_loop` over the probe window with `stop_when_unstable` (what a Tune
trial runs), the control probe (SLW off) joins round 1 and is never told to the search,
and the decision is the driver's own: the same race between the best SLW candidate and the
control (slwtune.tuning.race, its segments in this process) and the same `full_run_plan`.
For benchmarks (benchmarks/paper_effect.py) and machines without Ray.
The loop is `slwtune.tuning.loop.run_search` with an in-process round runner; crashed probes
are not retried (in one process a crash repeats).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from slwtune import metrics as M
from slwtune.sessions import LocalSession
from slwtune.spec import JobSpec
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning import race as R
from slwtune.tuning.decision import decide, full_run_plan, start_point
from slwtune.tuning.loop import run_search
from slwtune.tuning.race_runs import local_segment_runner
from slwtune.tuning.results import ProbeResult, curve_row, probe_from, probe_spec
from slwtune.tuning.searches import make_search
from slwtune.tuning.strategies import Probe

__all__ = ["CPU_S", "LocalTuning", "StepRecorder", "run_probe", "tune_locally"]

CPU_S = "cpu_s"  # a recorded row's seconds of this process's CPU time since its run started


class StepRecorder:
    """`RunOptions.on_step` that keeps every step's row, stamped with the seconds since the
    recorder was made: wall clock (`M.WALL_S`) and this process's CPU time (`CPU_S`)."""

    def __init__(self):
        self.rows: list[dict] = []
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def __call__(self, row: dict) -> None:
        self.rows.append({**row, M.WALL_S: self.wall_s(), CPU_S: self.cpu_s()})

    def wall_s(self) -> float:
        return time.perf_counter() - self._wall0

    def cpu_s(self) -> float:
        return time.process_time() - self._cpu0


@dataclass
class LocalTuning:
    """What the probe phase found and what it cost (every probe, the control included)."""

    results: list[ProbeResult]
    control: ProbeResult | None
    chosen: Probe | None
    comparison: dict
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    reports: dict[Probe, list[dict]] = field(default_factory=dict)  # each probe's reports, for curves
    rows: dict[Probe, list[dict]] = field(default_factory=dict)     # each probe's steps (StepRecorder rows)
    cpu_s: dict[Probe, float] = field(default_factory=dict)         # each probe's CPU seconds, setup included
    workdir: str | None = None  # holds the probes' last checkpoints; `cleanup()` removes it
    decision: dict | None = None    # the report's `decision` (the race, or why there was none)
    arms: dict[str, R.Arm] | None = None  # the race's arms (None: no race)
    race_reports: dict[str, list[dict]] = field(default_factory=dict)  # each arm's race reports
    race_rows: dict[str, list[dict]] = field(default_factory=dict)     # each arm's race steps
    race_cpu_s: dict[str, float] = field(default_factory=dict)   # each arm's race CPU seconds
    race_wall_s: dict[str, float] = field(default_factory=dict)  # each arm's race wall seconds

    @property
    def probes(self) -> list[ProbeResult]:
        """Every probe run, the control last."""
        return self.results + ([self.control] if self.control is not None else [])

    @property
    def tokens(self) -> int:
        """Tokens of the tuning: every probe and both arms of the race."""
        return sum(p.tokens for p in self.probes) + sum(a.race_tokens for a in (self.arms or {}).values())

    @property
    def wall_s(self) -> float:
        return sum(p.wall_s for p in self.probes) + sum(self.race_wall_s.values())

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values()) + sum(self.race_cpu_s.values())

    def start_point(self, knobs: Probe | None, seed_probe: ProbeResult | None) -> str | None:
        """The checkpoint the full run continues from: the race arm with these knobs, else the probe."""
        return start_point(self.arms, knobs, seed_probe)

    @property
    def baseline_wins(self) -> bool:
        return bool(self.comparison[M.REPORT_BASELINE_WINS])

    def full_run_plan(self, spec: JobSpec) -> tuple[bool, Probe | None, ProbeResult | None]:
        """(run it?, knobs or None for the baseline, probe to continue from): the driver's own rule."""
        return full_run_plan(spec, self.chosen, self.baseline_wins, self.control, self.results)

    def cleanup(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def run_probe(spec: JobSpec, probe: Probe, *, round_index: int, device: str = "cpu",
              checkpoint_root: str | None = None, options: Callable[[Probe], dict] | None = None,
              recorder: StepRecorder | None = None, reports: list | None = None) -> ProbeResult:
    """One probe over `spec.probe_steps()` in this process, as a `ProbeResult`.

    `options(probe)` adds RunOptions fields (MLflow run ids, ...); `recorder` sees every
    step and `reports` gets every report when given. Its `wall_s` counts from the call
    (setup included). A crash is verdict `failed` with the exception as the reason: it
    says nothing about SLW.
    """
    recorder = recorder or StepRecorder()
    session = LocalSession(checkpoint_root=checkpoint_root, device=device)
    extra = dict(options(probe)) if options else {}
    run_options = RunOptions(max_steps=spec.probe_steps(), stop_when_unstable=True, on_step=recorder, **extra)
    error = None
    try:
        train_loop(probe_spec(spec, probe), run_options, session)
    except Exception as exc:  # noqa: BLE001 - one probe fails alone, as a Tune trial does
        error = exc
    if reports is not None:
        reports.extend(session.reports)
    return probe_from(session.reports[-1] if session.reports else {}, probe.as_config(), round_index=round_index,
                      error=error, curve=[curve_row(r) for r in session.reports], wall_s=recorder.wall_s(),
                      checkpoint=session.checkpoints[-1] if session.checkpoints else None,
                      silent="the probe reported nothing")


def tune_locally(spec: JobSpec, *, device: str = "cpu", study_name: str = "local",
                 keep_checkpoints: bool = False, options: Callable[[Probe], dict] | None = None,
                 race_options: Callable[[R.Arm], dict] | None = None,
                 log: Callable[[str], None] | None = None) -> LocalTuning:
    """Run the spec's search (`tuning.strategy`) with in-process probes, then the driver's race
    between the best SLW candidate and the control; the full run itself is the caller's.

    With `keep_checkpoints` (or a race, which continues from the probes) every probe's and arm's
    last checkpoint is kept in `workdir` (so a full run can continue from the race winner, as
    `tuning.reuse_probe_checkpoint` does); call `cleanup()` when done with them.
    """
    search_spec, fit_note = spec.fitted_to_run()
    search = make_search(search_spec, study_name=study_name, default_storage="sqlite:///:memory:")
    races = spec.tuning.race and spec.tuning.control_probe
    workdir = tempfile.mkdtemp(prefix="slwtune-local-tune-") if (keep_checkpoints or races) else None
    out = LocalTuning(results=[], control=None, chosen=None, comparison={}, workdir=workdir)

    def run_round(probes: list[Probe], round_index: int) -> list[ProbeResult]:
        batch = []
        for i, probe in enumerate(probes):
            root = f"{workdir}/r{round_index}-p{i}" if workdir else None
            recorder, reports = StepRecorder(), out.reports.setdefault(probe, [])
            result = run_probe(spec, probe, round_index=round_index, device=device, checkpoint_root=root,
                               options=options, recorder=recorder, reports=reports)
            out.rows[probe], out.cpu_s[probe] = recorder.rows, recorder.cpu_s()
            if log:
                log(f"round {round_index}: {'control (SLW off)' if not probe.slw else probe.as_config()} "
                    f"-> {result.verdict} ({result.steps} steps, {result.wall_s:.0f}s) {result.reason}")
            batch.append(result)
        return batch

    run = run_search(search, run_round,
                     control_length=spec.slw.full_length if spec.tuning.control_probe else None)
    out.results, out.control = run.results, run.control
    out.chosen = search.chosen()
    out.notes, out.violations = [fit_note] * bool(fit_note) + list(search.notes), list(search.violations())
    out.comparison, out.decision, out.arms = decide(
        spec, out.chosen, out.results, out.control,
        lambda *probes: race_locally(spec, out, *probes, device=device, options=race_options, log=log))
    return out


def race_locally(spec: JobSpec, out: LocalTuning, chosen: Probe, seed: ProbeResult, control: ProbeResult, *,
                 device: str, options: Callable[[R.Arm], dict] | None,
                 log: Callable[[str], None] | None) -> tuple[dict, R.Decision]:
    """The driver's race with its segments in this process; every arm's reports and steps kept in `out`."""
    arms = R.start_arms(spec, chosen, seed, control)
    recorders: dict[str, StepRecorder] = {}

    def arm_options(arm: R.Arm) -> dict:
        recorders[arm.name] = StepRecorder()
        return {**(options(arm) if options else {}), "on_step": recorders[arm.name]}

    def keep(arm: R.Arm, reports: list[dict]) -> None:
        """Rows stamped with the time since the arm's race began (each segment's recorder starts at 0)."""
        rec, wall0, cpu0 = recorders[arm.name], out.race_wall_s.get(arm.name, 0.0), out.race_cpu_s.get(arm.name, 0.0)
        out.race_reports.setdefault(arm.name, []).extend(reports)
        out.race_rows.setdefault(arm.name, []).extend({**r, M.WALL_S: r[M.WALL_S] + wall0, CPU_S: r[CPU_S] + cpu0}
                                                      for r in rec.rows)
        out.race_wall_s[arm.name], out.race_cpu_s[arm.name] = wall0 + rec.wall_s(), cpu0 + rec.cpu_s()

    runner = local_segment_runner(spec, out.workdir, device=device, options=arm_options, on_reports=keep)
    return arms, R.race(spec, arms, runner, log=log)
