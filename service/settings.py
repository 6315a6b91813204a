"""Service settings, read from the environment (and an optional `.env` file).

`SLWTUNE_API_TOKENS` has no default: the API refuses to start without at least
one principal, so an unauthenticated deployment cannot happen by accident.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from slwtune import settings as library_settings


ENV_PREFIX = "SLWTUNE_"
TOKENS_FORMAT = ("principal:token[,principal:token...], each token 16+ characters, e.g. "
                 "SLWTUNE_API_TOKENS=ops:$(openssl rand -hex 32)")


def parse_tokens(text: str) -> dict[str, SecretStr]:
    """`alice:tok1,bob:tok2` -> {"alice": SecretStr("tok1"), ...}; raises ValueError naming the bad entry."""
    out: dict[str, SecretStr] = {}
    seen: set[str] = set()
    for i, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            continue
        principal, sep, token = item.partition(":")
        principal, token = principal.strip(), token.strip()
        # The message names the entry by position, never by content: it would show the token.
        if not sep or not principal or not token:
            raise ValueError(f"entry {i + 1} of SLWTUNE_API_TOKENS is not principal:token")
        if principal in out:
            raise ValueError(f"principal {principal!r} appears twice in SLWTUNE_API_TOKENS")
        if token in seen:
            raise ValueError(f"entry {i + 1} of SLWTUNE_API_TOKENS reuses another principal's token")
        if len(token) < 16:
            raise ValueError(f"the token of principal {principal!r} is shorter than 16 characters")
        seen.add(token)
        out[principal] = SecretStr(token)
    if not out:
        raise ValueError("SLWTUNE_API_TOKENS names no principal")
    return out


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    api_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(
        description="principal:token,... (required; tokens of 16+ characters)")
    database_url: str = Field(
        default_factory=lambda: f"sqlite:///{Path.home() / '.slwtune' / 'registry.db'}",
        description="SQLAlchemy URL of the job registry (SQLite file by default; postgresql+psycopg://... works)")
    ray_address: str = Field("http://127.0.0.1:8265", description="Ray dashboard URL (the Jobs API)")
    ray_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLWTUNE_RAY_TOKEN", "RAY_AUTH_TOKEN"),
        description="Ray's auth token; default: Ray's own lookup (RAY_AUTH_MODE=token and ~/.ray/auth_token)")
    ray_dashboard_url: str | None = Field(None, description="public dashboard URL for links; default ray_address")
    mlflow_tracking_uri: str = Field(
        "http://127.0.0.1:5000", validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SLWTUNE_MLFLOW_TRACKING_URI"))
    mlflow_ui_url: str | None = Field(None, description="public MLflow URL for links; default the tracking URI")
    data_root: Path = Field(
        default_factory=lambda: Path.home() / ".slwtune" / "data",
        description="every non-builtin data path (and SQLite optuna storage) must resolve inside this folder")
    jobs_dir: Path = Field(
        default_factory=lambda: Path.home() / ".slwtune" / "jobs",
        description="one folder per job: the validated spec.yaml and the driver's output")
    spec_transport: Literal["path", "working_dir"] = Field(
        "path",
        description="path: the driver reads jobs_dir/<id>/spec.yaml (Ray on this machine or a shared disk); "
                    "working_dir: Ray uploads the job folder with the job (any cluster)")
    driver_python: str = Field(
        default_factory=lambda: sys.executable,
        description="the Python that runs the job driver on the cluster; `python` for a remote cluster")
    driver_env: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["SLWTUNE_STORAGE", "SLWTUNE_CACHE_DIR", "SLWTUNE_PRESETS_DIR", "HF_HOME"],
        description="variables of this process passed on to the driver when set (comma separated)")
    storage: str = Field(
        default_factory=library_settings.storage,
        description="the Ray Train/Tune storage the jobs' drivers use (path or URI; the cluster's "
                    "SLWTUNE_STORAGE): DELETE /v1/jobs/{id} removes a job's checkpoints there")
    max_driver_restarts: int = Field(
        2, ge=0, le=100,
        description="how many times a job whose driver was lost (killed, its node or the Ray head gone) is "
                    "resubmitted with `slwtune tune --resume`; 0: never")
    allowed_entrypoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="model.entrypoint values a job may name (comma separated, exact package.module:function): "
                    "the code runs on the cluster, so the operator lists it; empty: none")
    max_body_bytes: int = Field(64 * 1024, gt=0, description="larger request bodies get 413")
    # Per job (422 naming the field): what one job may ask of the cluster.
    max_trials: int = Field(200, gt=0, description="most probe trials one job may plan")
    max_train_tokens: int = Field(1_000_000_000_000, gt=0, description="largest budget.train_tokens accepted")
    max_workers: int = Field(64, gt=0, description="largest resources.num_workers accepted")
    max_cpus_per_worker: float = Field(32.0, gt=0.0, description="largest resources.cpus_per_worker accepted")
    max_gpus_per_worker: float = Field(8.0, ge=0.0, description="largest resources.gpus_per_worker accepted")
    # Per principal (429): what one caller may hold at once, over its unfinished jobs.
    max_jobs_per_principal: int = Field(10, gt=0, description="unfinished jobs one principal may have")
    max_gpus_per_principal: float = Field(
        64.0, ge=0.0, description="GPUs one principal's unfinished jobs may ask for at their peak "
                                  "(num_workers x gpus_per_worker x max_concurrent_trials when use_gpu)")
    max_page_size: int = Field(200, gt=0)
    refresh_interval_s: float = Field(
        3.0, ge=0.0,
        description="unfinished jobs are reconciled with Ray/MLflow in the background this often; a read "
                    "reconciles a job itself when it is twice as stale; 0: on every read, no background loop")
    reachability_cache_s: float = Field(
        2.0, ge=0.0, description="a submit skips the Ray/MLflow reachability check if one answered this recently")
    backend_timeout_s: float = Field(5.0, gt=0.0, description="timeout of one call to Ray or MLflow")
    cancel_wait_s: float = Field(3.0, ge=0.0, description="how long a cancel waits for Ray to confirm")
    logs_max_lines: int = Field(5000, gt=0)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value):
        return parse_tokens(value) if isinstance(value, str) else value

    @field_validator("driver_env", "allowed_entrypoints", mode="before")
    @classmethod
    def _parse_list(cls, value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("ray_address", "ray_dashboard_url", "mlflow_tracking_uri", "mlflow_ui_url")
    @classmethod
    def _strip_slash(cls, value):
        return value.rstrip("/") if isinstance(value, str) else value

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets `field` (one without an alias), for messages that tell
        an operator which setting to change: `max_workers` -> SLWTUNE_MAX_WORKERS."""
        return f"{ENV_PREFIX}{field.upper()}"

    def ray_links_base(self) -> str:
        return self.ray_dashboard_url or self.ray_address

    def mlflow_links_base(self, tracking_uri: str | None = None) -> str | None:
        uri = self.mlflow_ui_url or tracking_uri or self.mlflow_tracking_uri
        return uri if uri.startswith(("http://", "https://")) else None


@lru_cache
def get_settings() -> Settings:
    """The settings of a starting API process; a bad environment stops it with one line per problem
    (and, for the token list, the expected format), never a traceback or a secret."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            key = str(err["loc"][0]) if err["loc"] else ""
            name = key if key.isupper() else Settings.env_name(key)  # aliases are spelled in full
            lines.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
            if name == "SLWTUNE_API_TOKENS":
                lines.append(f"    expected {TOKENS_FORMAT}")
        raise SystemExit("slwtune service: invalid settings\n" + "\n".join(lines)) from None
