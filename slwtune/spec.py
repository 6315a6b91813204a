"""The job spec: one pydantic model used by the CLI, the REST API and the presets.

Validation happens here, once. Field rules (types, ranges, unknown keys, NaN)
come from pydantic; cross-field rules live in `JobSpec.problems()` and are all
reported together. `parse_spec` is the one entry point that turns untrusted
input into a `JobSpec` or raises `SpecError` naming every bad field and value.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from slwtune import settings
from slwtune.errors import SpecError

Pacing = Literal["fixed_linear", "fixed_root", "fixed_discrete"]
SlwMode = Literal["truncate", "reshape"]
Strategy = Literal["paper", "optuna", "grid"]
Decay = Literal["cosine", "linear", "constant"]
Tokenizer = Literal["bytes", "bpe", "gpt2"]

# Vocabulary limits, shared by the spec and `slwtune data prepare` (one place for each fact):
# a BPE vocabulary holds the 256 bytes and the end-of-text token at least.
VOCAB_MAX = 1_048_576
BPE_VOCAB_MIN = 257

# `package.module:function` (dotted names on both sides: a function, or a method of a class)
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRYPOINT_PATTERN = re.compile(rf"^{_DOTTED}:{_DOTTED}$")


class _Section(BaseModel):
    """Strict base: unknown keys and NaN/Inf are errors, assignments re-validate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class ModelSpec(_Section):
    """The model to train: slwtune's GPT (a preset from `slwtune.model_presets.MODEL_PRESETS`, optionally
    overridden), a Hugging Face causal LM (`family: hf`, see `slwtune.hf_model`), or your own
    training function (`entrypoint`, see `slwtune.user_loop`: it brings its model and data)."""

    family: Literal["gpt", "hf"] = Field("gpt", description="gpt: the built-in GPT-2; hf: a transformers causal LM")
    architecture: str | None = Field(None, description="hf: the model type (gpt2, llama, any causal LM type)")
    hf_path: str | None = Field(None, description="hf: a local folder with config.json (weights are not loaded)")
    hf_config: dict[str, Any] = Field(default_factory=dict, description="hf: config fields by their HF names")
    preset: str = Field("tiny", description="model preset name (gpt2-117m, gpt3-125m, tiny, ...)")
    n_layer: int | None = Field(None, ge=1, le=256)
    n_head: int | None = Field(None, ge=1, le=256)
    n_embd: int | None = Field(None, ge=1, le=65_536)
    context_length: int | None = Field(None, ge=1, le=131_072, description="maximum sequence length")
    vocab_size: int | None = Field(None, ge=1, le=VOCAB_MAX, description="defaults to the dataset's vocabulary")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True
    entrypoint: str | None = Field(
        None, description="package.module:function, your own training function (train_fn(ctx)); it "
                          "runs the probes and the full run instead of slwtune's loop")

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_shape(cls, value: str | None) -> str | None:
        # Only the shape here: the spec is also validated where the code is not (the API server),
        # and importing user code there would run it. The driver imports it when the job starts.
        if value is not None and not ENTRYPOINT_PATTERN.match(value):
            raise ValueError("must be 'package.module:function' (an importable module, a colon, a function name)")
        return value

    @model_validator(mode="after")
    def _family_fields(self) -> "ModelSpec":
        if self.entrypoint and self.family == "hf":
            raise ValueError("model.entrypoint trains your own model: drop model.family='hf' (and its fields)")
        if self.family == "hf" and not (self.architecture or self.hf_path):
            raise ValueError("model.family='hf' needs model.architecture (e.g. llama) or model.hf_path")
        if self.family == "gpt" and (self.architecture or self.hf_path or self.hf_config):
            raise ValueError("model.architecture, model.hf_path and model.hf_config need model.family='hf'")
        return self


class DataSpec(_Section):
    """The token data and how batches are drawn from it."""

    path: str = Field(
        "builtin:shakespeare",
        description="a prepared dataset dir (`slwtune data prepare`) or builtin:shakespeare",
    )
    tokenizer: Tokenizer = Field("bpe", description="used when a builtin dataset is prepared")
    vocab_size: int = Field(4096, ge=256, le=VOCAB_MAX, description="BPE vocabulary for builtin data")
    batch_size: int = Field(16, ge=1, le=65_536, description="global batch, in full-length sequences")
    micro_batch_size: int | None = Field(
        None, ge=1, le=65_536, description="rows per forward per worker; the rest is gradient accumulation"
    )


class OptimSpec(_Section):
    """AdamW with step-based LR warmup and token-based decay (slw-spec section 4)."""

    lr: float = Field(1e-3, gt=0.0, le=1.0)
    min_lr: float = Field(1e-5, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0.0, le=1e-3)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0, le=100.0, description="0 disables clipping")
    lr_warmup_steps: int = Field(100, ge=0, le=10_000_000)
    decay: Decay = "cosine"
    decay_tokens: int | None = Field(
        None, ge=1, le=10**14, description="tokens at which decay reaches min_lr; default budget.train_tokens"
    )


class SlwSpec(_Section):
    """Sequence Length Warmup (slw-spec section 2 and 3)."""

    enabled: bool = True
    start_length: int = Field(8, ge=1, le=131_072, description="s: the first sequence length")
    full_length: int = Field(128, ge=1, le=131_072, description="e: the full sequence length")
    duration_steps: int = Field(200, ge=1, le=10_000_000, description="T: steps to grow from s to e")
    step_size: int = Field(8, ge=1, le=1024, description="k: lengths are multiples of this")
    pacing: Pacing = "fixed_linear"
    root_degree: float = Field(2.0, ge=1.0, le=16.0, description="r for fixed_root")
    discrete_lengths: list[Annotated[int, Field(ge=1, le=131_072)]] | None = Field(None, max_length=1024)
    discrete_max_steps: list[Annotated[int, Field(ge=1, le=10_000_000)]] | None = Field(None, max_length=1024)
    mode: SlwMode = Field("truncate", description="truncate (the paper) or reshape (no token dropped)")


class BudgetSpec(_Section):
    """How long the full run trains."""

    train_tokens: int = Field(1_000_000, ge=1, le=10**14, description="the full run stops at this many tokens")


class RunSpec(_Section):
    """Evaluation, checkpointing and performance settings of a training run."""

    eval_every_steps: int = Field(25, ge=1, le=10_000_000)
    eval_batches: int = Field(4, ge=1, le=10_000)
    eval_batch_size: int | None = Field(None, ge=1, le=65_536, description="default: data.batch_size")
    log_every_steps: int = Field(5, ge=1, le=10_000_000)
    stats_every_steps: int = Field(10, ge=1, le=10_000_000, description="Adam variance stats (one host sync)")
    checkpoint_every_steps: int = Field(100, ge=1, le=10_000_000)
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="checkpoints a run keeps (the newest)")
    max_failures: int = Field(2, ge=0, le=100, description="worker failures a run survives, each resumed from "
                                                            "its last checkpoint")
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class StabilitySpec(_Section):
    """Thresholds of the stability verdict (see `slwtune.stability`; the defaults are measured in
    docs/results.md, "Verdicts")."""

    loss_ratio_max: float = Field(
        1.5, gt=1.0, le=100.0, description="a spike: train loss / min earlier loss above this (and above the "
                                           "trailing window's mean + spike_sigmas x its spread)")
    spike_window: int = Field(
        20, ge=2, le=100_000, description="trailing window (steps) whose mean and spread judge a spike")
    spike_sigmas: float = Field(
        3.0, ge=0.0, le=100.0, description="a spike: loss above the window's mean + this x its standard deviation")
    spike_patience: int = Field(
        5, ge=1, le=100_000, description="this many consecutive spiking steps: diverged")
    spike_recovery_steps: int = Field(
        25, ge=1, le=10_000_000, description="a spike not back to its window's mean within this many steps: "
                                             "diverged")
    loss_ceiling_margin: float = Field(
        1.0, ge=0.0, le=1000.0, description="spike_patience consecutive losses above ln(vocab) + this "
                                            "(worse than an untrained model): diverged; 1000: off in effect")
    ppl_rise_tolerance: float = Field(
        0.05, ge=0.0, le=10.0, description="a rise: val ppl above (1+tol) x best earlier"
    )
    val_se_sigmas: float = Field(
        2.0, ge=0.0, le=100.0, description="a rise must also exceed this x the combined standard error of the "
                                           "two evaluations")
    fluctuation_patience: int = Field(
        2, ge=1, le=1000, description="this many consecutive risen evaluations (or one at the run's end): "
                                      "fluctuating")
    min_steps: int = Field(0, ge=0, le=10_000_000, description="no spike is counted up to this step")
    early_fraction: float = Field(0.25, gt=0.0, le=1.0, description="share of the probe that counts as early")


class TuningSpec(_Section):
    """The probe search over (start length, duration T) (slw-spec section 5)."""

    strategy: Strategy = "paper"
    probe_warmup_multiples: float = Field(
        3.0, gt=0.0, le=100.0, description="probe window = this x optim.lr_warmup_steps"
    )
    probe_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="explicit probe window (overrides multiples)")
    duration_min: int = Field(50, ge=1, le=10_000_000, description="T_min of the search")
    duration_max: int = Field(800, ge=1, le=10_000_000, description="T_max of the search")
    resolution: int = Field(50, ge=1, le=10_000_000, description="stop when the T interval is narrower than this")
    slots: int = Field(2, ge=1, le=64, description="probes per round of the k-ary search")
    max_rounds: int = Field(4, ge=1, le=32)
    max_start_length: int = Field(64, ge=1, le=131_072, description="doubling the start length stops here")
    start_lengths: list[Annotated[int, Field(ge=1, le=131_072)]] | None = Field(
        None, max_length=64, description="grid strategy: start lengths")
    durations: list[Annotated[int, Field(ge=1, le=10_000_000)]] | None = Field(
        None, max_length=64, description="grid strategy: durations T")
    n_trials: int = Field(8, ge=1, le=1000, description="optuna strategy: number of trials")
    optuna_storage: str | None = Field(None, description="RDB URL of the optuna study; default under the job dir")
    max_concurrent_trials: int = Field(2, ge=1, le=1024)
    reuse_probe_checkpoint: bool = Field(True, description="full run continues from the winning probe")
    keep_probe_checkpoints: bool = Field(False, description="keep the non-winning probes' checkpoints after "
                                                             "selection (they are deleted by default)")
    control_probe: bool = Field(True, description="round 1 also probes the baseline (SLW off) over the same window")
    when_baseline_wins: Literal["run_baseline", "run_slw", "stop"] = Field(
        "run_baseline", description="full run when the control is stable and at least as good as every SLW probe")
    # The decision between SLW and the baseline (slwtune.tuning.race): why these defaults, docs/results.md.
    race: bool = Field(True, description="after the search, race the best SLW candidate against the control "
                                         "(SLW off) at equal tokens before the full run")
    race_max_fraction: float = Field(
        0.3, gt=0.0, le=1.0, description="the race stops at this share of budget.train_tokens; it also caps the "
                                         "searched T so that the SLW arm can finish its warmup inside it")
    race_patience: int = Field(3, ge=1, le=100, description="consecutive evaluations an arm must trail by more "
                                                            "than the band to lose")
    race_z: float = Field(1.0, gt=0.0, le=10.0, description="the band: z x sqrt(se_slw^2 + se_control^2) of the "
                                                            "val loss gap at equal tokens")
    race_warmup_margin: float = Field(
        0.25, ge=0.0, le=10.0, description="SLW may win only past (1 + margin) x T steps of its warmup")
    stability: StabilitySpec = StabilitySpec()


class ResourcesSpec(_Section):
    """Ray Train workers of one trial or run."""

    num_workers: int = Field(1, ge=1, le=4096)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0, le=1024.0)
    gpus_per_worker: float = Field(1.0, ge=0.0, le=16.0)


class TrackingSpec(_Section):
    """Where runs are logged. Empty values fall back to the environment."""

    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI")
    experiment: str | None = Field(None, description="default: the job name")


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
        from slwtune.model_presets import MODEL_PRESETS

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

    # ---- cross-field rules ---------------------------------------------------

    def problems(self) -> list[dict]:
        """Every cross-field problem, each as {loc, msg, value}; empty when valid."""
        out: list[dict] = []

        def bad(loc: str, value: Any, msg: str) -> None:
            out.append({"loc": loc, "value": value, "msg": msg})

        from slwtune.model_presets import MODEL_PRESETS

        if self.model.preset not in MODEL_PRESETS:
            bad("model.preset", self.model.preset, f"unknown preset; choose one of {sorted(MODEL_PRESETS)}")
            ctx = self.model.context_length
        else:
            ctx = self.context_length()
        n_head = self.model.n_head or MODEL_PRESETS.get(self.model.preset, {}).get("n_head")
        n_embd = self.model.n_embd or MODEL_PRESETS.get(self.model.preset, {}).get("n_embd")
        if n_head and n_embd and n_embd % n_head:
            bad("model.n_embd", n_embd, f"must be a multiple of model.n_head={n_head}")

        s = self.slw
        if s.start_length % s.step_size:
            bad("slw.start_length", s.start_length,
                f"must be a multiple of slw.step_size={s.step_size} (rounding would drop below it)")
        if s.start_length > s.full_length:
            bad("slw.start_length", s.start_length, f"must be <= slw.full_length={s.full_length}")
        if ctx is not None and s.full_length > ctx:
            bad("slw.full_length", s.full_length, f"exceeds the model context_length={ctx}")
        if s.pacing == "fixed_discrete":
            if not s.discrete_lengths:
                bad("slw.discrete_lengths", s.discrete_lengths, "required when slw.pacing=fixed_discrete")
            elif len(s.discrete_max_steps or []) != len(s.discrete_lengths) - 1:
                bad("slw.discrete_max_steps", s.discrete_max_steps,
                    f"needs len(slw.discrete_lengths)-1={len(s.discrete_lengths) - 1} entries")
            else:
                if any(x <= 0 or x > s.full_length for x in s.discrete_lengths):
                    bad("slw.discrete_lengths", s.discrete_lengths, f"each must be in 1..slw.full_length={s.full_length}")
                steps = s.discrete_max_steps or []
                if any(b <= a for a, b in zip(steps, steps[1:])) or any(x <= 0 for x in steps):
                    bad("slw.discrete_max_steps", steps, "must be positive and strictly increasing")

        o = self.optim
        if o.min_lr > o.lr:
            bad("optim.min_lr", o.min_lr, f"must be <= optim.lr={o.lr}")
        if not all(0.0 <= b < 1.0 for b in o.betas):
            bad("optim.betas", list(o.betas), "each beta must be in [0, 1)")

        d = self.data
        if d.tokenizer == "bpe" and d.vocab_size < BPE_VOCAB_MIN:
            bad("data.vocab_size", d.vocab_size, f"bpe needs at least {BPE_VOCAB_MIN} (256 bytes + the end-of-text "
                                                 f"token)")
        workers = self.resources.num_workers
        if d.batch_size % workers:
            bad("data.batch_size", d.batch_size, f"must be divisible by resources.num_workers={workers}")
        elif d.micro_batch_size is not None and (d.batch_size // workers) % d.micro_batch_size:
            bad("data.micro_batch_size", d.micro_batch_size,
                f"must divide the per-worker batch {d.batch_size // workers}")
        if self.budget.train_tokens < d.batch_size * s.full_length:
            bad("budget.train_tokens", self.budget.train_tokens,
                f"smaller than one full-length step ({d.batch_size * s.full_length} tokens)")
        if self.resources.use_gpu and self.resources.gpus_per_worker <= 0:
            bad("resources.gpus_per_worker", self.resources.gpus_per_worker, "must be > 0 with resources.use_gpu")

        t = self.tuning
        if t.duration_min > t.duration_max:
            bad("tuning.duration_min", t.duration_min, f"must be <= tuning.duration_max={t.duration_max}")
        if t.max_start_length < s.start_length:
            bad("tuning.max_start_length", t.max_start_length, f"must be >= slw.start_length={s.start_length}")
        if t.max_start_length % s.step_size:
            bad("tuning.max_start_length", t.max_start_length, f"must be a multiple of slw.step_size={s.step_size}")
        if t.strategy == "grid":
            if not t.start_lengths:
                bad("tuning.start_lengths", t.start_lengths, "required when tuning.strategy=grid")
            if not t.durations:
                bad("tuning.durations", t.durations, "required when tuning.strategy=grid")
        for x in t.start_lengths or []:
            if x <= 0 or x % s.step_size or x > s.full_length:
                bad("tuning.start_lengths", t.start_lengths,
                    f"each must be a positive multiple of slw.step_size={s.step_size} and <= slw.full_length")
                break
        if any(x <= 0 for x in t.durations or []):
            bad("tuning.durations", t.durations, "each must be > 0")
        return out

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


# ---- parsing, overrides, presets ------------------------------------------------


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


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
