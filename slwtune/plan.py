"""`slwtune plan`: the probe plan and its cost against the full run, computed, not run."""

from __future__ import annotations

import math

from slwtune.pacing import make_pacing
from slwtune.spec import JobSpec


def _probe_tokens_and_flops(spec: JobSpec, start: int, duration: int, flops_fn) -> tuple[int, float]:
    """Tokens and FLOPs of one probe window with knobs (start, duration)."""
    slw = spec.slw.model_copy(update={"start_length": start, "duration_steps": duration, "enabled": True})
    pacing, batch = make_pacing(slw), spec.data.batch_size
    tokens, flops = 0, 0.0
    for t in range(1, spec.probe_steps() + 1):
        length = pacing(t)
        tokens += batch * length
        flops += batch * length * flops_fn(length)
    return tokens, flops


def planned_probes(spec: JobSpec) -> tuple[int, int, list[tuple[int, int]]]:
    """(rounds, trials, representative knobs) of the strategy, without start-length doublings."""
    t = spec.tuning
    if t.strategy == "grid":
        knobs = [(s, d) for s in t.start_lengths for d in t.durations]
        return 1, len(knobs), knobs
    if t.strategy == "optuna":
        rounds = math.ceil(t.n_trials / t.max_concurrent_trials)
        return rounds, t.n_trials, _spread_durations(spec, 5)
    width = max(t.duration_max - t.duration_min, 1)
    # round 1 settles the ends; each later round narrows the interval by (slots + 1)
    needed = 1 + max(0, math.ceil(math.log(max(width / t.resolution, 1.0), t.slots + 1)))
    rounds = min(t.max_rounds, needed)
    return rounds, rounds * t.slots, _spread_durations(spec, 5)


def _spread_durations(spec: JobSpec, n: int) -> list[tuple[int, int]]:
    t = spec.tuning
    return [(spec.slw.start_length, round(t.duration_min + (t.duration_max - t.duration_min) * i / (n - 1)))
            for i in range(n)]


def make_plan(spec: JobSpec) -> dict:
    """The plan as a JSON-ready dict: probes, tuning cost, full-run cost and their ratios."""
    from slwtune.model import flops_per_token, model_config

    m = spec.model
    overrides = {k: v for k, v in dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                                        context_length=m.context_length).items() if v is not None}
    config = model_config(m.preset, vocab_size=m.vocab_size or spec.data.vocab_size, **overrides)
    flops_fn = lambda length: flops_per_token(config, length)  # noqa: E731

    rounds, trials, knobs = planned_probes(spec)
    per_probe = [_probe_tokens_and_flops(spec, s, d, flops_fn) for s, d in knobs]
    probe_tokens = sum(p[0] for p in per_probe) / len(per_probe)
    probe_flops = sum(p[1] for p in per_probe) / len(per_probe)
    tuning_tokens = int(round(trials * probe_tokens))
    reused = int(round(probe_tokens)) if spec.tuning.reuse_probe_checkpoint else 0
    full_tokens = spec.budget.train_tokens
    # Full-run FLOPs: warmup at the probes' average cost per token, the rest at full length.
    full_flops = full_tokens * flops_fn(spec.slw.full_length)
    return {
        "strategy": spec.tuning.strategy,
        "rounds": rounds,
        "trials": trials,
        "concurrent_trials": spec.tuning.max_concurrent_trials,
        "probe_steps": spec.probe_steps(),
        "tokens_per_probe": int(round(probe_tokens)),
        "tuning_tokens": tuning_tokens,
        "tuning_flops": trials * probe_flops,
        "full_run_tokens": full_tokens,
        "full_run_flops": full_flops,
        "tuning_fraction": tuning_tokens / full_tokens,
        "net_tuning_fraction": (tuning_tokens - reused) / full_tokens,
        "tuning_flops_fraction": trials * probe_flops / full_flops,
        "note": "upper bound without start-length doublings; each doubling adds up to one more search",
    }


def format_plan(plan: dict) -> str:
    return "\n".join([
        f"strategy        {plan['strategy']}: {plan['rounds']} round(s), {plan['trials']} probe(s), "
        f"{plan['concurrent_trials']} at a time",
        f"probe window    {plan['probe_steps']} steps, ~{plan['tokens_per_probe']:,} tokens per probe",
        f"tuning cost     {plan['tuning_tokens']:,} tokens, {plan['tuning_flops']:.3g} FLOPs",
        f"full run        {plan['full_run_tokens']:,} tokens, {plan['full_run_flops']:.3g} FLOPs",
        f"tuning/full     {plan['tuning_fraction']:.2%} of the tokens ({plan['tuning_flops_fraction']:.2%} of the "
        f"FLOPs); net of the reused winning probe {plan['net_tuning_fraction']:.2%}",
        f"note            {plan['note']}",
    ])


def planned_trials(spec: JobSpec) -> int:
    """Upper bound of the probe trials a spec may run (the paper search repeats per start length)."""
    from slwtune.tuning.strategies import start_length_choices

    _, trials, _ = planned_probes(spec)
    if spec.tuning.strategy == "paper":
        trials *= max(1, len(start_length_choices(spec.slw.start_length, spec.tuning.max_start_length)))
    return trials
