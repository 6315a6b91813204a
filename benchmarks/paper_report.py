"""paper_effect's output: the table (markdown), the defaults' sources, and the curves (PNG)."""

from __future__ import annotations

from pathlib import Path

from paper_analysis import Run, mean_curve
from paper_arms import ARMS, BASELINE, DEFAULTS, TUNED


def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _tokens(x: float | None) -> str:
    return "not reached" if x is None else f"{x / 1e3:,.0f}k"


def table_markdown(summary: dict) -> str:
    head = ("| LR | arm | knobs | final val loss (mean ± std) | tokens to target | wall s to target | "
            "CPU s to target | spikes >1.2 | spikes >1.5 | max Adam var | tuning cost | verdicts |")
    lines = [f"Target: best baseline's final val loss {fmt(summary['target_val_loss'], '.4f')} "
             f"(baseline at lr={summary['best_baseline_lr']})", "", head, "|" + "---|" * 12]
    for r in summary["rows"]:
        cost = "-"
        if r["arm"] == TUNED:
            cost = f"{_tokens(r['tuning_tokens'])} tok, {fmt(r['tuning_wall_s'], '.0f')} s"
        verdicts = ", ".join(f"{k} {v}" for k, v in r["verdicts"].items())
        final = f"{fmt(r['final_val_loss'], '.4f')} ± {fmt(r['final_val_loss_std'], '.4f')}"
        if r["runs_with_val"] < r["seeds"]:
            final += f" ({r['runs_with_val']} of {r['seeds']} seeds)"
        lines.append(
            f"| {r['lr']:g} | {r['arm']} | {r['knobs']} | {final} | {_tokens(r['tokens_to_target'])} | "
            f"{fmt(r['wall_s_to_target'], '.0f')} | {fmt(r['cpu_s_to_target'], '.0f')} | "
            f"{fmt(r['spikes_gt_1.2'], '.1f')} | {fmt(r['spikes_gt_1.5'], '.1f')} | {fmt(r['max_adam_var'], '.3g')} | "
            f"{cost} | {verdicts} |")
    return "\n".join(lines) + "\n"


def sources_markdown() -> str:
    lines = ["Defaults other tools ship, as used here:"]
    for d in DEFAULTS.values():
        lines.append(f"- {d.arm}: {d.settings} [{d.source}]; here: {d.mapping}")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[Run], path: Path) -> Path:
    """Val loss against tokens (tuning included), one line per arm (seed mean), one panel per LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r.lr for r in runs})
    fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4.5), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        tops = []
        for arm in ARMS:
            group = [r for r in runs if r.lr == lr and r.arm == arm]
            curve = mean_curve([[(t, v) for t, _, _, v in r.curve.evals] for r in group])
            if curve:
                ax.plot([x for x, _ in curve], [y for _, y in curve], label=arm,
                        linestyle="--" if arm == BASELINE else "-")
                tops.append(curve[min(1, len(curve) - 1)][1])
        if tops:  # an early spike's first evaluation would squash the rest of the panel
            ax.set_ylim(top=max(tops) * 1.02)
        ax.set(title=f"lr={lr:g} (mean of seeds)", xlabel="tokens (tuned: tuning included)",
               ylabel="val loss (full length)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
