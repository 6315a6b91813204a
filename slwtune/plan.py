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
from slwtune.tuning.searches import make_search
from slwtune.tuning.strategies import Outcome, Probe


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
        search = make_search(spec, study_name="plan", default_storage="sqlite:///:memory:")
        rounds = trials = 0
        while probes := search.next_round():
            rounds, trials = rounds + 1, trials + len(probes)
            search.tell(Outcome(p, *land.verdict(p)) for p in probes)
        worst = max(worst, (rounds, trials), key=lambda rt: (rt[1], rt[0]))
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
    race: str | None = None  # the race's stated outcome: slw | baseline | tie (None: not stated)

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


RACE_OUTCOMES = ("slw", "baseline", "tie")


def parse_landscape(rules: str) -> Landscape:
    """`diverged<300,fluctuating>700,early<16,race=slw` -> Landscape; SpecError names every bad rule."""
    fields: dict = {}
    problems = []
    for rule in filter(None, (r.strip() for r in rules.split(","))):
        if rule.replace(" ", "").startswith("race="):
            outcome = rule.replace(" ", "")[len("race="):]
            if outcome not in RACE_OUTCOMES:
                problems.append({"loc": "--simulate", "value": rule, "msg": f"race= takes one of {RACE_OUTCOMES}"})
            else:
                fields["race"] = outcome
            continue
        m = _RULE.match(rule.replace(" ", ""))
        key = _RULE_FIELDS.get((m.group(1), m.group(2))) if m else None
        if key is None:
            problems.append({"loc": "--simulate", "value": rule, "msg": "expected diverged<T, fluctuating>T, "
                             "early<START or race=slw|baseline|tie, comma-separated"})
        elif key in fields:
            problems.append({"loc": "--simulate", "value": rule, "msg": f"a second {m.group(1)}{m.group(2)} rule"})
        else:
            fields[key] = int(m.group(3))
    low, high = fields.get("diverged_below"), fields.get("fluctuating_above")
    if low is not None and high is not None and high + 1 < low:
        problems.append({"loc": "--simulate", "value": rules, "msg": f"contradictory: T from {high + 1} to {low - 1} "
                         f"would be both diverged (<{low}) and fluctuating (>{high})"})
    if problems:
        raise SpecError(problems, title="invalid --simulate rules")
    return Landscape(**fields)


def simulate(spec: JobSpec, landscape: Landscape) -> dict:
    """Run the spec's search against `landscape` instead of training: rounds, chosen, cost.

    A probe that goes wrong early stops at `tuning.stability.early_fraction` of the window (the
    loop stops at its verdict); every other probe is counted over the whole window (an upper
    bound: a fluctuating probe stops at the report that shows it).
    """
    search = make_search(spec.fitted_to_run()[0], study_name="simulation", default_storage="sqlite:///:memory:")
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
            "violations": search.violations(), "race": simulated_race(spec, chosen, landscape)}


def simulated_race(spec: JobSpec, chosen: Probe | None, landscape: Landscape) -> dict:
    """What the race would do after this search: its rule's numbers, and the stated outcome's full run.
    The control is taken as stable (a probe landscape says nothing about it)."""
    from slwtune.tuning.race import race_worst_case_tokens, slw_past_warmup_tokens

    if not (spec.tuning.race and spec.tuning.control_probe) or chosen is None:
        why = "no race: " + ("tuning.race or tuning.control_probe is off" if chosen else "no stable SLW probe")
        return {"raced": False, "outcome": why, "full_run": "baseline" if chosen is None else "slw"}
    window = spec.probe_steps()
    worst = race_worst_case_tokens(spec, probe_tokens(spec, chosen, window), control_probe_tokens(spec))
    slw_from = slw_past_warmup_tokens(spec, chosen.start_length, chosen.duration_steps)
    out = {"raced": True, "slw_from_tokens": slw_from, **worst, "stated": landscape.race}
    can_win = slw_from < worst["race_budget_tokens"]
    if landscape.race == "slw" and not can_win:
        out.update(outcome="SLW cannot win: its warmup + margin ends after the race budget; undecided -> baseline",
                   full_run="baseline")
    elif landscape.race == "slw":
        out.update(outcome=f"SLW wins past {slw_from:,} tokens; the full run continues from its race checkpoint",
                   full_run="slw")
    elif landscape.race == "baseline":
        out.update(outcome="the control wins (it may do so early); the full run follows "
                           f"tuning.when_baseline_wins={spec.tuning.when_baseline_wins}",
                   full_run={"run_baseline": "baseline", "run_slw": "slw", "stop": "none"}[
                       spec.tuning.when_baseline_wins])
    elif landscape.race == "tie":
        out.update(outcome=f"undecided at {worst['race_budget_tokens']:,} tokens: the baseline, the safer arm",
                   full_run="baseline")
    else:
        out.update(outcome=("state race=slw|baseline|tie to see the full run; SLW can win only past "
                            f"{slw_from:,} tokens" + ("" if can_win else " (after the race budget: it cannot)")),
                   full_run=None)
    return out


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
    race = sim.get("race") or {}
    if race.get("raced"):
        lines.append(f"race: SLW may win only past {race['slw_from_tokens']:,} tokens; budget "
                     f"{race['race_budget_tokens']:,} tokens (worst case {race['race_tokens']:,} tokens, "
                     f"{race['race_cost_tokens']:,} the loser's); {race['outcome']}")
    elif race:
        lines.append(f"race: {race['outcome']}")
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
