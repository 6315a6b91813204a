"""`JobSpec`: one slwtune job, its derived values (one place for each) and its serialisations."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from slwtune.model_presets import MODEL_PRESETS
from slwtune.spec.rules import cross_field_problems
from slwtune.spec.sections import (
    BudgetSpec,
    DataSpec,
    ModelSpec,
    OptimSpec,
    ResourcesSpec,
    RunSpec,
    SlwSpec,
    TrackingSpec,
    TuningSpec,
    _Section,
)


class JobSpec(_Section):
    """One slwtune job: what to train, on what, and how to tune SLW for it."""

    name: str = Field("slwtune-job", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = Field(1234, ge=0, le=2**32 - 1)
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    optim: OptimSpec = OptimSpec()
    slw: SlwSpec = SlwSpec()
    budget: BudgetSpec = BudgetSpec()
    run: RunSpec = RunSpec()
    tuning: TuningSpec = TuningSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "JobSpec":
        problems = self.problems()
        if problems:
            # The structured list travels in the error context; parse_spec unpacks it.
            raise PydanticCustomError(
                "spec_rules",
                "{summary}",
                {"summary": "; ".join(f"{p['loc']}={p['value']!r}: {p['msg']}" for p in problems),
                 "problems": problems},
            )
        return self

    # ---- derived values (one place for each) --------------------------------

    def context_length(self) -> int | None:
        """The model's context: the explicit override, else the preset's (hf: None if not in the spec;
        an entrypoint's own model: None unless `model.context_length` says it)."""
        if self.model.context_length is not None or self.model.entrypoint:
            return self.model.context_length  # your own model: its context is yours to check
        if self.model.family == "hf":  # else known once the config is read (slwtune.hf_model checks it)
            return self.model.hf_config.get("max_position_embeddings")
        return int(MODEL_PRESETS[self.model.preset]["context_length"])

    def probe_steps(self) -> int:
        """Steps in one probe window: explicit, or multiples of the LR warmup."""
        if self.tuning.probe_steps is not None:
            return self.tuning.probe_steps
        return max(1, math.ceil(self.tuning.probe_warmup_multiples * max(self.optim.lr_warmup_steps, 1)))

    def micro_batch_size(self) -> int:
        """Rows per forward pass per worker."""
        per_worker = self.data.batch_size // self.resources.num_workers
        return self.data.micro_batch_size or per_worker

    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step per worker."""
        return self.data.batch_size // (self.resources.num_workers * self.micro_batch_size())

    def decay_tokens(self) -> int:
        return self.optim.decay_tokens or self.budget.train_tokens

    def race_tokens(self) -> int:
        """Where the race between SLW and the control stops at the latest (tokens of the full run):
        `race_max_fraction` of the run, less one full-length evaluation interval, so that the full
        run continuing from the winner always has steps left to train, evaluate and checkpoint."""
        last_eval = self.run.eval_every_steps * self.data.batch_size * self.slw.full_length
        return max(1, min(int(self.tuning.race_max_fraction * self.budget.train_tokens),
                          self.budget.train_tokens - last_eval))

    def duration_cap(self) -> int:
        """The largest T that fits the run: an SLW arm with this T (fixed_linear from slw.start_length)
        is past (1 + tuning.race_warmup_margin) x T steps and has `race_patience` evaluations at full
        length left before `race_tokens()`, so the race can still judge it. A T beyond it would be
        chosen on evidence from inside its own warmup, which predicts nothing (docs/results.md)."""
        t, b, e = self.tuning, self.data.batch_size, self.slw.full_length
        room = self.race_tokens() - t.race_patience * self.run.eval_every_steps * b * e
        per_step = b * ((self.slw.start_length + e) / 2 + t.race_warmup_margin * e)  # tokens per step of T
        return max(1, math.floor(room / per_step))

    def fitted_to_run(self) -> tuple["JobSpec", str | None]:
        """This spec with the searched T capped by `duration_cap()` when the race decides (tuning.race
        and tuning.control_probe), and a note saying so (None: no change)."""
        t, cap = self.tuning, self.duration_cap()
        if not (t.race and t.control_probe):  # no race to judge T: the search's own bounds stand
            return self, None
        if cap < t.duration_min:  # no searched T fits: the race decides at its budget (docs/results.md)
            return self, (f"the run is too short for the race to see past any searched T (cap {cap} steps < "
                          f"tuning.duration_min={t.duration_min}): T is not capped, and an SLW arm still in its "
                          f"warmup at the race budget cannot win it")
        if t.strategy == "paper":  # an interval narrower than the resolution would leave nothing to search
            cap = max(cap, min(t.duration_max, t.duration_min + t.resolution))
        durations = [d for d in t.durations or [] if d <= cap] or ([min(t.durations)] if t.durations else None)
        if t.duration_max <= cap and durations == t.durations:
            return self, None
        update = {"duration_max": min(t.duration_max, cap), "duration_min": min(t.duration_min, cap),
                  "durations": durations}
        note = (f"T capped at {cap} steps to fit the run (was tuning.duration_max={t.duration_max}"
                + (f", durations {t.durations}" if durations != t.durations else "")
                + f"): the race must see the SLW arm past its warmup within tuning.race_max_fraction="
                f"{t.race_max_fraction} of the run")
        return self.model_copy(update={"tuning": t.model_copy(update=update)}), note

    def without_slw(self) -> "JobSpec":
        """This spec with SLW off: the baseline at full length."""
        return self.model_copy(update={"slw": self.slw.model_copy(update={"enabled": False})})

    def with_slw(self, start_length: int, duration_steps: int) -> "JobSpec":
        """This spec with SLW on and the two knobs set (validated again: knobs come from a search)."""
        data = self.to_dict()
        data["slw"].update(start_length=int(start_length), duration_steps=int(duration_steps), enabled=True)
        return JobSpec.model_validate(data)

    def problems(self) -> list[dict]:
        """Every cross-field problem, each as {loc, msg, value}; empty when valid (`slwtune.spec.rules`)."""
        return cross_field_problems(self)

    # ---- serialisation -------------------------------------------------------

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def flat(self) -> dict[str, Any]:
        """The spec as {dotted.key: value} (MLflow params)."""
        return flatten(self.to_dict())


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

