"""The sections of a job spec: one strict pydantic model per concern, each field bounded.

Field rules (types, ranges, unknown keys, NaN) live here; the rules between fields are in
`slwtune.spec.rules` and the whole job in `slwtune.spec.job`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    val_se_sigmas: float = Field(2.0, ge=0.0, le=100.0, description="a rise must also exceed this x the combined "
                                                                   "standard error of the two evaluations")
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
