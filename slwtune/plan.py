"""`slwtune plan`: the probe plan and its cost against the full run, computed, not run.

`--simulate` (the search against a stated landscape) is `slwtune.simulation`.
"""

from __future__ import annotations

import math
from pathlib import Path

from slwtune.pacing import make_pacing
from slwtune.simulation import Landscape, control_probe_tokens, landscape_runner
from slwtune.spec import JobSpec
from slwtune.tuning.evidence import SEQUENCE_LOSS_SD, eval_noise  # noqa: F401 - plan's names
from slwtune.tuning.loop import run_search
from slwtune.tuning.results import probe_spec
from slwtune.tuning.searches import make_search
from slwtune.tuning.strategies import Probe


def _probe_tokens_and_flops(spec: JobSpec, start: int, duration: int, flops_fn) -> tuple[int, float]:
    """Tokens and FLOPs of one probe window with knobs (start, duration)."""
    pacing, batch = make_pacing(probe_spec(spec, Probe(start, duration)).slw), spec.data.batch_size
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
    rounds, trials = worst_case_paper_search(spec)
    return rounds, trials, _spread_durations(spec, 5)


def worst_case_paper_search(spec: JobSpec, edges: int = 16) -> tuple[int, int]:
    """(rounds, trials) of the paper search at one start length, the most over a family of landscapes.

    The search's length depends on where the stable band lies (it searches on when nothing is
    stable), so it is run, as pure logic, against bands everywhere, nowhere (at `edges` points),
    low and high; the plan states the worst of them.
    """
    t = spec.tuning
    points = [round(t.duration_min + (t.duration_max - t.duration_min) * i / (edges - 1)) for i in range(edges)]
    landscapes = [Landscape()] + [Landscape(diverged_below=e, fluctuating_above=e - 1) for e in points] \
        + [Landscape(fluctuating_above=e) for e in points] + [Landscape(diverged_below=e) for e in points]
    worst = (0, 0)
    for land in landscapes:
        run = run_search(make_search(spec, study_name="plan", default_storage="sqlite:///:memory:"),
                         landscape_runner(land))
        worst = max(worst, (len(run.rounds), len(run.results)), key=lambda rt: (rt[1], rt[0]))
    return worst


def _spread_durations(spec: JobSpec, n: int) -> list[tuple[int, int]]:
    t = spec.tuning
    return [(spec.slw.start_length, round(t.duration_min + (t.duration_max - t.duration_min) * i / (n - 1)))
            for i in range(n)]


def planned_vocab(spec: JobSpec) -> tuple[int, str]:
    """The vocabulary the model will get, and where it comes from. Like the training loop:
    model.vocab_size, else the prepared dataset's; a plan does not prepare data, so before
    that it is what the spec's tokenizer will give (data.vocab_size for bpe)."""
    from slwtune.data import DatasetMeta, effective_vocab_size

    if spec.model.vocab_size:
        return spec.model.vocab_size, "model.vocab_size"
    folder = Path(spec.data.path).expanduser()
    if DatasetMeta.is_prepared(folder):
        return DatasetMeta.load(folder).vocab_size, f"the prepared dataset {folder}"
    vocab = effective_vocab_size(spec.data.tokenizer, spec.data.vocab_size)
    where = "a builtin dataset" if spec.data.path.startswith("builtin:") else "the dataset is not prepared yet"
    return vocab, f"data.tokenizer={spec.data.tokenizer} and data.vocab_size ({where})"


def planned_model_config(spec: JobSpec, vocab: int):
    """The model's config for cost estimates: the GPT config, or an HF model built on the meta
    device (no memory, no weights) so its FLOPs come from its own sizes."""
    if spec.model.family == "hf":
        import torch

        from slwtune.hf_model import build_hf_model

        with torch.device("meta"):
            return build_hf_model(spec, vocab).config
    from slwtune.model import config_from_spec

    return config_from_spec(spec, vocab)


def make_plan(spec: JobSpec) -> dict:
    """The plan as a JSON-ready dict: probes, tuning cost, full-run cost and their ratios."""
    from slwtune.model import flops_per_token

    vocab, vocab_source = planned_vocab(spec)
    config = planned_model_config(spec, vocab)
    flops_fn = lambda length: flops_per_token(config, length)  # noqa: E731

    rounds, trials, knobs = planned_probes(spec.fitted_to_run()[0])  # the T the search will try
    per_probe = [_probe_tokens_and_flops(spec, s, d, flops_fn) for s, d in knobs]
    probe_tokens = sum(p[0] for p in per_probe) / len(per_probe)
    probe_flops = sum(p[1] for p in per_probe) / len(per_probe)
    control_tokens = control_probe_tokens(spec)
    tuning_tokens = int(round(trials * probe_tokens)) + control_tokens
    reused = int(round(probe_tokens)) if spec.tuning.reuse_probe_checkpoint else 0
    full_tokens = spec.budget.train_tokens
    # Full-run FLOPs: every token at full length (an upper bound: the full run's own warmup is cheaper).
    full_flops = full_tokens * flops_fn(spec.slw.full_length)
    race = planned_race(spec, int(round(probe_tokens)), control_tokens)
    return {
        "strategy": spec.tuning.strategy,
        "rounds": rounds,
        "trials": trials,
        "concurrent_trials": spec.tuning.max_concurrent_trials,
        "probe_steps": spec.probe_steps(),
        "probe_window_lr_warmups": spec.probe_steps() / max(spec.optim.lr_warmup_steps, 1),
        "lr_warmup_steps": spec.optim.lr_warmup_steps,
        "tokens_per_probe": int(round(probe_tokens)),
        "tuning_tokens": tuning_tokens,
        "control_tokens": control_tokens,
        "tuning_flops": trials * probe_flops + control_tokens * flops_fn(spec.slw.full_length),
        "full_run_tokens": full_tokens,
        "full_run_flops": full_flops,
        "tuning_fraction": tuning_tokens / full_tokens,
        "net_tuning_fraction": (tuning_tokens - reused) / full_tokens,
        "tuning_flops_fraction": (trials * probe_flops + control_tokens * flops_fn(spec.slw.full_length)) / full_flops,
        "vocab_size": vocab,
        "vocab_source": vocab_source,
        **eval_noise(spec),
        "note": "upper bound without start-length doublings; each doubling adds up to one more search",
        **race,
    }


def planned_race(spec: JobSpec, slw_probe_tokens: int, control_tokens: int) -> dict:
    """The race's worst case (both arms to `tuning.race_max_fraction` of the run) and the T cap."""
    from slwtune.tuning.race import race_worst_case_tokens

    fitted, note = spec.fitted_to_run()
    out = {"race": bool(spec.tuning.race and spec.tuning.control_probe), "duration_cap": spec.duration_cap(),
           "searched_duration_max": fitted.tuning.duration_max, "fit_note": note}
    if not out["race"]:
        return {**out, "race_budget_tokens": 0, "race_tokens": 0, "race_cost_tokens": 0, "race_cost_fraction": 0.0}
    worst = race_worst_case_tokens(spec, slw_probe_tokens, control_tokens or control_probe_tokens(spec))
    return {**out, **worst, "race_cost_fraction": worst["race_cost_tokens"] / spec.budget.train_tokens}


def format_plan(plan: dict) -> str:
    return "\n".join([
        f"strategy        {plan['strategy']}: {plan['rounds']} round(s), {plan['trials']} probe(s), "
        f"{plan['concurrent_trials']} at a time",
        f"probe window    {plan['probe_steps']} steps = {plan['probe_window_lr_warmups']:.1f}x the LR warmup "
        f"({plan['lr_warmup_steps']} steps), ~{plan['tokens_per_probe']:,} tokens per probe",
        f"tuning cost     {plan['tuning_tokens']:,} tokens, {plan['tuning_flops']:.3g} FLOPs (control probe, SLW "
        f"off: {plan['control_tokens']:,} tokens)",
        f"full run        {plan['full_run_tokens']:,} tokens, {plan['full_run_flops']:.3g} FLOPs",
        f"vocabulary      {plan['vocab_size']:,} tokens, from {plan['vocab_source']}",
        f"evaluation      {plan['eval_sequences']:,} sequences: standard error ~{plan['eval_se_estimate']:.3f} nats; "
        f"the fluctuation rule wants <= {plan['eval_se_target']:.3f} (half the tolerance), i.e. >= "
        f"{plan['eval_sequences_needed']:,} "
        f"sequences (run.eval_batches x run.eval_batch_size)"
        + ("" if plan["eval_large_enough"] else ": too small, rises within its noise are ignored, raise it"),
        f"tuning/full     {plan['tuning_fraction']:.2%} of the tokens over a {plan['probe_steps']}-step window "
        f"({plan['tuning_flops_fraction']:.2%} of the "
        f"FLOPs); net of the reused winning probe {plan['net_tuning_fraction']:.2%}",
        f"note            {plan['note']}",
        *race_plan_lines(plan),
    ] + [f"warning         {w}" for w in plan.get("warnings", [])])


def race_plan_lines(plan: dict) -> list[str]:
    if not plan.get("race"):
        return ["race            off (tuning.race or tuning.control_probe): the probe window decides"]
    lines = [f"race (worst)    both arms to {plan['race_budget_tokens']:,} tokens: {plan['race_tokens']:,} tokens, "
             f"{plan['race_cost_tokens']:,} of them the loser's = {plan['race_cost_fraction']:.2%} of the full run "
             f"(the winner's go on in the full run)"]
    lines.append(f"T cap           {plan['duration_cap']} steps (searched T up to {plan['searched_duration_max']})")
    if plan.get("fit_note"):
        lines.append(f"note            {plan['fit_note']}")
    return lines


def planned_trials(spec: JobSpec) -> int:
    """Upper bound of the probe trials a spec may run (the paper search repeats per start length)."""
    from slwtune.tuning.strategies import start_length_choices

    _, trials, _ = planned_probes(spec)
    if spec.tuning.strategy == "paper":
        trials *= max(1, len(start_length_choices(spec.slw.start_length, spec.tuning.max_start_length)))
    return trials + int(spec.tuning.control_probe)


# ---- warnings: tuning that costs more than the presets aim at -----------------------------

# The presets' own target: tuning costs at most this share of the full run's tokens (README, "Presets").
TUNING_SHARE_TARGET = 0.10


def _levers(spec: JobSpec) -> list[tuple[str, dict]]:
    """Knob changes that cut the tuning cost, as (what to write, overrides)."""
    t, out = spec.tuning, []
    if t.control_probe:
        out.append(("--set tuning.control_probe=false (no SLW-off control probe)", {"tuning.control_probe": False}))
    if t.probe_steps is None and t.probe_warmup_multiples > 1.0:
        m = max(1.0, t.probe_warmup_multiples / 2)
        out.append((f"--set tuning.probe_warmup_multiples={m:g} (a shorter probe window)",
                    {"tuning.probe_warmup_multiples": m}))
    if t.strategy == "paper":
        r = min(t.resolution * 2, max(t.duration_max - t.duration_min, 1))
        if r > t.resolution:
            out.append((f"--set tuning.resolution={r} (fewer rounds)", {"tuning.resolution": r}))
    return out


def plan_warnings(spec: JobSpec, plan: dict) -> list[str]:
    """A warning when the tuning costs more than TUNING_SHARE_TARGET of the run, naming the knob that cuts it most."""
    from slwtune.spec import apply_overrides, parse_spec

    share = plan["tuning_fraction"]
    if share <= TUNING_SHARE_TARGET:
        return []
    data = spec.model_dump(mode="json")
    tried = [(make_plan(parse_spec(apply_overrides(data, overrides)))["tuning_fraction"], what)
             for what, overrides in _levers(spec)]
    msg = (f"tuning costs {share:.0%} of the full run's tokens, above the {TUNING_SHARE_TARGET:.0%} the presets aim "
           f"at")
    if tried:
        best, what = min(tried)
        msg += f"; the biggest cut: {what}, to {best:.0%}"
    full_for_target = plan["tuning_tokens"] / TUNING_SHARE_TARGET
    msg += f"; or the run is short for tuning: budget.train_tokens >= {full_for_target:,.0f} keeps it at the target"
    return [msg]
