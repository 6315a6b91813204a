"""Request and response bodies of the REST API, one schema per direction, separate from the DB rows."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slwtune import metrics as M
from slwtune.spec import PRESET_NAME, PRESET_NAME_MAX

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
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
    ray_submission_id: str | None = None
    mlflow_parent_run_id: str | None = None
    links: JobLinks


class JobDetail(JobPublic):
    """A job with its validated spec."""

    spec: dict[str, Any]


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="jobs matching the filter, over all pages")


class TrialPublic(BaseModel):
    """One child run of the job's MLflow parent run: a probe trial or the full run."""

    run_id: str
    name: str | None = None
    kind: str | None = Field(None, description=f"{M.KIND_PROBE} | {M.KIND_FULL_RUN}")
    status: str = Field(description="the MLflow run status (RUNNING, FINISHED, FAILED, KILLED)")
    round: int | None = None
    start_length: int | None = None
    duration_steps: int | None = None
    verdict: str | None = Field(None, description=" | ".join(M.VERDICTS))
    reason: str | None = None
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
