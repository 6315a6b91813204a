"""Request and response bodies of the REST API, one schema per direction, separate from the DB rows."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slwtune import metrics as M
from slwtune.spec import PRESET_NAME, PRESET_NAME_MAX

from service import states as S

JobState = Literal[S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED]
JobPhase = Literal[M.PHASE_PROBING, M.PHASE_SELECTING, M.PHASE_FULL_RUN]  # the driver's, less its final `done`


class JobCreate(BaseModel):
    """A job: a full spec, or a preset from /v1/search-spaces with dotted-key overrides."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"preset": "shakespeare-tiny", "overrides": {"optim.lr": 0.002, "tuning.max_rounds": 1}},
            {"spec": {"name": "my-gpt", "model": {"preset": "tiny"}, "budget": {"train_tokens": 40960}}},
        ]},
    )

    spec: dict[str, Any] | None = Field(None, description="a full job spec (see GET /v1/search-spaces/{name})")
    preset: str | None = Field(None, min_length=1, max_length=PRESET_NAME_MAX, pattern=PRESET_NAME.pattern,
                               description="a search-space preset name (GET /v1/search-spaces)")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description='{"dotted.key": value} applied to the spec or preset')

    @model_validator(mode="after")
    def _one_source(self) -> "JobCreate":
        if (self.spec is None) == (self.preset is None):
            raise ValueError("give exactly one of `spec` or `preset`")
        return self


class Chosen(BaseModel):
    """The SLW knobs the tuning selected."""

    start_length: int
    duration_steps: int


JobOutcome = Literal[M.OUTCOME_DONE, M.OUTCOME_RUN_FAILED, M.OUTCOME_NONE_STABLE, M.OUTCOME_PROBES_CRASHED]


class FullRun(BaseModel):
    """The full run as the driver's report tells it (report.json `full_run`)."""

    verdict: str | None = Field(None, description=" | ".join(M.VERDICTS))
    reason: str | None = Field(None, description="why it diverged or crashed: the step and the signal")
    steps: int | None = None
    tokens: int | None = None
    final_val_ppl: float | None = None
    best_val_ppl: float | None = None
    max_loss_ratio: float | None = None
    checkpoint: str | None = Field(None, description="the final training checkpoint (with its storage scheme)")
    model: str | None = Field(None, description="the exported model file (`slwtune.export.load_model`)")
    mlflow_run_id: str | None = None
    continued_from_probe: bool | None = None
    slw_enabled: bool | None = Field(None, description="false: the baseline ran (the control probe won)")
    mlflow_unsent: int | None = Field(None, description="metrics MLflow never took (kept in the job folder)")


class Decision(BaseModel):
    """The report's `decision`: which arm won the race at equal tokens, why, and what it cost."""

    model_config = ConfigDict(extra="ignore")

    raced: bool = False
    winner: Literal["slw", "baseline"] | None = None
    decided: bool | None = Field(None, description="false: undecided at the race budget (the safer arm went on)")
    rule: str | None = Field(None, description="band | diverged | budget")
    reason: str | None = None
    tokens: int | None = Field(None, description="where it was decided, in tokens")
    gap: float | None = Field(None, description="SLW minus control val loss at equal tokens (nats)")
    band: float | None = Field(None, description="the noise band the gap was judged against (nats)")
    race_tokens: int | None = Field(None, description="both arms' race tokens")
    race_cost_tokens: int | None = Field(None, description="the loser's race tokens: the race's cost")


class Evaluation(BaseModel):
    """The report's `evaluation`: how noisy the probes' evaluations were, against what `plan` assumed and
    what the fluctuation rule wants (`slwtune.tuning.evidence`)."""

    model_config = ConfigDict(extra="ignore")

    probes: int | None = Field(None, description="probes whose last evaluation gave a standard error")
    eval_sequences: int | None = Field(None, description="sequences one evaluation reads")
    se_measured: float | None = Field(None, description="median standard error of one evaluation (nats)")
    se_planned: float | None = Field(None, description="what `slwtune plan` assumed")
    se_target: float | None = Field(
        None, description="what the fluctuation rule wants: at most half its tolerance, ln(1 + ppl_rise_tolerance)")
    sequences_needed: int | None = Field(None, description="sequences one evaluation needs on this data")
    eval_batches_needed: int | None = Field(None, description="the run.eval_batches this data needs")
    large_enough: bool | None = Field(
        None, description="false: verdicts and the race's band were looser than planned (the report's note says why)")
    noise_bar: float | None = Field(None, description="the smallest rise (nats) the fluctuation rule counted")


class ControlProbe(BaseModel):
    """The baseline probe (SLW off over the probe window) the SLW probes are compared with."""

    verdict: str | None = None
    reason: str | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    tokens: int | None = None
    steps: int | None = None
    max_loss_ratio: float | None = None


class DriverRestart(BaseModel):
    """One time this service resubmitted the job's lost driver."""

    at: datetime
    reason: str = Field(description="how the driver was lost: the signal or exit code, or Ray's message")
    ray_submission_id: str = Field(description="the Ray submission of the restarted driver")
    resumed: bool = Field(description="true: `slwtune tune --resume` (finished rounds not rerun); "
                                      "false: from the start (the driver left no job.json)")


class JobLinks(BaseModel):
    ray_dashboard: str | None = Field(None, description="the Ray dashboard page of the job's driver")
    mlflow_run: str | None = Field(None, description="the MLflow parent run of the job")


class JobPublic(BaseModel):
    """A job as listed: state, phase, progress and the result once known."""

    id: str
    name: str
    state: JobState
    phase: JobPhase | None = Field(None, description="known once the driver reports it")
    progress: str | None = None
    chosen: Chosen | None = None
    error: str | None = None
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    ray_submission_id: str | None = Field(None, description="the current driver's (`<id>-r<n>` after restarts)")
    mlflow_parent_run_id: str | None = None
    links: JobLinks
    outcome: JobOutcome | None = Field(None, description="what the driver's report says happened, once it ended")
    full_run: FullRun | None = None
    control: ControlProbe | None = None
    baseline_wins: bool | None = Field(None, description="the decision's winner is the baseline (SLW off)")
    decision: Decision | None = Field(None, description="the race between SLW and the control that decided")
    evaluation: Evaluation | None = Field(None, description="the evaluation's measured noise, against the plan's")
    message: str | None = Field(None, description="the report's plain statement (e.g. SLW is not needed)")
    warnings: list[str] = Field(default_factory=list,
                                description="what went wrong around the job without failing it (MLflow down)")
    disk_bytes: int | None = Field(None, description="what the finished job keeps on disk: job folder + checkpoints")
    restarts: list[DriverRestart] = Field(default_factory=list)
    unavailable: dict[str, str] = Field(
        default_factory=dict,
        description="backends (ray, mlflow) this API cannot reach now: the fields that come from them are as "
                    "last seen (an unfinished job only)")


class JobDetail(JobPublic):
    """A job with its validated spec."""

    spec: dict[str, Any]


class JobDeleted(BaseModel):
    """What DELETE /v1/jobs/{id} removed."""

    id: str
    checkpoint_runs_deleted: int = Field(description="Ray Train/Tune runs of the job removed from the storage")
    bytes_freed: int = Field(description="checkpoints plus the job folder")
    mlflow_runs_deleted: int = Field(description="0 unless delete_mlflow_runs=true")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="jobs matching the filter, over all pages")


class TrialPublic(BaseModel):
    """One child run of the job's MLflow parent run: a probe trial or the full run."""

    run_id: str
    name: str | None = None
    kind: str | None = Field(None, description=f"{M.KIND_PROBE} | {M.KIND_FULL_RUN}")
    status: str = Field(description=f"the MLflow run status ({', '.join(S.RUN_STATUSES)})")
    round: int | None = None
    start_length: int | None = None
    duration_steps: int | None = None
    verdict: str | None = Field(None, description=" | ".join(M.VERDICTS))
    reason: str | None = None
    resumed_from_step: int | None = Field(
        None, description="a probe whose job driver was lost while it trained: it went on from its checkpoint "
                          "at this step, in the same run (the steps after it were trained again)")
    metrics: dict[str, float | None] = Field(default_factory=dict, description="last value of each metric")
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        # JSON has no NaN/Inf; a diverged trial's loss becomes null, its verdict says why.
        return {k: (v if v is not None and math.isfinite(v) else None) for k, v in value.items()}


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int
    stale: bool = Field(False, description="true when MLflow could not be read (down, or slower than the backend "
                                           "timeout): `data` is the trials as this API last read them")
    degraded: str | None = Field(None, description="why the trials are stale, and since when they were read")


class JobLogs(BaseModel):
    job_id: str
    lines: list[str] = Field(description="the last lines of the driver's log")
    truncated: bool = Field(description="true when older lines were left out")


class SearchSpaceSummary(BaseModel):
    name: str
    model_preset: str
    train_tokens: int
    strategy: str


class SearchSpacesPublic(BaseModel):
    data: list[SearchSpaceSummary]
    count: int


class SearchSpacePublic(BaseModel):
    name: str
    spec: dict[str, Any] = Field(description="the preset's full, validated spec")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


class Message(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    input: Any = None
    type: str


class ValidationProblems(BaseModel):
    detail: list[FieldProblem]
