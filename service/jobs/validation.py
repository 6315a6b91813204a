"""A request's spec: the preset or full spec, the overrides, the spec model, then this service's limits."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from slwtune.errors import SpecError
from slwtune.plan import planned_trials
from slwtune.spec import JobSpec, apply_overrides, parse_spec, preset_data, presets_dir

from service.schemas import JobCreate
from service.settings import Settings


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def service_rules(spec: JobSpec, settings: Settings) -> tuple[JobSpec, list[dict]]:
    """The limits this service puts on top of the spec model; returns the spec with data paths made absolute."""
    problems: list[dict] = []
    if spec.budget.train_tokens > settings.max_train_tokens:
        problems.append({"loc": "budget.train_tokens", "value": spec.budget.train_tokens,
                         "msg": f"exceeds this service's limit of {settings.max_train_tokens}"})
    trials = planned_trials(spec)
    if trials > settings.max_trials:
        loc = {"grid": "tuning.durations", "optuna": "tuning.n_trials"}.get(spec.tuning.strategy, "tuning.max_rounds")
        value = {"tuning.durations": spec.tuning.durations, "tuning.n_trials": spec.tuning.n_trials,
                 "tuning.max_rounds": spec.tuning.max_rounds}[loc]
        problems.append({"loc": loc, "value": value,
                         "msg": f"plans up to {trials} trials; this service allows {settings.max_trials}"})

    root = settings.data_root.expanduser().resolve()
    updates: dict[str, Any] = {}
    path = spec.data.path
    if not path.startswith("builtin:"):
        # Relative paths are relative to the data root; resolve() follows symlinks, so a link out is caught.
        resolved = (root / Path(path).expanduser()).resolve()
        if not _inside(resolved, root):
            problems.append({"loc": "data.path", "value": path, "msg": f"must lie inside the data root {root}"})
        else:
            updates["data"] = spec.data.model_copy(update={"path": str(resolved)})
    storage = spec.tuning.optuna_storage
    if storage and storage.startswith("sqlite"):
        db_file = storage.split(":///", 1)[-1] if ":///" in storage else ""
        resolved = (root / Path(db_file).expanduser()).resolve() if db_file else None
        if resolved is None or not _inside(resolved, root):
            problems.append({"loc": "tuning.optuna_storage", "value": storage,
                             "msg": f"a SQLite study must lie inside the data root {root}"})
    if updates and not problems:
        spec = spec.model_copy(update=updates)
    return spec, problems


@lru_cache(maxsize=64)
def _preset_cached(name: str, mtime_ns: int) -> dict:
    return preset_data(name)


def preset(name: str) -> dict:
    """A preset's data, parsed once per file version (YAML parsing is most of a submit's CPU otherwise).

    Callers must not mutate it: `apply_overrides` copies before it writes.
    """
    path = presets_dir() / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return preset_data(name)  # raises SpecError naming the presets there are
    return _preset_cached(name, path.stat().st_mtime_ns)


def resolve_spec(body: JobCreate, settings: Settings) -> JobSpec:
    """The request's spec (or preset + overrides), validated by the spec model and the service limits."""
    data = preset(body.preset) if body.preset is not None else body.spec
    spec = parse_spec(apply_overrides(data, body.overrides))
    spec, problems = service_rules(spec, settings)
    if problems:
        raise SpecError(problems)
    return spec


def request_hash(spec: JobSpec) -> str:
    """What an Idempotency-Key stands for: the validated spec, so equal requests hash alike."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
