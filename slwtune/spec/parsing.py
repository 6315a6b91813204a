"""Untrusted input into a `JobSpec`: `parse_spec` names every bad field and value; dotted-key overrides."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from slwtune.errors import SpecError
from slwtune.spec.job import JobSpec


def _loc(parts: tuple) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _value_at(data: Any, parts: tuple) -> Any:
    for p in parts:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def parse_spec(data: Any) -> JobSpec:
    """Validate untrusted input into a JobSpec, or raise SpecError listing every problem."""
    if isinstance(data, JobSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError([{"loc": "<root>", "value": type(data).__name__, "msg": "a job spec must be a mapping"}])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[dict] = []
        for err in exc.errors(include_url=False):
            if err["type"] == "spec_rules":
                problems.extend(err["ctx"]["problems"])
            else:
                problem = _problem(err, data)
                if problem not in problems:
                    problems.append(problem)
        raise SpecError(problems) from None


def _problem(err: dict, data: dict) -> dict:
    """One pydantic error as {loc, value, msg}: unknown keys with "did you mean", a short tuple at the tuple."""
    parts = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return {"loc": _loc(parts), "value": err.get("input"), "msg": _unknown_key_msg(parts)}
    if err["type"] == "missing" and parts and isinstance(parts[-1], int):
        # pydantic reports `betas: [0.9]` at `betas.1`, as a missing field: say it at the list
        value, size = _value_at(data, parts[:-1]), _tuple_size(parts[:-1])
        return {"loc": _loc(parts[:-1]), "value": value, "msg": f"needs {size or parts[-1] + 1} items"}
    return {"loc": _loc(parts), "value": _value_at(data, parts), "msg": err["msg"]}


def _model_at(parts: tuple) -> type[BaseModel] | None:
    """The section model that holds the field at `parts` (JobSpec for a top-level key)."""
    model: Any = JobSpec
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _unknown_key_msg(parts: tuple) -> str:
    """"unknown field" (or section) with the closest known names, as argparse and pydantic-settings do not."""
    import difflib

    model = _model_at(parts)
    known = sorted(model.model_fields) if model else []
    what = "unknown section" if len(parts) == 1 else "unknown field"
    close = difflib.get_close_matches(str(parts[-1]), known, n=3, cutoff=0.6)
    if close:
        prefix = "".join(f"{p}." for p in parts[:-1])
        return f"{what}; did you mean {' or '.join(prefix + c for c in close)}?"
    return f"{what}; known: {', '.join(known)}" if known else what


def _tuple_size(parts: tuple) -> int | None:
    model = _model_at(parts)
    field = model.model_fields.get(parts[-1]) if model and parts and isinstance(parts[-1], str) else None
    args = getattr(getattr(field, "annotation", None), "__args__", ())
    return len(args) if args and Ellipsis not in args else None



def parse_override(text: str) -> tuple[str, Any]:
    """`dotted.key=value` -> (key, value); the value is read as YAML (numbers, lists, bools)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError([{"loc": "--set", "value": text, "msg": "expected dotted.key=value"}])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            value = float(value) if value.strip().lower() not in {"nan", "inf", "-inf", ".nan", ".inf"} else value
        except ValueError:
            pass
    return key, value


def apply_overrides(data: dict, overrides: dict[str, Any] | list[str] | None) -> dict:
    """Return a copy of `data` with each dotted key set; unknown keys fail later, in parse_spec."""
    import copy

    out = copy.deepcopy(data)
    if not overrides:
        return out
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else list(overrides.items())
    for key, value in items:
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError([{"loc": ".".join(parts[: i + 1]), "value": nxt,
                                  "msg": f"is not a section, cannot set {key}"}])
            node = nxt
        node[parts[-1]] = value
    return out
