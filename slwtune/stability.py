"""Instability signals and the stability verdict (slw-spec sections 5 and 6).

Signals: the training loss ratio (current / minimum so far), Adam's variance
state (max element and L1 norm of `exp_avg_sq`), the gradient norm, NaN/Inf.
Verdict rules, first match wins (the paper gives no numbers; these are ours):

1. diverged: a non-finite training loss, gradient norm or validation loss, or
   a training loss ratio above `loss_ratio_max` at a step after `min_steps`.
2. fluctuating: a validation perplexity more than `ppl_rise_tolerance` above
   the best (lowest) earlier one.
3. stable: otherwise.

`StabilityMonitor` applies the rules as a run goes. The thresholds are the job spec's
`tuning.stability` (`StabilitySpec`: defaults and range checks live there, once).
No torch at import (only `adam_variance_stats` needs it), so the rules stay usable
where torch is not installed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from slwtune import metrics as M
from slwtune.errors import SpecError

if TYPE_CHECKING:
    import torch

    from slwtune.spec import StabilitySpec

__all__ = ["LossRatioTracker", "adam_variance_stats", "Verdict", "StabilityMonitor"]

STATUSES = (M.STABLE, M.FLUCTUATING, M.DIVERGED)  # in escalating order


class LossRatioTracker:
    """Training loss ratio: current loss / minimum loss so far (the current one included, so >= 1)."""

    def __init__(self):
        self.min_loss = math.inf
        self.max_ratio = 1.0  # the largest ratio returned so far (inf after a non-finite loss)

    def update(self, loss: float) -> float:
        """Record one training loss and return its ratio; a non-finite loss gives inf and
        leaves the minimum alone."""
        if not math.isfinite(loss):
            ratio = math.inf
        else:
            self.min_loss = min(self.min_loss, loss)
            # cross-entropy is >= 0; a zero minimum makes any later rise an infinite ratio
            ratio = loss / self.min_loss if self.min_loss > 0 else (1.0 if loss <= 0 else math.inf)
        self.max_ratio = max(self.max_ratio, ratio)
        return ratio

    def state_dict(self) -> dict:
        return {"min_loss": self.min_loss, "max_ratio": self.max_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.min_loss, self.max_ratio = float(state["min_loss"]), float(state["max_ratio"])


def adam_variance_stats(optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Max element and L1 norm of Adam's `exp_avg_sq` over all parameters, as 0-dim fp32
    tensors on the parameters' device (zeros before the first step).

    No `.item()`: the caller syncs once, when it logs.
    """
    import torch

    device = optimizer.param_groups[0]["params"][0].device
    states = [s["exp_avg_sq"] for s in optimizer.state.values() if "exp_avg_sq" in s]
    if not states:
        return torch.zeros((), device=device), torch.zeros((), device=device)
    with torch.no_grad():
        # exp_avg_sq >= 0, so its max element is its inf-norm; both norms are fused reductions
        maxes = torch.stack([torch.linalg.vector_norm(v, math.inf, dtype=torch.float32).to(device) for v in states])
        l1s = torch.stack([torch.linalg.vector_norm(v, 1, dtype=torch.float32).to(device) for v in states])  # (P,)
        return maxes.amax(), l1s.sum()


@dataclass(frozen=True)
class Verdict:
    """How a run looks so far: `step` is where its status was first seen (None when stable),
    `early` whether that step lies in the first `early_fraction` of the window."""

    status: str = M.STABLE
    reason: str = ""
    step: int | None = None
    early: bool = False

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r} must be one of {STATUSES}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the rules --------------------------------------------------------------------


def train_problem(step: int, loss: float, grad: float | None, ratio: float, min_loss: float,
                  t: StabilitySpec) -> str | None:
    """Why this training step means divergence, or None."""
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss}) at step {step}"
    if grad is not None and not math.isfinite(grad):
        return f"non-finite gradient norm ({grad}) at step {step}"
    if step > t.min_steps and ratio > t.loss_ratio_max:
        return (f"loss ratio {ratio:.2f} at step {step} exceeds {t.loss_ratio_max:g} "
                f"(loss {loss:.4g}, minimum so far {min_loss:.4g})")
    return None


def val_problem(step: int, val_ppl: float, best_earlier: float, t: StabilitySpec) -> tuple[str, str] | None:
    """(status, reason) when this validation perplexity means trouble, or None."""
    if not math.isfinite(val_ppl):
        return M.DIVERGED, f"non-finite validation perplexity ({val_ppl}) at step {step}"
    if val_ppl > (1.0 + t.ppl_rise_tolerance) * best_earlier:  # never true while best_earlier is inf
        rise = val_ppl / best_earlier - 1.0
        return M.FLUCTUATING, (f"val ppl {val_ppl:.1f} at step {step} is {rise:.1%} above the best earlier "
                               f"{best_earlier:.1f} (tolerance {t.ppl_rise_tolerance * 100:g}%)")
    return None


def _is_early(step: int, t: StabilitySpec, window_steps: int) -> bool:
    return step <= t.early_fraction * window_steps


def _check_window(window_steps: int) -> None:
    if window_steps < 1:
        raise SpecError([{"loc": "window_steps", "msg": "must be >= 1", "value": window_steps}])


class StabilityMonitor:
    """The verdict as a run goes. Diverged is final (its first reason kept); fluctuating
    keeps its first reason and can still turn diverged."""

    def __init__(self, thresholds: StabilitySpec, window_steps: int):
        _check_window(window_steps)
        self.thresholds, self.window_steps = thresholds, window_steps
        self.ratios = LossRatioTracker()
        self.verdict = Verdict()
        self.last_loss_ratio = 1.0
        self.max_loss_ratio = 1.0  # over the steps the ratio rule looks at (after min_steps)
        self.best_val_ppl = math.inf

    def observe_train(self, step: int, loss: float, grad_norm: float | None = None) -> Verdict:
        ratio = self.ratios.update(loss)
        self.last_loss_ratio = ratio
        if step > self.thresholds.min_steps:
            self.max_loss_ratio = max(self.max_loss_ratio, ratio)
        reason = train_problem(step, loss, grad_norm, ratio, self.ratios.min_loss, self.thresholds)
        if reason:
            self._escalate(M.DIVERGED, reason, step)
        return self.verdict

    def observe_val(self, step: int, val_loss: float) -> Verdict:
        ppl = M.perplexity(val_loss)
        problem = val_problem(step, ppl, self.best_val_ppl, self.thresholds)
        if problem:
            self._escalate(*problem, step)
        if math.isfinite(ppl):
            self.best_val_ppl = min(self.best_val_ppl, ppl)
        return self.verdict

    def _escalate(self, status: str, reason: str, step: int) -> None:
        if STATUSES.index(status) > STATUSES.index(self.verdict.status):
            self.verdict = Verdict(status, reason, step, _is_early(step, self.thresholds, self.window_steps))

    def state_dict(self) -> dict:
        return {"ratios": self.ratios.state_dict(), "verdict": self.verdict.to_dict(),
                "last_loss_ratio": self.last_loss_ratio, "max_loss_ratio": self.max_loss_ratio,
                "best_val_ppl": self.best_val_ppl}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; an empty dict (a checkpoint taken before any report) is a no-op."""
        if not state:
            return
        self.ratios.load_state_dict(state["ratios"])
        self.verdict = Verdict(**state["verdict"])
        self.last_loss_ratio, self.max_loss_ratio = float(state["last_loss_ratio"]), float(state["max_loss_ratio"])
        self.best_val_ppl = float(state["best_val_ppl"])
