"""The job spec: one pydantic model used by the CLI, the REST API and the presets.

Validation happens here, once. Field rules (types, ranges, unknown keys, NaN)
come from pydantic (`sections`); cross-field rules live in `JobSpec.problems()`
(`rules`) and are all reported together. `parse_spec` (`parsing`) is the one entry
point that turns untrusted input into a `JobSpec` or raises `SpecError` naming
every bad field and value; `load_spec` (`sources`) reads a file or a preset.
Torch-free: pydantic and yaml only.
"""

from slwtune.spec.job import JobSpec, flatten
from slwtune.spec.parsing import apply_overrides, parse_override, parse_spec
from slwtune.spec.sections import (
    BPE_VOCAB_MIN,
    ENTRYPOINT_PATTERN,
    VOCAB_MAX,
    BudgetSpec,
    DataSpec,
    Decay,
    ModelSpec,
    OptimSpec,
    Pacing,
    ResourcesSpec,
    RunSpec,
    SlwMode,
    SlwSpec,
    StabilitySpec,
    Strategy,
    Tokenizer,
    TrackingSpec,
    TuningSpec,
)
from slwtune.spec.sources import (
    PRESET_NAME,
    PRESET_NAME_MAX,
    list_presets,
    load_spec,
    preset_data,
    preset_path,
    presets_dir,
    read_spec_source,
)

__all__ = [
    "JobSpec", "ModelSpec", "DataSpec", "OptimSpec", "SlwSpec", "BudgetSpec", "RunSpec", "StabilitySpec",
    "TuningSpec", "ResourcesSpec", "TrackingSpec", "Pacing", "SlwMode", "Strategy", "Decay", "Tokenizer",
    "VOCAB_MAX", "BPE_VOCAB_MIN", "ENTRYPOINT_PATTERN", "PRESET_NAME", "PRESET_NAME_MAX",
    "parse_spec", "parse_override", "apply_overrides", "flatten",
    "load_spec", "read_spec_source", "preset_data", "preset_path", "presets_dir", "list_presets",
]
