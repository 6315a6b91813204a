"""The rules between a job spec's fields, all reported together (each as {loc, value, msg}).

The SLW knobs' own rules come from `slwtune.pacing.slw_rule_problems`, which `SeqLengthWarmup`
checks its arguments with too: one source for both, each naming the knobs its own way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slwtune.model_presets import MODEL_PRESETS
from slwtune.pacing import slw_rule_problems
from slwtune.spec.sections import BPE_VOCAB_MIN

if TYPE_CHECKING:
    from slwtune.spec.job import JobSpec

# The SLW knobs as the spec names them.
SLW_NAMES = {"start_length": "slw.start_length", "full_length": "slw.full_length", "step_size": "slw.step_size",
             "pacing": "slw.pacing", "lengths": "slw.discrete_lengths", "max_steps": "slw.discrete_max_steps"}


def problem(loc: str, value: Any, msg: str) -> dict:
    return {"loc": loc, "value": value, "msg": msg}


def cross_field_problems(spec: JobSpec) -> list[dict]:
    """Every cross-field problem of `spec`; empty when valid."""
    return (_model_problems(spec) + _slw_problems(spec) + _optim_problems(spec) + _data_problems(spec)
            + _tuning_problems(spec))


def _model_problems(spec: JobSpec) -> list[dict]:
    m, out = spec.model, []
    if m.preset not in MODEL_PRESETS:
        out.append(problem("model.preset", m.preset, f"unknown preset; choose one of {sorted(MODEL_PRESETS)}"))
    n_head = m.n_head or MODEL_PRESETS.get(m.preset, {}).get("n_head")
    n_embd = m.n_embd or MODEL_PRESETS.get(m.preset, {}).get("n_embd")
    if n_head and n_embd and n_embd % n_head:
        out.append(problem("model.n_embd", n_embd, f"must be a multiple of model.n_head={n_head}"))
    return out


def _slw_problems(spec: JobSpec) -> list[dict]:
    s = spec.slw
    # The start length is checked whatever the pacing: the search starts from it.
    out = slw_rule_problems(s.start_length, s.full_length, s.step_size, s.pacing, s.discrete_lengths,
                            s.discrete_max_steps, names=SLW_NAMES, start_rules=True)
    ctx = spec.context_length() if spec.model.preset in MODEL_PRESETS else spec.model.context_length
    if ctx is not None and s.full_length > ctx:
        out.append(problem("slw.full_length", s.full_length, f"exceeds the model context_length={ctx}"))
    return out


def _optim_problems(spec: JobSpec) -> list[dict]:
    o, out = spec.optim, []
    if o.min_lr > o.lr:
        out.append(problem("optim.min_lr", o.min_lr, f"must be <= optim.lr={o.lr}"))
    if not all(0.0 <= b < 1.0 for b in o.betas):
        out.append(problem("optim.betas", list(o.betas), "each beta must be in [0, 1)"))
    return out


def _data_problems(spec: JobSpec) -> list[dict]:
    """The vocabulary, the batch over the workers, the budget and the GPUs."""
    d, r, out = spec.data, spec.resources, []
    if d.tokenizer == "bpe" and d.vocab_size < BPE_VOCAB_MIN:
        out.append(problem("data.vocab_size", d.vocab_size, f"bpe needs at least {BPE_VOCAB_MIN} (256 bytes + the "
                                                            f"end-of-text token)"))
    if d.batch_size % r.num_workers:
        out.append(problem("data.batch_size", d.batch_size,
                           f"must be divisible by resources.num_workers={r.num_workers}"))
    elif d.micro_batch_size is not None and (d.batch_size // r.num_workers) % d.micro_batch_size:
        out.append(problem("data.micro_batch_size", d.micro_batch_size,
                           f"must divide the per-worker batch {d.batch_size // r.num_workers}"))
    step_tokens = d.batch_size * spec.slw.full_length
    if spec.budget.train_tokens < step_tokens:
        out.append(problem("budget.train_tokens", spec.budget.train_tokens,
                           f"smaller than one full-length step ({step_tokens} tokens)"))
    if r.use_gpu and r.gpus_per_worker <= 0:
        out.append(problem("resources.gpus_per_worker", r.gpus_per_worker, "must be > 0 with resources.use_gpu"))
    return out


def _tuning_problems(spec: JobSpec) -> list[dict]:
    t, s, out = spec.tuning, spec.slw, []
    if t.duration_min > t.duration_max:
        out.append(problem("tuning.duration_min", t.duration_min, f"must be <= tuning.duration_max={t.duration_max}"))
    if t.max_start_length < s.start_length:
        out.append(problem("tuning.max_start_length", t.max_start_length,
                           f"must be >= slw.start_length={s.start_length}"))
    if t.max_start_length % s.step_size:
        out.append(problem("tuning.max_start_length", t.max_start_length,
                           f"must be a multiple of slw.step_size={s.step_size}"))
    if t.strategy == "grid":
        if not t.start_lengths:
            out.append(problem("tuning.start_lengths", t.start_lengths, "required when tuning.strategy=grid"))
        if not t.durations:
            out.append(problem("tuning.durations", t.durations, "required when tuning.strategy=grid"))
    if any(x <= 0 or x % s.step_size or x > s.full_length for x in t.start_lengths or []):
        out.append(problem("tuning.start_lengths", t.start_lengths,
                           f"each must be a positive multiple of slw.step_size={s.step_size} and <= slw.full_length"))
    if any(x <= 0 for x in t.durations or []):
        out.append(problem("tuning.durations", t.durations, "each must be > 0"))
    return out
