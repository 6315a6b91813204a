"""`slwtune plan`: the probe plan and its cost against the full run, computed, not run."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from slwtune import metrics as M
from slwtune.errors import SpecError
from slwtune.pacing import make_pacing
from slwtune.spec import JobSpec
from slwtune.tuning.strategies import Outcome, Probe, make_search


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


def planned_vocab(spec: JobSpec) -> tuple[int, str]:
    """The vocabulary the model will get, and where it comes from. Like the training loop:
    model.vocab_size, else the prepared dataset's; a plan does not prepare data, so before
    that it is what the spec's tokenizer will give (data.vocab_size for bpe)."""
    from slwtune.data import DatasetMeta, effective_vocab_size

    if spec.model.vocab_size:
        return spec.model.vocab_size, "model.vocab_size"
    folder = Path(spec.data.path).expanduser()
    if (folder / "meta.json").is_file():
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


# Spread (nats) of the evaluation's batch means, scaled to one sequence (batch SD x sqrt(batch size)),
# measured on the demo GPT in its probe window (docs/results.md, "Verdicts"): the evaluation's standard
# error is about this / sqrt(eval sequences). A plan-time estimate: the run reports its own (val/loss_se).
SEQUENCE_LOSS_SD = 0.40


def eval_noise(spec: JobSpec) -> dict:
    """How noisy one evaluation is against the fluctuation tolerance, and how large it should be.

    A rise counts only above both ln(1 + ppl_rise_tolerance) and val_se_sigmas x the combined
    standard error of two evaluations (sqrt(2) x one's). The evaluation is large enough when its
    standard error is at most half the tolerance (in nats): then the noise bar is within ~1.4x
    the tolerance at the default 2 standard errors, and a rise the size of a few tolerances is
    never noise."""
    t = spec.tuning.stability
    sequences = spec.run.eval_batches * (spec.run.eval_batch_size or spec.data.batch_size)
    se = SEQUENCE_LOSS_SD / math.sqrt(sequences)
    tolerance = math.log1p(t.ppl_rise_tolerance)
    target_se = tolerance / 2
    needed = math.ceil((SEQUENCE_LOSS_SD / target_se) ** 2) if tolerance > 0 else 1
    return {"eval_sequences": sequences, "eval_se_estimate": se, "eval_se_target": target_se,
            "eval_sequences_needed": needed, "eval_large_enough": sequences >= needed}


def make_plan(spec: JobSpec) -> dict:
    """The plan as a JSON-ready dict: probes, tuning cost, full-run cost and their ratios."""
    from slwtune.model import flops_per_token

    vocab, vocab_source = planned_vocab(spec)
    config = planned_model_config(spec, vocab)
    flops_fn = lambda length: flops_per_token(config, length)  # noqa: E731

    rounds, trials, knobs = planned_probes(spec)
    per_probe = [_probe_tokens_and_flops(spec, s, d, flops_fn) for s, d in knobs]
    probe_tokens = sum(p[0] for p in per_probe) / len(per_probe)
    probe_flops = sum(p[1] for p in per_probe) / len(per_probe)
    control_tokens = control_probe_tokens(spec)
    tuning_tokens = int(round(trials * probe_tokens)) + control_tokens
    reused = int(round(probe_tokens)) if spec.tuning.reuse_probe_checkpoint else 0
    full_tokens = spec.budget.train_tokens
    # Full-run FLOPs: every token at full length (an upper bound: the full run's own warmup is cheaper).
    full_flops = full_tokens * flops_fn(spec.slw.full_length)
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
    }


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
    ])


# ---- simulation: the configured search against a stated stability landscape ---------------


@dataclass(frozen=True)
class Landscape:
    """Which verdict each probe would get: `diverged<300,fluctuating>700,early<16`.

    T below `diverged_below` diverges, T above `fluctuating_above` fluctuates, stable
    otherwise; start lengths below `early_below` go wrong at the very beginning
    (diverged, early) whatever T is.
    """

    diverged_below: int | None = None
    fluctuating_above: int | None = None
    early_below: int | None = None

    def verdict(self, probe: Probe) -> tuple[str, bool]:
        """(verdict, early) of a probe."""
        if self.early_below is not None and probe.start_length < self.early_below:
            return M.DIVERGED, True
        if self.diverged_below is not None and probe.duration_steps < self.diverged_below:
            return M.DIVERGED, False
        if self.fluctuating_above is not None and probe.duration_steps > self.fluctuating_above:
            return M.FLUCTUATING, False
        return M.STABLE, False


_RULE = re.compile(r"^(diverged|fluctuating|early)([<>])(\d+)$")
_RULE_FIELDS = {("diverged", "<"): "diverged_below", ("fluctuating", ">"): "fluctuating_above",
                ("early", "<"): "early_below"}


def parse_landscape(rules: str) -> Landscape:
    """`diverged<300,fluctuating>700,early<16` -> Landscape; SpecError names a bad rule."""
    fields: dict[str, int] = {}
    for rule in filter(None, (r.strip() for r in rules.split(","))):
        m = _RULE.match(rule.replace(" ", ""))
        key = _RULE_FIELDS.get((m.group(1), m.group(2))) if m else None
        if key is None:
            raise SpecError([{"loc": "--simulate", "value": rule, "msg": "expected diverged<T, fluctuating>T "
                              "or early<START, comma-separated"}])
        fields[key] = int(m.group(3))
    return Landscape(**fields)


def simulate(spec: JobSpec, landscape: Landscape) -> dict:
    """Run the spec's search against `landscape` instead of training: rounds, chosen, cost.

    A probe that goes wrong early stops at `tuning.stability.early_fraction` of the window (the
    loop stops at its verdict); every other probe is counted over the whole window (an upper
    bound: a fluctuating probe stops at the report that shows it).
    """
    search = make_search(spec, study_name="simulation", default_storage="sqlite:///:memory:")
    window = spec.probe_steps()
    early_steps = max(1, math.ceil(spec.tuning.stability.early_fraction * window))
    rounds, tokens = [], control_probe_tokens(spec)  # the control runs the whole window (not simulated)
    while probes := search.next_round():
        outcomes = [Outcome(p, *landscape.verdict(p)) for p in probes]
        rounds.append([{**o.probe.as_config(), "verdict": o.verdict} for o in outcomes])
        tokens += sum(probe_tokens(spec, o.probe, early_steps if o.early else window) for o in outcomes)
        search.tell(outcomes)
    chosen = search.chosen()
    reused = probe_tokens(spec, chosen, window) if chosen and spec.tuning.reuse_probe_checkpoint else 0
    full = spec.budget.train_tokens
    return {"rounds": rounds, "chosen": chosen.as_config() if chosen else None, "probe_steps": window,
            "tuning_tokens": tokens, "tuning_fraction": tokens / full,
            "net_tuning_fraction": (tokens - reused) / full, "notes": list(search.notes),
            "violations": search.violations()}


def control_probe_tokens(spec: JobSpec) -> int:
    """Tokens of the control probe (SLW off, every step at full length), 0 when it is turned off."""
    if not spec.tuning.control_probe:
        return 0
    return spec.data.batch_size * spec.slw.full_length * spec.probe_steps()


def probe_tokens(spec: JobSpec, probe: Probe, steps: int) -> int:
    """Tokens a probe with these knobs trains on in its first `steps` steps."""
    pacing = make_pacing(spec.with_slw(probe.start_length, probe.duration_steps).slw)
    return sum(spec.data.batch_size * pacing(t) for t in range(1, steps + 1))


def format_simulation(sim: dict) -> str:
    lines = []
    for i, probes in enumerate(sim["rounds"], 1):
        lines.append(f"round {i}: " + ", ".join(f"s={p['start_length']} T={p['duration_steps']} {p['verdict']}"
                                                 for p in probes))
    chosen = sim["chosen"]
    lines.append("chosen: " + (f"start length {chosen['start_length']}, T={chosen['duration_steps']}"
                               if chosen else "nothing (no stable probe)"))
    lines += [f"note: {n}" for n in sim["notes"]] + [f"violation: {v}" for v in sim["violations"]]
    lines.append(f"probe window {sim['probe_steps']} steps; tuning cost {sim['tuning_tokens']:,} tokens = "
                 f"{sim['tuning_fraction']:.2%} of the full run ({sim['net_tuning_fraction']:.2%} net of the reused "
                 f"winning probe)")
    return "\n".join(lines)


def planned_trials(spec: JobSpec) -> int:
    """Upper bound of the probe trials a spec may run (the paper search repeats per start length)."""
    from slwtune.tuning.strategies import start_length_choices

    _, trials, _ = planned_probes(spec)
    if spec.tuning.strategy == "paper":
        trials *= max(1, len(start_length_choices(spec.slw.start_length, spec.tuning.max_start_length)))
    return trials + int(spec.tuning.control_probe)
