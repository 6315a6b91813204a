"""Where a spec comes from: a YAML/JSON file or a preset by name (never a path), with overrides."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from slwtune import settings
from slwtune.errors import SpecError
from slwtune.spec.job import JobSpec
from slwtune.spec.parsing import apply_overrides, parse_spec


def presets_dir() -> Path:
    """The folder of YAML presets (see `slwtune.settings`)."""
    return settings.presets_dir()


# A preset is a name, never a path: it cannot climb out of the presets folder or name another file.
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PRESET_NAME_MAX = 128


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml") if PRESET_NAME.match(p.stem))


def preset_path(name: str) -> Path:
    """The file of preset `name`, inside the presets folder after resolving links; SpecError otherwise.

    The error names the preset as given and the presets there are, never anything read from a file.
    """
    if not isinstance(name, str) or len(name) > PRESET_NAME_MAX or not PRESET_NAME.match(name):
        raise SpecError([{"loc": "preset", "value": name,
                          "msg": f"a preset is a name matching {PRESET_NAME.pattern} (at most {PRESET_NAME_MAX} "
                                 f"characters); choose one of {list_presets()}"}])
    root = presets_dir().resolve()
    path = (root / f"{name}.yaml").resolve()
    if path.parent != root or not path.is_file():
        import difflib

        close = difflib.get_close_matches(name, list_presets(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise SpecError([{"loc": "preset", "value": name, "msg": f"unknown preset; {hint}choose one of "
                                                                   f"{list_presets()}"}])
    return path


def preset_data(name: str) -> dict:
    """The preset's YAML as a mapping; SpecError naming the preset (never what its file holds) otherwise."""
    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict):
        raise SpecError([{"loc": "preset", "value": name, "msg": "the preset file is not a YAML mapping"}])
    return data


def load_spec(source: str | Path, overrides: list[str] | dict | None = None) -> JobSpec:
    """A spec from a YAML/JSON file path or a preset name, with overrides applied."""
    return parse_spec(apply_overrides(read_spec_source(source), overrides))


def read_spec_source(source: str | Path) -> dict:
    """The mapping in a spec file, or a preset's; SpecError naming the file for anything else."""
    path = Path(source)
    if path.is_dir():
        raise SpecError([{"loc": "<file>", "value": str(path), "msg": "is a folder; give a spec file (YAML/JSON) or "
                                                                       "a preset name"}])
    if path.is_file():
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError([{"loc": "<file>", "value": str(path), "msg": f"not UTF-8 text (byte "
                              f"{exc.object[exc.start]:#04x} at offset {exc.start})"}]) from None
        except OSError as exc:
            raise SpecError([{"loc": "<file>", "value": str(path), "msg": f"unreadable ({exc.strerror})"}]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError([{"loc": "<file>", "value": str(path), "msg": f"not valid YAML: {exc}"}]) from None
        if data is None:
            raise SpecError([{"loc": "<file>", "value": str(path), "msg": "is empty; a spec needs at least one "
                              "section (see `slwtune presets NAME` for a full one)"}])
        return data
    if path.suffix in {".yaml", ".yml", ".json"} or "/" in str(source) or "\\" in str(source):
        raise SpecError([{"loc": "<file>", "value": str(source), "msg": "no such file"}])
    return preset_data(str(source))
