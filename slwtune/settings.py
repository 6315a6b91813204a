"""The library's settings from the environment: the one place slwtune reads a variable.

Read at call time, not at import, so a test (or a Ray worker started with a
different environment) sees the value in force when it asks. The service has
its own settings (`service/settings.py`) for what only the API needs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def presets_dir() -> Path:
    """Folder of the YAML presets: $SLWTUNE_PRESETS_DIR, else the repo's search_spaces/."""
    env = os.environ.get("SLWTUNE_PRESETS_DIR")
    return Path(env) if env else REPO_ROOT / "search_spaces"


def storage() -> str:
    """Where Ray Train/Tune keep experiment state and checkpoints: $SLWTUNE_STORAGE (a path or URI)."""
    return os.environ.get("SLWTUNE_STORAGE") or str(Path.home() / ".slwtune" / "ray_results")


def dataset_cache_dir() -> Path:
    """Where builtin datasets are prepared once: $SLWTUNE_CACHE_DIR, else ~/.cache/slwtune/datasets."""
    env = os.environ.get("SLWTUNE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slwtune" / "datasets"


def ray_address() -> str | None:
    """The Ray cluster to join: $RAY_ADDRESS, else None (start a local one)."""
    return os.environ.get("RAY_ADDRESS") or None


def ray_auth_mode() -> str | None:
    """Ray's client authentication mode ($RAY_AUTH_MODE, e.g. `token`), as Ray reads it."""
    return os.environ.get("RAY_AUTH_MODE") or None


def tracking_uri() -> str | None:
    """The MLflow tracking server: $MLFLOW_TRACKING_URI, else None (no logging)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def tiktoken_cache() -> str | None:
    """tiktoken's own cache folder variables, for the offline GPT-2 tokenizer."""
    return os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or None


def quiet_tokenizers() -> None:
    """HF tokenizers warns (and may deadlock) when a process forks after using its thread pool;
    Ray starts workers by forking, so turn its parallelism off unless the user chose."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fail_fast_mlflow_client() -> None:
    """MLflow's client retries a dead server for minutes per call by default; a training process
    has its own backoff (`tracking.RunLogger`), so let each call fail within seconds instead,
    unless the user set these."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
