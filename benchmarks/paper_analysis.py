"""paper_effect's evidence and its analysis: a run's curve, the target, tokens and time to it, the table's
rows and the headline (pure functions of the runs)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from paper_arms import ARMS, BASELINE, COMPOSER, DEEPSPEED, SLW_ARMS, TUNED
from slwtune import metrics as M
from slwtune.tuning import race as R
from slwtune.tuning.local import CPU_S

SPIKE_BOUNDS = (1.2, 1.5)


# ---- one run, recorded ----------------------------------------------------------------------------


@dataclass
class Curve:
    """A run's evidence, already offset by what came before it (the tuned arm's tuning)."""

    evals: list[tuple[float, float, float, float]] = field(default_factory=list)  # (tokens, wall, cpu, val loss)
    steps: list[dict] = field(default_factory=list)  # per-step rows (loss ratio, Adam variance)

    def add(self, reports: list[dict], rows: list[dict], tokens0: float = 0, wall0: float = 0,
            cpu0: float = 0) -> None:
        """Reports (val loss) and StepRecorder rows of one training call, shifted by the offsets."""
        at_step = {r[M.STEP]: r for r in rows}
        for rep in reports:
            val = rep.get(M.VAL_LOSS)
            row = at_step.get(rep[M.STEP])
            if val is None or row is None or val >= M.NONFINITE_STANDIN:
                continue
            # the time the point exists: after the step's training, before its own evaluation
            self.evals.append((tokens0 + rep[M.TRAIN_TOKENS], wall0 + row[M.WALL_S], cpu0 + row[CPU_S], val))
        self.steps.extend(rows)


@dataclass
class Run:
    arm: str
    lr: float
    seed: int
    knobs: str
    curve: Curve
    final_val_loss: float | None
    verdict: str
    tokens: int                # trained in this arm's full run (from its start, probe prefix included)
    wall_s: float
    cpu_s: float
    tuning_tokens: int = 0
    tuning_wall_s: float = 0.0
    tuning_cpu_s: float = 0.0
    tuning_note: str = ""

    def spikes(self, bound: float) -> int:
        return sum(1 for r in self.curve.steps if r.get(M.TRAIN_LOSS_RATIO, 1.0) > bound)

    def max_adam_var(self) -> float | None:
        values = [r[M.ADAM_VAR_MAX] for r in self.curve.steps if M.ADAM_VAR_MAX in r]
        return max(values) if values else None


# ---- analysis -----------------------------------------------------------------------------------------


def interp(points: list[tuple[float, float]], x: float) -> float:
    """y at x: linear between the two points around it (the race's rule, `race.loss_at`), flat beyond the ends."""
    xs = [p for p, _ in points]
    return R.loss_at([R.Point(p, y) for p, y in points], min(max(x, min(xs)), max(xs)))[0]


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The mean of several (x, y) curves on the x values they all cover (each interpolated there)."""
    curves = [sorted(c) for c in curves if c]
    if not curves:
        return []
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    grid = sorted({x for c in curves for x, _ in c if lo <= x <= hi})
    return [(x, statistics.fmean(interp(c, x) for c in curves)) for x in grid]


def first_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The first x at which the curve comes down to `target` (linear between points), or None."""
    for i, (x, y) in enumerate(points):
        if y <= target:
            if i == 0:
                return x
            x0, y0 = points[i - 1]
            return x0 + (x - x0) * (y0 - target) / (y0 - y) if y0 != y else x
    return None


def to_target(runs: list[Run], target: float | None) -> dict:
    """Tokens, wall and CPU seconds at which the seed-mean val curve of `runs` reaches `target`."""
    out = {"tokens": None, "wall_s": None, "cpu_s": None}
    evals = [r.curve.evals for r in runs]
    if target is None or not evals or any(not e for e in evals):
        return out
    tokens = first_reach(mean_curve([[(t, v) for t, _, _, v in e] for e in evals]), target)
    if tokens is None:
        return out
    out["tokens"] = tokens
    out["wall_s"] = statistics.fmean(interp([(t, w) for t, w, _, _ in e], tokens) for e in evals)
    out["cpu_s"] = statistics.fmean(interp([(t, c) for t, _, c, _ in e], tokens) for e in evals)
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values) -> float | None:
    """Sample standard deviation; None below two values (one seed has no spread to show)."""
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[Run]) -> dict:
    """Rows of the table (one per LR and arm), the target and the headline figures."""
    groups: dict[tuple[float, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.lr, r.arm), []).append(r)
    finals = {k: _mean(r.final_val_loss for r in g) for k, g in groups.items()}
    baselines = {lr: v for (lr, arm), v in finals.items() if arm == BASELINE and v is not None}
    best_lr = min(baselines, key=baselines.get) if baselines else None
    target = baselines.get(best_lr)
    rows = []
    for (lr, arm), group in sorted(groups.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
        reach = to_target(group, target)
        rows.append({
            "lr": lr, "arm": arm, "seeds": len(group), "knobs": "; ".join(sorted({r.knobs for r in group})),
            "final_val_loss": finals[(lr, arm)], "final_val_loss_std": _std(r.final_val_loss for r in group),
            "runs_with_val": sum(1 for r in group if r.final_val_loss is not None),
            "verdicts": {v: sum(1 for r in group if r.verdict == v) for v in sorted({r.verdict for r in group})},
            "tokens_to_target": reach["tokens"], "wall_s_to_target": reach["wall_s"],
            "cpu_s_to_target": reach["cpu_s"],
            **{f"spikes_gt_{b}": _mean(r.spikes(b) for r in group) for b in SPIKE_BOUNDS},
            "max_adam_var": _mean(r.max_adam_var() for r in group),
            "tuning_tokens": _mean(r.tuning_tokens for r in group) if arm == TUNED else None,
            "tuning_wall_s": _mean(r.tuning_wall_s for r in group) if arm == TUNED else None,
            "tuning_notes": [r.tuning_note for r in group] if arm == TUNED else [],
            "wall_s": _mean(r.wall_s + r.tuning_wall_s for r in group),
        })
    return {"target_val_loss": target, "best_baseline_lr": best_lr, "rows": rows,
            "headline": headline(rows, runs, best_lr)}


def _speedup(base: float | None, other: float | None) -> float | None:
    return base / other if base is not None and other else None


def headline(rows: list[dict], runs: list[Run], best_lr: float | None) -> dict:
    base = next((r for r in rows if r["arm"] == BASELINE and r["lr"] == best_lr), None)
    slw = [r for r in rows if r["arm"] in SLW_ARMS]

    def best(key: str) -> dict | None:
        reached = [r for r in slw if r[key] is not None]
        return min(reached, key=lambda r: r[key]) if reached else None

    by_tokens, by_time, by_cpu = best("tokens_to_target"), best("wall_s_to_target"), best("cpu_s_to_target")

    def best_final(arms) -> float | None:
        values = [r["final_val_loss"] for r in rows if r["arm"] in arms and r["final_val_loss"] is not None]
        return min(values) if values else None

    tuned, default = best_final((TUNED,)), best_final((COMPOSER, DEEPSPEED))

    def spikes(arms) -> dict:
        group = [r for r in runs if r.arm in arms]
        return {f"gt_{b}": _mean(r.spikes(b) for r in group) for b in SPIKE_BOUNDS}

    def name(row):
        return None if row is None else f"{row['arm']}@lr={row['lr']:g}"

    return {
        "tokens_to_target_speedup": _speedup(base and base["tokens_to_target"], by_tokens and by_tokens["tokens_to_target"]),
        "time_to_target_speedup": _speedup(base and base["wall_s_to_target"], by_time and by_time["wall_s_to_target"]),
        "tuned_vs_default_val_loss": None if tuned is None or default is None else tuned - default,
        "spikes_baseline": spikes((BASELINE,)),
        "spikes_slw": spikes(SLW_ARMS),
        "cpu_time_to_target_speedup": _speedup(base and base["cpu_s_to_target"], by_cpu and by_cpu["cpu_s_to_target"]),
        "best_baseline": name(base), "best_slw_by_tokens": name(by_tokens), "best_slw_by_time": name(by_time),
    }


def run_record(r: Run) -> dict:
    """One run as results.json keeps it: figures and its val curve (tokens, wall s, CPU s, val loss)."""
    return {"arm": r.arm, "lr": r.lr, "seed": r.seed, "knobs": r.knobs, "final_val_loss": r.final_val_loss,
            "verdict": r.verdict, "tokens": r.tokens, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
            "tuning_tokens": r.tuning_tokens, "tuning_wall_s": r.tuning_wall_s, "tuning_cpu_s": r.tuning_cpu_s,
            "tuning_note": r.tuning_note, **{f"spikes_gt_{b}": r.spikes(b) for b in SPIKE_BOUNDS},
            "max_adam_var": r.max_adam_var(), "evals": r.curve.evals}
