"""Instability signals and the stability verdict (slw-spec sections 5 and 6).

Signals: the training loss ratio (current / minimum so far), Adam's variance
state (max element and L1 norm of `exp_avg_sq`), the gradient norm, NaN/Inf.
Verdict rules, first match wins (the paper gives no numbers; these are ours):

1. diverged: a non-finite training loss, gradient norm or validation loss, or
   a training loss ratio above `loss_ratio_max` at a step after `min_steps`.
2. fluctuating: a validation perplexity more than `ppl_rise_tolerance` above
   the best (lowest) earlier one.
3. stable: otherwise.

`StabilityMonitor` applies the rules as a run goes; `judge` applies them to
whole curves. They agree: at one step the train point is seen before the val one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from slwtune.errors import SpecError

__all__ = ["LossRatioTracker", "adam_variance_stats", "grad_norm", "is_finite", "StabilityThresholds",
           "Verdict", "StabilityMonitor", "judge"]

STATUSES = ("stable", "fluctuating", "diverged")


def is_finite(x: float | torch.Tensor) -> bool:
    """True when x (a number, or every element of a tensor) is neither NaN nor Inf.
    On a device tensor this syncs with the host."""
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return math.isfinite(x)


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


@torch.no_grad()
def adam_variance_stats(optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Max element and L1 norm of Adam's `exp_avg_sq` over all parameters, as 0-dim fp32
    tensors on the parameters' device (zeros before the first step).

    No `.item()`: the caller reduces across ranks (max / sum) and syncs when it logs.
    """
    device = optimizer.param_groups[0]["params"][0].device
    states = [s["exp_avg_sq"] for s in optimizer.state.values() if "exp_avg_sq" in s]
    if not states:
        return torch.zeros((), device=device), torch.zeros((), device=device)
    # exp_avg_sq >= 0, so its max element is its inf-norm; both norms are fused reductions
    maxes = torch.stack([torch.linalg.vector_norm(v, math.inf, dtype=torch.float32).to(device) for v in states])
    l1s = torch.stack([torch.linalg.vector_norm(v, 1, dtype=torch.float32).to(device) for v in states])  # (P,)
    return maxes.amax(), l1s.sum()


@torch.no_grad()
def grad_norm(parameters) -> torch.Tensor:
    """Total L2 norm of the gradients (before clipping), a 0-dim tensor without host sync.

    The training loop uses the equal value that `clip_grad_norm_` returns; this is for callers
    that do not clip. Zero when no parameter has a gradient.
    """
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g.float()).to(grads[0].device) for g in grads])
    return torch.linalg.vector_norm(norms)


@dataclass(frozen=True)
class StabilityThresholds:
    """The numbers behind the verdict; the defaults are slwtune's choice (the paper has none)."""

    loss_ratio_max: float = 1.5      # train loss > 1.5 x the lowest earlier loss: a spike, diverged
    ppl_rise_tolerance: float = 0.05  # val ppl > 1.05 x the best earlier val ppl: fluctuating
    min_steps: int = 0               # loss ratios at steps <= min_steps are ignored (first steps are noisy)
    early_fraction: float = 0.25     # a problem in this first share of the window counts as "early"

    def __post_init__(self):
        problems = []

        def bad(name: str, msg: str) -> None:
            problems.append({"loc": f"tuning.stability.{name}", "msg": msg, "value": getattr(self, name)})

        if not (math.isfinite(self.loss_ratio_max) and self.loss_ratio_max > 1.0):
            bad("loss_ratio_max", "must be a finite number > 1")
        if not (math.isfinite(self.ppl_rise_tolerance) and self.ppl_rise_tolerance >= 0.0):
            bad("ppl_rise_tolerance", "must be a finite number >= 0")
        if not (isinstance(self.min_steps, int) and self.min_steps >= 0):
            bad("min_steps", "must be an integer >= 0")
        if not 0.0 < self.early_fraction <= 1.0:
            bad("early_fraction", "must be in (0, 1]")
        if problems:
            raise SpecError(problems)


@dataclass(frozen=True)
class Verdict:
    """How a run looks so far: `step` is where its status was first seen (None when stable),
    `early` whether that step lies in the first `early_fraction` of the window."""

    status: str = "stable"
    reason: str = ""
    step: int | None = None
    early: bool = False

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r} must be one of {STATUSES}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the rules, shared by the monitor and judge -------------------------------------


def _ppl(val_loss: float) -> float:
    try:
        return math.exp(val_loss)  # nan stays nan
    except OverflowError:  # a loss above ~709
        return math.inf


def train_problem(step: int, loss: float, grad: float | None, ratio: float, min_loss: float,
                  t: StabilityThresholds) -> str | None:
    """Why this training step means divergence, or None."""
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss}) at step {step}"
    if grad is not None and not math.isfinite(grad):
        return f"non-finite gradient norm ({grad}) at step {step}"
    if step > t.min_steps and ratio > t.loss_ratio_max:
        return (f"loss ratio {ratio:.2f} at step {step} exceeds {t.loss_ratio_max:g} "
                f"(loss {loss:.4g}, minimum so far {min_loss:.4g})")
    return None


def val_problem(step: int, val_ppl: float, best_earlier: float, t: StabilityThresholds) -> tuple[str, str] | None:
    """(status, reason) when this validation perplexity means trouble, or None."""
    if not math.isfinite(val_ppl):
        return "diverged", f"non-finite validation perplexity ({val_ppl}) at step {step}"
    if val_ppl > (1.0 + t.ppl_rise_tolerance) * best_earlier:  # never true while best_earlier is inf
        rise = val_ppl / best_earlier - 1.0
        return "fluctuating", (f"val ppl {val_ppl:.1f} at step {step} is {rise:.1%} above the best earlier "
                               f"{best_earlier:.1f} (tolerance {t.ppl_rise_tolerance * 100:g}%)")
    return None


def _is_early(step: int, t: StabilityThresholds, window_steps: int) -> bool:
    return step <= t.early_fraction * window_steps


def _check_window(window_steps: int) -> None:
    if window_steps < 1:
        raise SpecError([{"loc": "window_steps", "msg": "must be >= 1", "value": window_steps}])


class StabilityMonitor:
    """The verdict as a run goes. Diverged is final (its first reason kept); fluctuating
    keeps its first reason and can still turn diverged."""

    def __init__(self, thresholds: StabilityThresholds, window_steps: int):
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
            self._escalate("diverged", reason, step)
        return self.verdict

    def observe_val(self, step: int, val_loss: float) -> Verdict:
        ppl = _ppl(val_loss)
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


def judge(train_curve: list[tuple[int, float]] | list[tuple[int, float, float | None]],
          val_curve: list[tuple[int, float]], thresholds: StabilityThresholds, window_steps: int,
          val_is_ppl: bool = False) -> Verdict:
    """The verdict over whole curves: train points (step, loss) or (step, loss, grad_norm),
    val points (step, val_loss), or (step, val_ppl) with val_is_ppl=True."""
    _check_window(window_steps)
    # Every problem as (step, order, status, reason); order puts train before val at one step.
    problems = []
    tracker = LossRatioTracker()
    for step, loss, *grad in sorted(train_curve, key=lambda p: p[0]):
        ratio = tracker.update(loss)
        reason = train_problem(step, loss, grad[0] if grad else None, ratio, tracker.min_loss, thresholds)
        if reason:
            problems.append((step, 0, "diverged", reason))
    best = math.inf
    for step, value in sorted(val_curve, key=lambda p: p[0]):
        ppl = value if val_is_ppl else _ppl(value)
        problem = val_problem(step, ppl, best, thresholds)
        if problem:
            problems.append((step, 1, *problem))
        if math.isfinite(ppl):
            best = min(best, ppl)
    for status in ("diverged", "fluctuating"):
        first = min((p for p in problems if p[2] == status), default=None, key=lambda p: (p[0], p[1]))
        if first:
            step, _, _, reason = first
            return Verdict(status, reason, step, _is_early(step, thresholds, window_steps))
    return Verdict()
