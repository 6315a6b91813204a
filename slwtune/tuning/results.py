"""What a probe is and what it gave: the knobs' spec, its result, and the one way reports become results.

Torch-free and Ray-free (beside the strategies): the Ray glue (`tune_glue`), the in-process
probes (`local`), the journal (`job`) and the report all read and build `ProbeResult` here.

- `probe_spec(spec, probe)`: the spec one probe (or race arm, or full run) trains: SLW off for the
  control, else the probe's two knobs. The only place that turns knobs into a spec.
- `probe_from(report, knobs, ...)`: a run's last report -> `ProbeResult`; an error makes it
  `failed`. The only summary-to-result function: Tune results, the journal's trial ends and
  in-process probes all go through it.
- `finite_or_none`: a metric as a float, or None when absent, not finite, or the JSON stand-in for
  infinity (`M.NONFINITE_STANDIN`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from slwtune import metrics as M
from slwtune.spec import JobSpec
from slwtune.tuning.strategies import Outcome, Probe

CHECKPOINT_PATH_KEY = "checkpoint_path"  # added to metrics by TuneReportCallback
RESUME_TRIAL_KEY = "resume_trial_id"  # in a probe's knobs: the first trial of this probe, whose runs it goes on with
RESUME_STEP_KEY = "resumed_from_step"  # ... and the step of the checkpoint it goes on from
CURVE_COLUMNS = (M.STEP, M.VAL_PPL, M.TRAIN_LOSS_RATIO, M.TRAIN_TOKENS)


def probe_spec(spec: JobSpec, probe: Probe) -> JobSpec:
    """The spec one probe trains: SLW off for the control, else the probe's two knobs."""
    return spec.with_slw(probe.start_length, probe.duration_steps) if probe.slw else spec.without_slw()


def probe_of(knobs: dict) -> Probe:
    """The probe whose `as_config()` these knobs are (a Tune trial's lifted config)."""
    return Probe(int(knobs["start_length"]), int(knobs["duration_steps"]), bool(knobs.get("slw", True)))


def finite_or_none(value) -> float | None:
    """A metric as a float; None when absent, not a number, not finite, or the stand-in for inf."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value >= M.NONFINITE_STANDIN:
        return None
    return float(value)


@dataclass
class ProbeResult:
    """One finished probe, as the report and the selection see it."""

    start_length: int
    duration_steps: int
    verdict: str
    reason: str
    early: bool
    best_val_ppl: float | None
    final_val_ppl: float | None
    max_loss_ratio: float | None
    steps: int
    tokens: int
    wall_s: float
    checkpoint: str | None
    trial_id: str
    round: int
    curve: list = None  # [(step, val_ppl, loss_ratio, tokens)] of every report, for plots and comparisons
    slw: bool = True     # False for the control probe
    mlflow_unsent: int = 0  # metrics MLflow never took (in the job folder's metrics/)
    spike_count: int = 0    # loss spikes seen, recovered ones included (slwtune.stability)
    spike_max_ratio: float | None = None  # the largest spike's loss ratio
    spike_step: int | None = None         # where it was
    resumed_from_step: int | None = None  # its driver was lost mid-probe; it went on from this checkpoint
    val_loss_se: float | None = None      # its last evaluation's standard error (nats): the evidence behind its verdict

    @property
    def probe(self) -> Probe:
        return Probe(self.start_length, self.duration_steps, self.slw)

    def outcome(self) -> Outcome:
        return Outcome(self.probe, self.verdict, self.early, self.reason, self.best_val_ppl)

    def to_dict(self) -> dict:
        return asdict(self)


def probe_from(report: dict, knobs: dict, *, round_index: int, error: BaseException | str | None = None,
               curve: list | None = None, wall_s: float | None = None, checkpoint: str | None = None,
               trial_id: str = "", silent: str = "the trial reported nothing") -> ProbeResult:
    """A probe's last report and its knobs (`Probe.as_config()`, plus the resume keys) -> ProbeResult.

    An error makes it `failed` with the error as the reason, even after a stable report: it did not
    finish, and a crash says nothing about SLW. A probe that reported nothing is `failed` (`silent`).
    `wall_s` and `checkpoint` default to the report's own.
    """
    verdict, reason = report.get(M.VERDICT), report.get(M.REASON, "")
    if error is not None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {str(error)[:300]}"
        verdict, reason = M.FAILED, text
    elif verdict is None:
        verdict, reason = M.FAILED, silent
    probe = probe_of(knobs)
    resumed = knobs.get(RESUME_STEP_KEY) if knobs.get(RESUME_TRIAL_KEY) else None
    return ProbeResult(
        start_length=probe.start_length, duration_steps=probe.duration_steps, verdict=verdict, reason=reason,
        early=bool(report.get(M.EARLY, False)), best_val_ppl=finite_or_none(report.get(M.BEST_VAL_PPL)),
        final_val_ppl=finite_or_none(report.get(M.VAL_PPL)),
        max_loss_ratio=finite_or_none(report.get(M.MAX_LOSS_RATIO)), steps=int(report.get(M.STEP) or 0),
        tokens=int(report.get(M.TRAIN_TOKENS) or 0),
        wall_s=float(report.get(M.WALL_S) or 0.0) if wall_s is None else wall_s,
        checkpoint=checkpoint if checkpoint is not None else report_checkpoint(report, knobs),
        trial_id=knobs.get(RESUME_TRIAL_KEY) or trial_id, round=round_index, curve=curve or [], slw=probe.slw,
        mlflow_unsent=int(report.get(M.MLFLOW_UNSENT) or 0), resumed_from_step=resumed,
        val_loss_se=finite_or_none(report.get(M.VAL_LOSS_SE)), **spike_fields(report))


def spike_fields(report: dict) -> dict:
    """The ProbeResult spike fields from a run's last report (None where there was no spike)."""
    count = int(report.get(M.SPIKE_COUNT) or 0)
    return {"spike_count": count, "spike_max_ratio": finite_or_none(report.get(M.SPIKE_MAX_RATIO)) if count else None,
            "spike_step": int(report.get(M.SPIKE_STEP) or 0) or None}


def curve_row(report: dict) -> list:
    """[step, val ppl, loss ratio, tokens] of one report (None where absent or not finite)."""
    return [finite_or_none(report.get(c)) for c in CURVE_COLUMNS]


def report_checkpoint(report: dict, config: dict) -> str | None:
    """The checkpoint a Tune report came with (most reports have none), as a path or URI."""
    return with_storage_scheme(report.get(CHECKPOINT_PATH_KEY), config.get("storage"))


def with_storage_scheme(path: str | None, storage: str | None) -> str | None:
    """A checkpoint path as Tune reports it (no scheme) made whole again when storage is a URI.

    With `SLWTUNE_STORAGE=s3://bucket/runs` Tune reports `bucket/runs/...`; reading that back
    as a local path would miss the checkpoint, so the full run could not continue from it.
    """
    if not path or not storage or "://" not in storage or "://" in path:
        return path
    scheme = storage.split("://", 1)[0]
    return f"{scheme}://{path}"
