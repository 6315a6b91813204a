"""The decision between SLW and plain training: a paired race at equal tokens.

After the search, the best SLW candidate and the control (SLW off) go on from their probe
checkpoints with the full run's own schedule (`RunOptions.max_tokens` stops a segment; the LR
schedule is unchanged), in segments that end at shared token milestones. After each segment
the rule below compares the two validation-loss curves at equal tokens:

- Pairing: at each evaluation of the control (its steps are all full length, so its token
  counts are the fixed grid), the SLW arm's val loss and standard error are interpolated
  linearly over tokens between its own two neighbouring evaluations; points outside the SLW
  arm's evaluated range are not compared.
- Band: z x sqrt(se_slw^2 + se_control^2) (`tuning.race_z`), the evaluation's own noise.
- The control wins as soon as it leads by more than the band at `tuning.race_patience`
  consecutive paired evaluations. SLW wins the same way, but only with evaluations past
  (1 + `tuning.race_warmup_margin`) x T steps of its warmup: before that, short sequences give
  it more optimizer steps per token, and its lead predicts nothing about the end.
- An arm that diverges loses (one that crashes runs its segment once more first: a crash is
  not an SLW signal; a second crash loses). At the race budget (`tuning.race_max_fraction` of the run) an
  undecided race goes to the baseline, the safer arm: a gap inside the noise band has not
  shown a gain, and the promise is to end no worse than without SLW.

Anchors (read in the installed sources): Optuna's `WilcoxonPruner` (optuna/pruners/_wilcoxon.py)
compares the current trial with the best one only on the steps *both* reported (paired), waits
for `n_startup_steps` (2) such steps, and prunes only when it is sure up to `p_threshold` (0.1)
that the trial is worse: here the pairs are equal-token evaluations on the same validation
batches, the startup wait is `race_patience` and the certainty is the z-band. ASHA (Ray Tune's
`AsyncHyperBandScheduler`, ray/tune/schedulers/async_hyperband.py) judges trials only at shared
rungs past a `grace_period` and stops those below the rung's cutoff (a percentile of the
recorded results): here the rungs are the shared token milestones that end each segment, and
the SLW arm's grace period is its warmup + margin (it cannot win before).
Like Optuna's `PatientPruner` and llm-foundry's consecutive-outlier rule, one noisy
evaluation never decides. Unlike ASHA, the race is a pair, and the winner's training goes on
(the full run continues from its checkpoint), so only the loser's race tokens are spent.

The pure rule (`decide`) is tested with synthetic curves; `race` drives the segments with a
runner from `slwtune.tuning.race_runs`: `local_segment_runner` (in-process, tune_locally and tests)
or `run_race_round` (the driver: each arm's segment a Ray Train run, the arms alternating). Progress is journaled through `save` after every segment,
so a restarted driver does not rerun finished segments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from slwtune import metrics as M
from slwtune.pacing import make_pacing
from slwtune.schedule import tokens_for_steps
from slwtune.spec import JobSpec
from slwtune.tuning.results import ProbeResult, finite_or_none, probe_spec
from slwtune.tuning.strategies import Probe

__all__ = ["ARM_BASELINE", "ARM_SLW", "Arm", "Decision", "Gap", "Point", "RaceRule", "decide", "paired_gaps",
           "race", "race_budget_tokens", "race_worst_case_tokens", "segment_milestones"]

ARM_SLW, ARM_BASELINE = "slw", "baseline"
RULE_BAND, RULE_DIVERGED, RULE_BUDGET = "band", "diverged", "budget"


@dataclass(frozen=True)
class Point:
    """One evaluation of an arm: val loss (full length) and its standard error at `tokens`."""

    tokens: int
    loss: float
    se: float | None = None


@dataclass(frozen=True)
class Gap:
    """SLW minus control val loss at equal tokens (negative: SLW ahead), and the noise band."""

    tokens: int
    gap: float
    band: float
    slw_may_win: bool  # past the SLW arm's warmup + margin


@dataclass(frozen=True)
class RaceRule:
    z: float
    patience: int
    slw_from_tokens: int  # SLW evaluations count for an SLW win only from here
    budget_tokens: int    # the race stops here at the latest

    @classmethod
    def from_spec(cls, spec: JobSpec, start_length: int, duration_steps: int) -> "RaceRule":
        t = spec.tuning
        return cls(z=t.race_z, patience=t.race_patience,
                   slw_from_tokens=slw_past_warmup_tokens(spec, start_length, duration_steps),
                   budget_tokens=race_budget_tokens(spec))


@dataclass
class Decision:
    winner: str              # ARM_SLW | ARM_BASELINE
    decided: bool            # False: undecided at the budget (the rule chose the safer arm)
    rule: str                # band | diverged | budget
    reason: str
    tokens: int | None = None
    gap: float | None = None
    band: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Arm:
    """One arm of the race: its knobs, last checkpoint, evaluations and state (JSON-able: the journal)."""

    name: str                  # ARM_SLW | ARM_BASELINE
    start_length: int
    duration_steps: int
    checkpoint: str | None
    start_tokens: int          # tokens of the probe it continues from
    tokens: int = 0
    points: list = field(default_factory=list)  # [tokens, val loss, se] of every race evaluation
    verdict: str = M.STABLE
    reason: str = ""
    segments: int = 0
    wall_s: float = 0.0
    mlflow_run_id: str | None = None

    @property
    def slw(self) -> bool:
        return self.name == ARM_SLW

    @property
    def probe(self) -> Probe:
        """The knobs this arm trains with (`Probe.control` for the baseline)."""
        return Probe(self.start_length, self.duration_steps, self.slw)

    def spec(self, base: JobSpec) -> JobSpec:
        return probe_spec(base, self.probe)

    def curve(self) -> list[Point]:
        return [Point(int(t), float(v), None if s is None else float(s)) for t, v, s in self.points]

    @property
    def race_tokens(self) -> int:
        return max(0, self.tokens - self.start_tokens)

    @property
    def failed(self) -> bool:
        return self.verdict in M.RUN_FAILED_VERDICTS

    def to_dict(self) -> dict:
        return asdict(self)


# ---- pure pieces ------------------------------------------------------------------------


def start_arms(spec: JobSpec, chosen: Probe, seed: ProbeResult, control: ProbeResult) -> dict[str, Arm]:
    """Both arms at their probes' ends: the chosen SLW knobs from `seed`, the baseline from `control`."""
    return {ARM_SLW: Arm(ARM_SLW, chosen.start_length, chosen.duration_steps, seed.checkpoint, seed.tokens,
                         tokens=seed.tokens),
            ARM_BASELINE: Arm(ARM_BASELINE, spec.slw.full_length, 0, control.checkpoint, control.tokens,
                              tokens=control.tokens)}


def race_budget_tokens(spec: JobSpec) -> int:
    return spec.race_tokens()


def slw_past_warmup_tokens(spec: JobSpec, start_length: int, duration_steps: int) -> int:
    """Tokens the SLW arm has trained after (1 + race_warmup_margin) x T steps."""
    pacing = make_pacing(probe_spec(spec, Probe(start_length, duration_steps)).slw)
    steps = math.ceil((1 + spec.tuning.race_warmup_margin) * duration_steps)
    return tokens_for_steps(pacing, steps, spec.data.batch_size)


def segment_milestones(start_tokens: int, spec: JobSpec) -> list[int]:
    """Shared token milestones that end the race's segments (ASHA's rungs): every `race_patience`
    full-length evaluations of the control, up to the race budget."""
    t, budget = spec.tuning, race_budget_tokens(spec)
    step = t.race_patience * spec.run.eval_every_steps * spec.data.batch_size * spec.slw.full_length
    out, m = [], start_tokens
    while m < budget:
        m = min(budget, m + step)
        out.append(m)
    return out


def loss_at(points: list[Point], tokens: int) -> tuple[float, float | None] | None:
    """(val loss, se) at `tokens`, linear between the two evaluations around it; None outside them."""
    pts = sorted(points, key=lambda p: p.tokens)
    for a, b in zip(pts, pts[1:]):
        if a.tokens <= tokens <= b.tokens:
            w = 0.0 if b.tokens == a.tokens else (tokens - a.tokens) / (b.tokens - a.tokens)
            se = None if a.se is None or b.se is None else a.se + (b.se - a.se) * w
            return a.loss + (b.loss - a.loss) * w, se
    if len(pts) == 1 and pts[0].tokens == tokens:
        return pts[0].loss, pts[0].se
    return None


def paired_gaps(slw: list[Point], control: list[Point], rule: RaceRule) -> list[Gap]:
    """The gap at each control evaluation inside the SLW arm's evaluated range, in token order."""
    out = []
    for c in sorted(control, key=lambda p: p.tokens):
        at = loss_at(slw, c.tokens)
        if at is None:
            continue
        loss, se = at
        band = rule.z * math.sqrt((se or 0.0) ** 2 + (c.se or 0.0) ** 2)
        out.append(Gap(c.tokens, loss - c.loss, band, c.tokens >= rule.slw_from_tokens))
    return out


def decide(slw: list[Point], control: list[Point], rule: RaceRule, *, slw_failed: bool = False,
           control_failed: bool = False, at_budget: bool = False) -> Decision | None:
    """The race's decision so far, or None while it goes on (see the module docstring)."""
    if slw_failed or control_failed:
        if control_failed and not slw_failed:
            return Decision(ARM_SLW, True, RULE_DIVERGED, "the control diverged or crashed in the race")
        return Decision(ARM_BASELINE, True, RULE_DIVERGED,
                        "the SLW arm diverged or crashed in the race" + (" (so did the control)" * control_failed))
    leads = {ARM_SLW: 0, ARM_BASELINE: 0}
    gaps = paired_gaps(slw, control, rule)
    for g in gaps:
        leads[ARM_BASELINE] = leads[ARM_BASELINE] + 1 if g.gap > g.band else 0
        leads[ARM_SLW] = leads[ARM_SLW] + 1 if (g.gap < -g.band and g.slw_may_win) else 0
        for arm in (ARM_BASELINE, ARM_SLW):
            if leads[arm] >= rule.patience:
                who = "the control (SLW off)" if arm == ARM_BASELINE else "SLW"
                return Decision(arm, True, RULE_BAND,
                                f"{who} led by more than the band at {rule.patience} consecutive evaluations "
                                f"at equal tokens", g.tokens, g.gap, g.band)
    if not at_budget:
        return None
    last = gaps[-1] if gaps else None
    why = ("the SLW arm had not passed its warmup + margin" if last is None or not last.slw_may_win
           else "the gap stayed inside the noise band")
    return Decision(ARM_BASELINE, False, RULE_BUDGET,
                    f"undecided at the race budget ({why}): the baseline, the safer arm, goes on",
                    last.tokens if last else None, last.gap if last else None, last.band if last else None)


def race_worst_case_tokens(spec: JobSpec, slw_probe_tokens: int, control_probe_tokens: int) -> dict:
    """Race tokens if it runs to its budget: both arms, and the loser's share (the race's cost:
    the winner's race tokens are the full run's first tokens)."""
    budget = race_budget_tokens(spec)
    slw, base = max(0, budget - slw_probe_tokens), max(0, budget - control_probe_tokens)
    return {"race_budget_tokens": budget, "race_tokens": slw + base, "race_cost_tokens": max(slw, base)}


# ---- the race -----------------------------------------------------------------------------

SegmentRunner = Callable[[list[Arm], int, int], None]  # (arms, until tokens, segment index) -> updates arms


def race(spec: JobSpec, arms: dict[str, Arm], run_segment: SegmentRunner, *,
         save: Callable[[dict], None] | None = None, done_segments: int = 0,
         log: Callable[[str], None] | None = None) -> Decision:
    """Run segments until `decide` answers; `save(journal)` after each, so a restart skips them.

    `arms` holds ARM_SLW and ARM_BASELINE (continued as they are when resumed); segments before
    `done_segments` were finished before a restart and are not rerun.
    """
    slw, base = arms[ARM_SLW], arms[ARM_BASELINE]
    rule = RaceRule.from_spec(spec, slw.start_length, slw.duration_steps)
    milestones = segment_milestones(max(slw.start_tokens, base.start_tokens), spec)

    def verdict(at_budget: bool) -> Decision | None:
        return decide(slw.curve(), base.curve(), rule, slw_failed=slw.failed, control_failed=base.failed,
                      at_budget=at_budget)

    decision = verdict(at_budget=not milestones[done_segments:])
    for index, until in enumerate(milestones[done_segments:], start=done_segments + 1):
        if decision is not None:
            break
        run_segment([slw, base], until, index)
        crashed = [a for a in (slw, base) if a.verdict == M.FAILED]
        if crashed:  # a crash says nothing about SLW: that arm runs its segment once more (as a probe would)
            for arm in crashed:
                arm.verdict, arm.reason = M.STABLE, ""
            run_segment(crashed, until, index)
        if save:
            save(journal(arms, index, None))
        decision = verdict(at_budget=index == len(milestones))
        if log:
            g = paired_gaps(slw.curve(), base.curve(), rule)
            log(f"race segment {index}/{len(milestones)} to {until:,} tokens: "
                + (f"gap {g[-1].gap:+.3f} band {g[-1].band:.3f}" if g else "no paired evaluation yet")
                + (f" -> {decision.winner}" if decision else ""))
    if decision is None:  # no milestone left (the probes already reached the budget)
        decision = verdict(at_budget=True)
    if save:
        save(journal(arms, len(milestones), decision))
    return decision


def journal(arms: dict[str, Arm], segments: int, decision: Decision | None) -> dict:
    """The race's state as the job keeps it (job.json `race`)."""
    return {"arms": {k: a.to_dict() for k, a in arms.items()}, "segments_done": segments,
            "decision": decision.to_dict() if decision else None}


def from_journal(state: dict) -> tuple[dict[str, Arm], int, Decision | None]:
    arms = {k: Arm(**a) for k, a in state["arms"].items()}
    decision = Decision(**state["decision"]) if state.get("decision") else None
    return arms, int(state.get("segments_done", 0)), decision


def arm_points(reports: list[dict]) -> list[list]:
    """[tokens, val loss, se] of every report that evaluated (a train_loop report or a Tune row)."""
    out = []
    for r in reports:
        loss, tokens = finite_or_none(r.get(M.VAL_LOSS)), finite_or_none(r.get(M.TRAIN_TOKENS))
        if loss is not None and tokens is not None:
            out.append([int(tokens), loss, finite_or_none(r.get(M.VAL_LOSS_SE))])
    return out


def update_arm(arm: Arm, reports: list[dict], checkpoint: str | None, wall_s: float, error: str | None) -> None:
    """Fold one segment's reports into its arm."""
    arm.points.extend(arm_points(reports))
    last = reports[-1] if reports else {}
    arm.tokens = int(last.get(M.TRAIN_TOKENS) or arm.tokens)
    arm.checkpoint = checkpoint or arm.checkpoint
    arm.segments += 1
    arm.wall_s += wall_s
    if error is not None:
        arm.verdict, arm.reason = M.FAILED, error
    elif last.get(M.VERDICT) == M.DIVERGED:
        arm.verdict, arm.reason = M.DIVERGED, str(last.get(M.REASON) or "")
    elif not reports:
        arm.verdict, arm.reason = M.FAILED, "the segment reported nothing"


def decision_report(spec: JobSpec, arms: dict[str, Arm] | None, decision: Decision | None, *,
                    note: str | None = None) -> dict:
    """The report's `decision` section: which arm, why, at how many tokens, the gap, its band, the cost."""
    if arms is None or decision is None:
        return {"raced": False, "winner": None, "decided": False, "rule": None, "reason": note, "tokens": None,
                "gap": None, "band": None, "race_tokens": 0, "race_cost_tokens": 0, "arms": {}}
    loser = arms[ARM_BASELINE if decision.winner == ARM_SLW else ARM_SLW]
    slw = arms[ARM_SLW]
    return {"raced": True, **decision.to_dict(),
            "slw_from_tokens": slw_past_warmup_tokens(spec, slw.start_length, slw.duration_steps),
            "budget_tokens": race_budget_tokens(spec), "z": spec.tuning.race_z,
            "patience": spec.tuning.race_patience,
            "race_tokens": sum(a.race_tokens for a in arms.values()), "race_cost_tokens": loser.race_tokens,
            "arms": {k: {"start_length": a.start_length if a.slw else None,
                         "duration_steps": a.duration_steps if a.slw else None, "tokens": a.tokens,
                         "race_tokens": a.race_tokens, "verdict": a.verdict, "reason": a.reason,
                         "segments": a.segments, "wall_s": a.wall_s, "checkpoint": a.checkpoint,
                         "mlflow_run_id": a.mlflow_run_id, "curve": a.points} for k, a in arms.items()}}
