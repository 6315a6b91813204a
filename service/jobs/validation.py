"""A request's spec: the preset or full spec, the overrides, the spec model, then this service's rules.

The spec model (`slwtune.spec`) bounds every field for CLI and REST alike; on top of it this service
refuses what belongs to the server (the MLflow and Optuna backends), what exceeds its per-job limits,
and data that is not a prepared dataset inside its data root.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from slwtune.errors import SpecError
from slwtune.files import META_FILE as SIDECAR, TOKEN_FILES  # the prepared dataset's files
from slwtune.plan import planned_trials
from slwtune.spec import JobSpec, apply_overrides, parse_spec, preset_data, preset_path

from service.schemas import JobCreate
from service.settings import Settings

# The builtin corpus the driver prepares itself (slwtune.data.BUILTIN_SHAKESPEARE; that module imports torch).
BUILTIN_DATASETS = frozenset({"builtin:shakespeare"})
SIDECAR_MAX_BYTES = 1 << 20  # a real one is a few KiB: do not read a huge file to find out it is not one
# Over REST these belong to the server (its MLFLOW_TRACKING_URI, and an Optuna study in the job's folder):
# a caller's URI would make the API and the cluster connect to hosts or create files the caller chose.
SERVER_OWNED = {"tracking.tracking_uri": "the server's MLflow tracking server (MLFLOW_TRACKING_URI)",
                "tuning.optuna_storage": "a SQLite study in the job's folder"}


def problem(loc: str, value, msg: str) -> dict:
    return {"loc": loc, "value": value, "msg": msg}


def server_owned_problems(spec: JobSpec) -> list[dict]:
    values = {"tracking.tracking_uri": spec.tracking.tracking_uri, "tuning.optuna_storage": spec.tuning.optuna_storage}
    return [problem(loc, value, f"is set by the server over REST ({SERVER_OWNED[loc]}); leave it out")
            for loc, value in values.items() if value is not None]


def _trials_field(spec: JobSpec) -> tuple[str, object]:
    """The field a caller changes to plan fewer trials with this strategy."""
    t = spec.tuning
    return {"grid": ("tuning.durations", t.durations), "optuna": ("tuning.n_trials", t.n_trials)}.get(
        t.strategy, ("tuning.max_rounds", t.max_rounds))


# Per-job limits: the field, its value in a spec, and the setting that bounds it.
JOB_LIMITS = (
    ("budget.train_tokens", lambda spec: spec.budget.train_tokens, "max_train_tokens"),
    ("resources.num_workers", lambda spec: spec.resources.num_workers, "max_workers"),
    ("resources.cpus_per_worker", lambda spec: spec.resources.cpus_per_worker, "max_cpus_per_worker"),
    ("resources.gpus_per_worker", lambda spec: spec.resources.gpus_per_worker if spec.resources.use_gpu else 0.0,
     "max_gpus_per_worker"),
)


def job_limit_problems(spec: JobSpec, settings: Settings) -> list[dict]:
    """Per-job limits of this service, each naming the field, its value, the limit and its setting."""
    out = []
    for loc, value_of, setting in JOB_LIMITS:
        value, limit = value_of(spec), getattr(settings, setting)
        if value > limit:
            out.append(problem(loc, value, f"exceeds this service's limit of {limit} ({Settings.env_name(setting)})"))
    trials = planned_trials(spec)
    if trials > settings.max_trials:
        loc, value = _trials_field(spec)
        out.append(problem(loc, value, f"plans up to {trials} trials; this service allows {settings.max_trials} "
                                       f"({Settings.env_name('max_trials')})"))
    return out


def entrypoint_problems(spec: JobSpec, settings: Settings) -> list[dict]:
    """User code runs on the cluster: only the entrypoints the operator lists are accepted."""
    entrypoint = spec.model.entrypoint
    if entrypoint and entrypoint not in settings.allowed_entrypoints:
        return [problem("model.entrypoint", entrypoint, "is not allowed by this service (its operator lists the "
                                                        f"allowed ones in {Settings.env_name('allowed_entrypoints')})")]
    return []


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _sidecar_problem(folder: Path, root: Path) -> str | None:
    """Why `folder` is not a prepared dataset, or None. Never says what a file holds."""
    sidecar = (folder / SIDECAR).resolve()
    if not _inside(sidecar, root) or not sidecar.is_file():
        return f"is not a prepared dataset (no {SIDECAR}); run `slwtune data prepare` into the data root"
    try:
        if sidecar.stat().st_size > SIDECAR_MAX_BYTES:
            raise ValueError
        meta = json.loads(sidecar.read_bytes())
    except (OSError, ValueError):
        return f"has an unreadable {SIDECAR}; prepare the dataset again"
    if not isinstance(meta, dict):
        return f"has an unreadable {SIDECAR}; prepare the dataset again"
    for name in TOKEN_FILES:
        tokens = (folder / name).resolve()
        if not _inside(tokens, root) or not tokens.is_file():
            return f"is not a prepared dataset (no {name}); prepare the dataset again"
    return None


def resolve_data_path(path: str, root: Path) -> tuple[str | None, str | None]:
    """(the absolute dataset folder to store, None) or (None, why not). Relative paths are relative to
    the data root; links are resolved before the checks, so a link out of the root is caught."""
    if path in BUILTIN_DATASETS:
        return path, None
    if path.startswith("builtin:"):
        return None, f"unknown builtin dataset; use one of {sorted(BUILTIN_DATASETS)}"
    try:
        folder = (root / Path(path).expanduser()).resolve()
        if not _inside(folder, root):
            return None, f"must lie inside the data root {root} (after resolving links)"
        if not folder.is_dir():
            return None, f"no such dataset folder inside the data root {root}"
        why = _sidecar_problem(folder, root)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, a link loop
        return None, "is not a usable path"
    return (None, why) if why else (str(folder), None)


def service_rules(spec: JobSpec, settings: Settings) -> tuple[JobSpec, list[dict]]:
    """Every rule this service adds to the spec model; returns the spec with its data path made absolute."""
    problems = server_owned_problems(spec) + job_limit_problems(spec, settings) + entrypoint_problems(spec, settings)
    root = settings.data_root.expanduser().resolve()
    resolved, why = resolve_data_path(spec.data.path, root)
    if why:
        problems.append(problem("data.path", spec.data.path, why))
    if problems:
        return spec, problems
    return spec.model_copy(update={"data": spec.data.model_copy(update={"path": resolved})}), []


@lru_cache(maxsize=64)
def _preset_cached(name: str, mtime_ns: int) -> dict:
    return preset_data(name)


def preset(name: str) -> dict:
    """A preset's data, parsed once per file version (YAML parsing is most of a submit's CPU otherwise).

    `preset_path` accepts names only, inside the presets folder. Callers must not mutate the result:
    `apply_overrides` copies before it writes.
    """
    return _preset_cached(name, preset_path(name).stat().st_mtime_ns)


def resolve_spec(body: JobCreate, settings: Settings) -> JobSpec:
    """The request's spec (or preset + overrides), validated by the spec model and the service rules."""
    data = preset(body.preset) if body.preset is not None else body.spec
    spec = parse_spec(apply_overrides(data, body.overrides))
    spec, problems = service_rules(spec, settings)
    if problems:
        raise SpecError(problems)
    return spec


def request_hash(spec: dict) -> str:
    """What an Idempotency-Key stands for: the validated spec (as `JobSpec.to_dict()` gives it), so
    equal requests hash alike."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
