"""The selection report: report.json, report.md and the PNG plots of a tuning job."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slwtune import metrics as M
from slwtune.files import REPORT_FILE, REPORT_MARKDOWN
from slwtune.pacing import make_pacing
from slwtune.schedule import steps_for_tokens
from slwtune.tuning.evidence import evaluation_line, evaluation_note, measured_evaluation
from slwtune.tuning.results import probe_spec

ADVICE_NONE_STABLE = [
    "lower optim.lr (instability grows with the learning rate)",
    "widen the duration range (raise tuning.duration_max)",
    "raise slw.start_length (or tuning.max_start_length so the search may double it)",
    "loosen tuning.stability thresholds if the probes are merely noisy",
]


SLW_NOT_NEEDED = ("SLW is not needed at this LR and batch: the baseline (SLW off) was stable and SLW did not "
                  "beat it at equal tokens (see the decision). Raise the LR or the batch, or run without SLW.")


def _log_ppl(ppl: float | None) -> float | None:
    return None if ppl is None or ppl <= 0 else math.log(ppl)


def control_loss_at(control, tokens: int) -> float | None:
    """The control's full-length val loss at `tokens`, interpolated between its evaluations."""
    points = sorted((c[3], _log_ppl(c[1])) for c in (control.curve or [])
                    if len(c) >= 4 and c[1] is not None and c[3] is not None)
    points = [(t, v) for t, v in points if v is not None]
    if not points:
        return _log_ppl(control.final_val_ppl)
    if tokens <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= tokens <= t1:
            return v0 + (v1 - v0) * (tokens - t0) / max(t1 - t0, 1)
    return points[-1][1]


def compare_with_control(probes: list, control) -> dict[str, Any]:
    """Every stable SLW probe against the control (SLW off) at equal tokens.

    The baseline wins when it is stable and its val loss at a probe's tokens is at most that
    probe's, for every stable probe (or when no SLW probe was stable): SLW buys nothing there.
    """
    if control is None:
        return {"baseline_wins": False, "message": None, "probes": []}
    rows = []
    for p in probes:
        loss = _log_ppl(p.final_val_ppl)
        if p.verdict != M.STABLE or loss is None:
            continue
        base = control_loss_at(control, p.tokens)
        rows.append({"start_length": p.start_length, "duration_steps": p.duration_steps, "tokens": p.tokens,
                     "val_loss": loss, "control_val_loss": base,
                     "delta_val_loss": None if base is None else loss - base,
                     "max_loss_ratio": p.max_loss_ratio, "control_max_loss_ratio": control.max_loss_ratio})
    wins = control.verdict == M.STABLE and all(r["control_val_loss"] is not None
                                               and r["control_val_loss"] <= r["val_loss"] for r in rows)
    return {"baseline_wins": wins, "message": SLW_NOT_NEEDED if wins else None, "probes": rows}


def control_summary(control) -> dict | None:
    if control is None:
        return None
    return {"verdict": control.verdict, "reason": control.reason, "val_loss": _log_ppl(control.final_val_ppl),
            "val_ppl": control.final_val_ppl, "tokens": control.tokens, "steps": control.steps,
            "max_loss_ratio": control.max_loss_ratio}


def build_report(*, spec, job_id: str, strategy: str, probes: list, chosen, notes: list[str],
                 violations: list[str], reuse_probe: bool, parent_run_id: str | None,
                 outcome: str, error: str | None = None, full_run: dict | None = None,
                 control=None, comparison: dict | None = None, decision: dict | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the README for the field meanings)."""
    comparison = comparison or compare_with_control(probes, control)
    control_tokens = control.tokens if control is not None else 0
    race_tokens = (decision or {}).get("race_tokens") or 0
    tuning_tokens = sum(p.tokens for p in probes) + control_tokens + race_tokens
    full_tokens = spec.budget.train_tokens
    seed = None  # the probe whose checkpoint the full run continues from
    runs_baseline = comparison["baseline_wins"] and spec.tuning.when_baseline_wins == "run_baseline"
    if runs_baseline:
        seed = control
    elif chosen is not None:
        seed = next((p for p in probes if p.start_length == chosen.start_length
                     and p.duration_steps == chosen.duration_steps and p.verdict == M.STABLE), None)
    reused = seed.tokens if (seed is not None and reuse_probe and seed.checkpoint) else 0
    if (decision or {}).get("raced") and reuse_probe:  # the full run continues from that arm's race checkpoint
        arm = decision["arms"]["baseline" if (runs_baseline or chosen is None) else "slw"]
        reused = arm["tokens"] if arm["checkpoint"] else 0
    evaluation = measured_evaluation(spec, [*probes, control])
    notes = [*notes, *filter(None, [evaluation_note(evaluation)])]
    return {
        M.REPORT_JOB_ID: job_id,
        M.REPORT_NAME: spec.name,
        M.REPORT_OUTCOME: outcome,
        M.REPORT_ERROR: error,
        M.REPORT_STRATEGY: strategy,
        M.REPORT_CHOSEN: None if chosen is None else {"start_length": chosen.start_length,
                                                      "duration_steps": chosen.duration_steps},
        M.REPORT_TRIALS: [{k: v for k, v in p.to_dict().items() if k not in ("curve", "slw")} for p in probes],
        M.REPORT_CONTROL: control_summary(control),
        M.REPORT_COMPARISON: comparison["probes"],
        M.REPORT_BASELINE_WINS: comparison["baseline_wins"],
        M.REPORT_MESSAGE: comparison["message"],
        M.REPORT_DECISION: decision,
        M.REPORT_TUNING_TOKENS: tuning_tokens,
        M.REPORT_CONTROL_TOKENS: control_tokens,
        M.REPORT_RACE_TOKENS: race_tokens,
        M.REPORT_FULL_RUN_TOKENS: full_tokens,
        M.REPORT_TUNING_FRACTION: tuning_tokens / full_tokens,
        M.REPORT_REUSED_PROBE_TOKENS: reused,
        M.REPORT_NET_TUNING_FRACTION: (tuning_tokens - reused) / full_tokens,
        M.REPORT_PROBE_STEPS: spec.probe_steps(),
        M.REPORT_NOTES: notes,
        M.REPORT_EVALUATION: evaluation,
        M.REPORT_VIOLATIONS: list(violations),
        M.REPORT_ADVICE: list(ADVICE_NONE_STABLE) if outcome == M.OUTCOME_NONE_STABLE else [],
        M.REPORT_PARENT_RUN_ID: parent_run_id,
        M.REPORT_FULL_RUN: full_run,
    }


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report_markdown(report: dict) -> str:
    lines = [f"# slwtune report: {report[M.REPORT_NAME]} ({report[M.REPORT_JOB_ID]})", ""]
    chosen = report[M.REPORT_CHOSEN]
    if report.get(M.REPORT_ERROR):
        lines += [f"**Failed:** {report[M.REPORT_ERROR]}", ""]
    if report.get(M.REPORT_MESSAGE):
        lines += [f"**{report[M.REPORT_MESSAGE]}**", ""]
    if chosen:
        lines.append(f"**Chosen:** start length {chosen['start_length']}, duration T = "
                     f"{chosen['duration_steps']} steps (strategy `{report[M.REPORT_STRATEGY]}`).")
    elif report[M.REPORT_ADVICE]:
        lines.append("**No stable configuration found.** What to change:")
        lines += [f"- {a}" for a in report[M.REPORT_ADVICE]]
    lines += ["", f"Tuning cost: {report[M.REPORT_TUNING_TOKENS]:,} tokens = {report[M.REPORT_TUNING_FRACTION]:.1%} "
              f"of the full run ({report[M.REPORT_FULL_RUN_TOKENS]:,}); net of the reused winning probe: "
              f"{report[M.REPORT_NET_TUNING_FRACTION]:.1%}.", "",
              "| round | start | T | verdict | val ppl | max loss ratio | spikes | steps | tokens | wall s | reason |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in report[M.REPORT_TRIALS]:
        lines.append(f"| {t['round']} | {t['start_length']} | {t['duration_steps']} | {t['verdict']} | "
                     f"{_fmt(t['final_val_ppl'])} | {_fmt(t['max_loss_ratio'], '.3f')} | {_spikes(t)} | {t['steps']} | "
                     f"{t['tokens']:,} | {t['wall_s']:.0f} | {t['reason'] or ''} |")
    lines += decision_markdown(report.get(M.REPORT_DECISION))
    control = report.get(M.REPORT_CONTROL)
    if control:
        lines += ["", "## Control probe (SLW off, same window; an early view: it does not decide)",
                  f"verdict {control['verdict']}, val ppl {_fmt(control['val_ppl'])}, max loss ratio "
                  f"{_fmt(control['max_loss_ratio'], '.3f')}, {control['tokens']:,} tokens", "",
                  "| start | T | tokens | val loss | control val loss at equal tokens | delta |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['start_length']} | {c['duration_steps']} | {c['tokens']:,} | {_fmt(c['val_loss'], '.3f')} | "
                  f"{_fmt(c['control_val_loss'], '.3f')} | {_fmt(c['delta_val_loss'], '+.3f')} |"
                  for c in report.get(M.REPORT_COMPARISON) or []]
    lines += evaluation_markdown(report.get(M.REPORT_EVALUATION))
    for title, items in (("Notes", report[M.REPORT_NOTES]), ("Monotonicity violations", report[M.REPORT_VIOLATIONS])):
        if items:
            lines += ["", f"## {title}", *[f"- {i}" for i in items]]
    if report.get(M.REPORT_FULL_RUN):
        fr = report[M.REPORT_FULL_RUN]
        lines += ["", "## Full run" + ("" if fr.get("slw_enabled", True) else " (baseline, SLW off)"),
                  f"verdict {fr.get('verdict')}"
                  + (f" ({fr['reason']})" if fr.get("reason") else "")
                  + f", {fr.get('steps') or 0} steps, {fr.get('tokens') or 0:,} tokens, final val ppl "
                  f"{_fmt(fr.get('final_val_ppl'))}, best {_fmt(fr.get('best_val_ppl'))}, continued from probe: "
                  f"{fr.get('continued_from_probe')}", f"model: {fr.get('model') or '-'}"]
    return "\n".join(lines) + "\n"


def evaluation_markdown(evaluation: dict | None) -> list[str]:
    """The `evaluation` section: the measured noise against the plan's and the rule's."""
    if not evaluation:
        return []
    return ["", "## Evaluation noise (the evidence behind each verdict)", evaluation_line(evaluation)]


def decision_markdown(decision: dict | None) -> list[str]:
    """The `decision` section: which arm, why, at how many tokens, the gap and its band, the cost."""
    if not decision:
        return []
    arm = {"slw": "SLW", "baseline": "the baseline (SLW off)", None: "-"}[decision.get("winner")]
    if not decision.get("raced"):
        return ["", "## Decision", f"{arm}, without a race: {decision.get('reason')}"]
    at = f" at {decision['tokens']:,} tokens" if decision.get("tokens") else ""
    gap = (f"; val loss gap SLW - control {decision['gap']:+.3f} nats, noise band {decision['band']:.3f} "
           f"(z={decision['z']})" if decision.get("gap") is not None else "")
    return ["", "## Decision (race at equal tokens)",
            f"**{arm}**{at}: {decision['reason']}{gap}.",
            f"Rule: the control wins when it leads by more than the band at {decision['patience']} consecutive "
            f"evaluations; SLW the same, counted only past {decision['slw_from_tokens']:,} tokens (its warmup + "
            f"margin); undecided at the race budget ({decision['budget_tokens']:,} tokens): the baseline, the "
            f"safer arm.",
            f"Race cost: {decision['race_tokens']:,} tokens in all; {decision['race_cost_tokens']:,} of them the "
            f"loser's (the winner's go on in the full run).", "",
            "| arm | tokens | race tokens | verdict | last val loss |", "|---|---|---|---|---|",
            *[f"| {name} | {a['tokens']:,} | {a['race_tokens']:,} | {a['verdict']} | "
              f"{_fmt(a['curve'][-1][1] if a['curve'] else None, '.3f')} |" for name, a in decision["arms"].items()]]


def _spikes(trial: dict) -> str:
    """'2 (largest x1.93 at step 11)': the loss spikes a run recovered from (or died of)."""
    count = trial.get("spike_count") or 0
    if not count:
        return "0"
    return f"{count} (largest x{_fmt(trial.get('spike_max_ratio'), '.2f')} at step {trial.get('spike_step')})"


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / REPORT_FILE, out_dir / REPORT_MARKDOWN
    js.write_text(json.dumps(report, indent=2, default=str))
    md.write_text(report_markdown(report))
    return [js, md]


def write_plots(probes: list, spec, chosen, out_dir: Path, decision: dict | None = None) -> list[Path]:
    """probes.png (val ppl and loss ratio of every probe), race.png (the race's val loss against
    tokens, with the noise band) and schedule.png (the chosen seqlen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for p in probes:
        curve = [c for c in (p.curve or []) if c and c[0] is not None]
        label = f"s={p.start_length} T={p.duration_steps} ({p.verdict})"
        style = "-" if p.verdict == M.STABLE else "--"
        if curve and len(curve[0]) >= 3:
            ax1.plot([c[0] for c in curve], [c[1] for c in curve], style, label=label)
            ax2.plot([c[0] for c in curve], [c[2] for c in curve], style, label=label)
        if getattr(p, "spike_count", 0) and p.spike_step and p.spike_max_ratio:  # the largest spike, recovered or not
            ax2.plot([p.spike_step], [p.spike_max_ratio], "x", color="red")
    ax1.set(title="probe validation perplexity (full length)", xlabel="step", ylabel="val ppl", yscale="log")
    ax2.set(title="training loss ratio (loss / min earlier loss; x: largest spike)", xlabel="step", ylabel="ratio")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "probes.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    if decision and decision.get("raced"):
        paths.append(write_race_plot(decision, out_dir))

    if chosen is not None:
        tuned = probe_spec(spec, chosen)
        pacing = make_pacing(tuned.slw)
        n = min(steps_for_tokens(pacing, tuned.budget.train_tokens, tuned.data.batch_size, tuned.slw.full_length),
                max(3 * tuned.slw.duration_steps, 10))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(1, n + 1), [pacing(t) for t in range(1, n + 1)])
        ax.set(title=f"chosen SLW: s={chosen.start_length}, T={chosen.duration_steps}", xlabel="step",
               ylabel="sequence length")
        fig.tight_layout()
        paths.append(out_dir / "schedule.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_race_plot(decision: dict, out_dir: Path) -> Path:
    """race.png: each arm's val loss against tokens (error bars: its standard error)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, arm in decision["arms"].items():
        pts = [p for p in arm["curve"] if p[1] is not None]
        label = (f"SLW s={arm['start_length']} T={arm['duration_steps']}" if name == "slw" else "control (SLW off)")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts], label=label,
                    capsize=2)
    ax.axvline(decision["slw_from_tokens"], color="grey", ls=":", label="SLW past warmup + margin")
    if decision.get("tokens"):
        ax.axvline(decision["tokens"], color="black", ls="--", label=f"decided: {decision['winner']}")
    ax.set(title="race at equal tokens (val loss, full length)", xlabel="tokens", ylabel="val loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "race.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
