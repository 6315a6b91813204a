"""paper_effect's arms and scales: the SLW defaults other tools ship, the built-in specs, and the
spec each arm trains (pure: specs in, specs out; no training here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from common import lifted, loosest, respec
from slwtune.spec import JobSpec, apply_overrides, load_spec, parse_spec

BASELINE, TUNED, COMPOSER, DEEPSPEED = "baseline", "tuned", "composer", "deepspeed"
ARMS = (BASELINE, TUNED, COMPOSER, DEEPSPEED)
SLW_ARMS = (TUNED, COMPOSER, DEEPSPEED)
# Full runs train to the budget: a spike is counted, not a reason to stop. The spec's largest allowed
# bound (a loss 100x its minimum) or a non-finite loss still ends a run that has truly diverged.
FULL_RUN_LIFTED = ("loss_ratio_max", "loss_ceiling_margin")
NO_RATIO_STOP = loosest("loss_ratio_max")


# ---- the defaults other tools ship ---------------------------------------------------------------


@dataclass(frozen=True)
class ShippedDefault:
    """SLW settings as another tool ships them, and how they map to this spec's (start, T)."""

    arm: str
    source: str
    settings: str
    mapping: str
    knobs: Callable[[JobSpec], tuple[int, int]]


def baseline_steps(spec: JobSpec) -> int:
    """Optimizer steps of the baseline (every step at full length) to the token budget."""
    return math.ceil(spec.budget.train_tokens / (spec.data.batch_size * spec.slw.full_length))


def composer_knobs(spec: JobSpec) -> tuple[int, int]:
    """Composer: min_seq_length 8, step 8, duration 0.3 of training (its training is counted in
    batches, so 30% of the baseline's optimizer steps)."""
    return 8, max(1, int(0.3 * baseline_steps(spec)))


def deepspeed_knobs(spec: JobSpec) -> tuple[int, int]:
    """DeepSpeed tutorial: min_difficulty 8, total_curriculum_step 15000 where the GPT-2 example's
    LR warmup is 3000 iterations: T = 5x the LR warmup."""
    return 8, 5 * max(1, spec.optim.lr_warmup_steps)


DEFAULTS = {
    COMPOSER: ShippedDefault(
        COMPOSER,
        "mosaicml/composer composer/algorithms/seq_length_warmup/seq_length_warmup.py (SeqLengthWarmup.__init__ "
        "defaults)",
        "duration=0.3, min_seq_length=8, max_seq_length=1024, step_size=8, truncate=True",
        "start 8, step 8, full length = the spec's, T = 30% of the baseline's optimizer steps (Composer counts "
        "training in batches); linear growth by 8 (Composer's staircase, equal up to rounding)",
        composer_knobs),
    DEEPSPEED: ShippedDefault(
        DEEPSPEED,
        "deepspeedai/DeepSpeed docs/_tutorials/curriculum-learning.md (config example) and Megatron-DeepSpeed "
        "examples_deepspeed/curriculum_learning/ds_train.sh (GPT-2 example: LR_WARMUP_ITER=3000)",
        'curriculum_type "seqlen", min_difficulty 8, max_difficulty 1024, schedule_type "fixed_linear", '
        "total_curriculum_step 15000, difficulty_step 8",
        "start 8, step 8, fixed_linear, full length = the spec's, T = 15000/3000 = 5x the spec's LR warmup steps",
        deepspeed_knobs),
}


# ---- the spec each arm trains ----------------------------------------------------------------------


def slw_spec(spec: JobSpec, start: int, duration: int, step_size: int = 8) -> JobSpec:
    """`spec` with SLW on: fixed_linear, truncation, lengths on multiples of `step_size`."""
    return respec(spec, {"slw.enabled": True, "slw.start_length": int(start), "slw.duration_steps": int(duration),
                         "slw.step_size": step_size, "slw.pacing": "fixed_linear", "slw.mode": "truncate"})


def full_run_spec(spec: JobSpec) -> JobSpec:
    """A full run trains to its budget: only a true divergence (ratio > 100 persisting, non-finite)
    ends it early; the loss ceiling is off."""
    return lifted(spec, *FULL_RUN_LIFTED)


def knobs_label(start: int, duration: int) -> str:
    """How the table and the logs name an SLW setting."""
    return f"s={start} T={duration}"


def at_lr(spec: JobSpec, lr: float, seed: int) -> JobSpec:
    """`spec` at this LR and seed, its LR floor no higher than the LR."""
    return respec(spec, {"optim.lr": lr, "seed": seed, "optim.min_lr": min(spec.optim.min_lr, lr)})


# ---- scales -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    name: str
    spec: dict          # the built-in spec (used when no SPEC is given)
    lrs: tuple[float, ...]
    seeds: int
    device: str
    note: str


# The scales' runs are short (24-100 full-length steps) and their probes are 40-50% of a run: at the default
# race budget (0.3 of the run) the race could never see an SLW arm past its warmup, so the tuned arm would be
# the baseline by the undecided rule every time. The whole run as the race budget lets the race judge; its
# cost (the loser's race tokens) counts against the tuned arm like every probe's.
RACE_BUDGET = {"race_max_fraction": 1.0}


def _spec(name: str, *, model: dict, data: dict, optim: dict, full_length: int, tokens: int, run: dict,
          tuning: dict, resources: dict | None = None) -> dict:
    return {"name": name, "seed": 1234, "model": model, "data": data, "optim": optim,
            "slw": {"enabled": True, "start_length": 8, "full_length": full_length, "duration_steps": 100,
                    "step_size": 8},
            "budget": {"train_tokens": tokens}, "run": run, "tuning": {**RACE_BUDGET, **tuning},
            "resources": resources or {"cpus_per_worker": 1}}


CPU_SPEC = _spec(
    "paper-effect-cpu",
    # 2-layer d=128 byte-level GPT, context 128 (the CPU model) at batch 64 = 16 x 4 accumulation:
    # at batch 16 a high LR stalls baseline and SLW alike; at 64 the baseline at 3x the LR is visibly worse
    # and SLW is not (docs/results.md has the regime search)
    model={"preset": "tiny", "n_layer": 2, "n_head": 4, "n_embd": 128, "context_length": 128},
    data={"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 64, "micro_batch_size": 16},
    optim={"lr": 0.01, "min_lr": 0.001, "lr_warmup_steps": 20},
    full_length=128, tokens=64 * 128 * 100,  # 100 full-length steps
    run={"eval_every_steps": 10, "eval_batches": 4, "eval_batch_size": 32, "log_every_steps": 5,
         "stats_every_steps": 5, "checkpoint_every_steps": 10**6},
    # as the presets: probes of 2x the LR warmup, 2 slots, 2 rounds
    tuning={"strategy": "paper", "probe_warmup_multiples": 2, "duration_min": 20, "duration_max": 120,
            "resolution": 30, "slots": 2, "max_rounds": 2, "max_start_length": 32})

# The toy sizes of `--quick` and of `--dry-run`: a 1-layer d=32 model, 24 steps of 8 x 32 tokens.
TOY_SIZES = {
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.context_length": 32,
    "slw.full_length": 32, "data.batch_size": 8, "data.micro_batch_size": 4, "optim.lr_warmup_steps": 4,
    "budget.train_tokens": 8 * 32 * 24, "run.eval_every_steps": 4, "run.eval_batches": 1,
    "run.eval_batch_size": 8, "run.stats_every_steps": 2, "tuning.duration_min": 4, "tuning.duration_max": 16,
    "tuning.resolution": 8, "tuning.max_rounds": 1, "tuning.max_start_length": 16,
}

# the CPU scale's code path at toy size, for `make test`
QUICK_SPEC = apply_overrides(CPU_SPEC, {**TOY_SIZES, "name": "paper-effect-quick", "optim.lr": 0.03,
                                        "run.log_every_steps": 4, "tuning.probe_warmup_multiples": 3})

GPU_SPEC = _spec(
    "paper-effect-gpu",
    # gpt2-117m shape (12 layers, d=768, context 1024) over bytes (no tokenizer files needed offline)
    model={"preset": "gpt2-117m"},  # the vocabulary is the data's (256 bytes)
    data={"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 256, "micro_batch_size": 32},
    optim={"lr": 3e-3, "min_lr": 3e-5, "lr_warmup_steps": 8},
    full_length=1024, tokens=256 * 1024 * 40,  # 40 full-length steps of 256 x 1024
    run={"eval_every_steps": 4, "eval_batches": 4, "eval_batch_size": 32, "log_every_steps": 2,
         "stats_every_steps": 2, "checkpoint_every_steps": 10**6, "precision": "bf16"},
    tuning={"strategy": "paper", "probe_warmup_multiples": 2, "duration_min": 8, "duration_max": 32,
            "resolution": 12, "slots": 2, "max_rounds": 1, "max_start_length": 64},
    resources={"cpus_per_worker": 8, "use_gpu": True})

SCALES = {
    "cpu": Scale("cpu", CPU_SPEC, (0.01, 0.03), 3, "cpu",
                 "about 20 minutes on 2 idle CPU cores, 1 torch thread (docs/results.md: the measured run)"),
    "quick": Scale("quick", QUICK_SPEC, (0.003, 0.03), 2, "cpu",
                   "under 2 minutes: the same code path at toy size, for `make test`"),
    "gpu": Scale("gpu", GPU_SPEC, (6e-4, 3e-3), 1, "cuda",
                 "sized for under 8 minutes on one H100 (an estimate: not yet run on a GPU)"),
}

# --dry-run: the scale's structure (LRs, arms, accumulation ratio) at toy sizes, on CPU.
DRY_RUN_OVERRIDES = {**TOY_SIZES, "run.precision": "fp32", "tuning.probe_steps": 8, "resources.use_gpu": False,
                     "resources.cpus_per_worker": 1}


def scale_of(args) -> Scale:
    return SCALES["quick" if args.quick else "gpu" if args.gpu else "cpu"]


def build_spec(args, scale: Scale) -> JobSpec:
    """The spec of this command line: SPEC (or the scale's own), then --dry-run's toy sizes, --batch, --set."""
    overrides: dict = {}
    if args.dry_run:
        overrides.update(DRY_RUN_OVERRIDES)
    if args.batch:
        overrides["data.batch_size"] = args.batch
    if args.spec:
        spec = load_spec(args.spec, args.set or None)
        return respec(spec, overrides) if overrides else spec
    data = apply_overrides(scale.spec, overrides)
    return parse_spec(apply_overrides(data, args.set)) if args.set else parse_spec(data)
