"""`slwtune tune`'s probe phase in this process: no Ray, no MLflow needed.

The same search as the job driver: the strategy object (`make_search`) proposes rounds,
each probe is `train_loop` over the probe window with `stop_when_unstable` (what a Tune
trial runs), the control probe (SLW off) joins round 1 and is never told to the search,
and the outcome is judged by the report's own `compare_with_control` and the driver's own
`full_run_plan`. For benchmarks (benchmarks/paper_effect.py) and machines without Ray.
The loop is the driver's `run_search` with an in-process round runner; crashed probes are
not retried (in one process a crash repeats).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from slwtune import metrics as M
from slwtune.driver import full_run_plan
from slwtune.spec import JobSpec
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning.report import compare_with_control
from slwtune.tuning.strategies import Probe, make_search
from slwtune.tuning.tune_glue import CURVE_COLUMNS, ProbeResult, spike_fields

__all__ = ["CPU_S", "LocalTuning", "StepRecorder", "probe_spec", "run_probe", "tune_locally"]

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

    @property
    def probes(self) -> list[ProbeResult]:
        """Every probe run, the control last."""
        return self.results + ([self.control] if self.control is not None else [])

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.probes)

    @property
    def wall_s(self) -> float:
        return sum(p.wall_s for p in self.probes)

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    @property
    def baseline_wins(self) -> bool:
        return bool(self.comparison["baseline_wins"])

    def full_run_plan(self, spec: JobSpec) -> tuple[bool, Probe | None, ProbeResult | None]:
        """(run it?, knobs or None for the baseline, probe to continue from): the driver's own rule."""
        return full_run_plan(spec, self.chosen, self.baseline_wins, self.control, self.results)

    def cleanup(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def probe_spec(spec: JobSpec, probe: Probe) -> JobSpec:
    """The spec one probe trains: SLW off for the control, else the probe's two knobs."""
    return spec.without_slw() if not probe.slw else spec.with_slw(probe.start_length, probe.duration_steps)


def _curve_row(report: dict) -> list:
    """[step, val ppl, loss ratio, tokens] of one report, as `tune_glue` builds a probe's curve."""
    out = []
    for key in CURVE_COLUMNS:
        value = report.get(key)
        ok = isinstance(value, (int, float)) and value < M.NONFINITE_STANDIN
        out.append(float(value) if ok else None)
    return out


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value < M.NONFINITE_STANDIN else None


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
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    wall = recorder.wall_s()
    if reports is not None:
        reports.extend(session.reports)
    last = session.reports[-1] if session.reports else {}
    verdict, reason = last.get(M.VERDICT), last.get(M.REASON, "")
    if error is not None:
        verdict, reason = M.FAILED, error
    elif verdict is None:
        verdict, reason = M.FAILED, "the probe reported nothing"
    return ProbeResult(
        start_length=probe.start_length, duration_steps=probe.duration_steps, verdict=verdict, reason=reason,
        early=bool(last.get(M.EARLY, False)), best_val_ppl=_num(last.get(M.BEST_VAL_PPL)),
        final_val_ppl=_num(last.get(M.VAL_PPL)), max_loss_ratio=_num(last.get(M.MAX_LOSS_RATIO)),
        steps=int(last.get(M.STEP) or 0), tokens=int(last.get(M.TRAIN_TOKENS) or 0), wall_s=wall,
        checkpoint=session.checkpoints[-1] if session.checkpoints else None, trial_id="",
        round=round_index, curve=[_curve_row(r) for r in session.reports], slw=probe.slw, **spike_fields(last))


def tune_locally(spec: JobSpec, *, device: str = "cpu", study_name: str = "local",
                 keep_checkpoints: bool = False, options: Callable[[Probe], dict] | None = None,
                 log: Callable[[str], None] | None = None) -> LocalTuning:
    """Run the spec's search (`tuning.strategy`) with in-process probes; nothing is trained in full.

    With `keep_checkpoints` every probe's last checkpoint is kept in `workdir` (so a full run
    can continue from the winning probe, as `tuning.reuse_probe_checkpoint` does); call
    `cleanup()` when done with them.
    """
    search = make_search(spec, study_name=study_name, default_storage="sqlite:///:memory:")
    workdir = tempfile.mkdtemp(prefix="slwtune-local-tune-") if keep_checkpoints else None
    out = LocalTuning(results=[], control=None, chosen=None, comparison={}, workdir=workdir)
    round_index = 0
    while probes := search.next_round():
        round_index += 1
        if round_index == 1 and spec.tuning.control_probe:
            probes = [*probes, Probe.control(spec.slw.full_length)]
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
        out.control = next((r for r in batch if not r.slw), out.control)
        batch = [r for r in batch if r.slw]
        out.results.extend(batch)
        search.tell(r.outcome() for r in batch)
    out.chosen = search.chosen()
    out.comparison = compare_with_control(out.results, out.control)
    out.notes, out.violations = list(search.notes), list(search.violations())
    return out
