"""`slwtune plan --simulate`: the configured search against a stated stability landscape.

No training: `landscape_runner` answers each probe from rules such as
`diverged<300,fluctuating>700,early<16,race=slw`, and the job's own search loop
(`slwtune.tuning.loop.run_search`) runs the strategy against it. `plan` also uses it to find the
paper search's worst case over a family of landscapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from slwtune import metrics as M
from slwtune.errors import SpecError
from slwtune.pacing import make_pacing
from slwtune.spec import JobSpec
from slwtune.tuning.loop import RoundRunner, run_search
from slwtune.tuning.results import ProbeResult, probe_spec
from slwtune.tuning.searches import make_search
from slwtune.tuning.strategies import Probe


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


def landscape_runner(landscape: Landscape) -> RoundRunner:
    """A round runner for `slwtune.tuning.loop.run_search` that answers from `landscape` instead of
    training: each probe's verdict; the control (SLW off) is taken as stable (a landscape says nothing
    of it). Token counts are left to the caller (`simulate`), which knows the window."""

    def run(probes: list[Probe], round_index: int) -> list[ProbeResult]:
        return [simulated_result(p, *(landscape.verdict(p) if p.slw else (M.STABLE, False)), round_index)
                for p in probes]

    return run


def simulated_result(probe: Probe, verdict: str, early: bool, round_index: int) -> ProbeResult:
    return ProbeResult(start_length=probe.start_length, duration_steps=probe.duration_steps, verdict=verdict,
                       reason="", early=early, best_val_ppl=None, final_val_ppl=None, max_loss_ratio=None, steps=0,
                       tokens=0, wall_s=0.0, checkpoint=None, trial_id="", round=round_index, slw=probe.slw)


def simulate(spec: JobSpec, landscape: Landscape) -> dict:
    """Run the spec's search against `landscape` instead of training: rounds, chosen, cost.

    The same loop as a job (`slwtune.tuning.loop`). A probe that goes wrong early stops at
    `tuning.stability.early_fraction` of the window (the loop stops at its verdict); every other
    probe is counted over the whole window (an upper bound: a fluctuating probe stops at the
    report that shows it). The control probe runs the whole window.
    """
    search = make_search(spec.fitted_to_run()[0], study_name="simulation", default_storage="sqlite:///:memory:")
    run = run_search(search, landscape_runner(landscape),
                     control_length=spec.slw.full_length if spec.tuning.control_probe else None)
    window = spec.probe_steps()
    early_steps = max(1, math.ceil(spec.tuning.stability.early_fraction * window))
    tokens = control_probe_tokens(spec) + sum(probe_tokens(spec, r.probe, early_steps if r.early else window)
                                              for r in run.results)
    chosen = search.chosen()
    reused = probe_tokens(spec, chosen, window) if chosen and spec.tuning.reuse_probe_checkpoint else 0
    full = spec.budget.train_tokens
    return {"rounds": [[{**r.probe.as_config(), "verdict": r.verdict} for r in batch] for batch in run.rounds],
            "chosen": chosen.as_config() if chosen else None, "probe_steps": window,
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
    pacing = make_pacing(probe_spec(spec, probe).slw)
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
