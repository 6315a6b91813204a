"""Instability signals and the stability verdict (slw-spec sections 5 and 6).

Signals: the training loss ratio (current / minimum so far), Adam's variance
state (max element and L1 norm of `exp_avg_sq`), the gradient norm, NaN/Inf,
the validation loss and its standard error over the evaluation batches.
Verdict rules, first match wins (the paper gives no numbers; the thresholds are
`tuning.stability`, measured in docs/results.md "Verdicts"):

1. diverged, at once: a non-finite training loss, gradient norm or validation loss.
2. diverged, on evidence: a *spike* is a step whose loss ratio passes
   `loss_ratio_max` and whose loss passes the trailing window's mean +
   `spike_sigmas` x its standard deviation (the last `spike_window` non-spiking
   losses). One spike is recorded (count, largest ratio, its step), not judged:
   the run diverges only when spikes persist `spike_patience` consecutive steps,
   when the loss is not back to the window's mean of before the spike within
   `spike_recovery_steps`, or when `spike_patience` consecutive losses stay above
   ln(vocab) + `loss_ceiling_margin` (worse than an untrained model).
3. fluctuating: a validation loss *risen* above the best earlier one by more than
   `ppl_rise_tolerance` (in perplexity) and by more than `val_se_sigmas` combined
   standard errors of the two evaluations, on `fluctuation_patience` consecutive
   evaluations, or on the run's last one (not recovered by its end).
4. stable: otherwise.

Where the rules come from: OLMo-core's StabilityMonitorCallback (a spike is a value
above the running mean + threshold_std x std of a trailing window); llm-foundry's
KillLossSpike (an outlier is a loss above outlier_multiplier x the trailing mean; only
patience + 1 consecutive outliers stop the run; a separate loss_cap rule for a loss
that stays high); Lightning's SpikeDetection (running mean with a relative tolerance).
We keep the ratio (relative, as Lightning and llm-foundry), add the window's spread (as
OLMo-core), ask for persistence (as llm-foundry) or a missing recovery, and take the
cap from the untrained model's loss ln(vocab) instead of a fixed number.

`StabilityMonitor` applies the rules as a run goes. The thresholds are the job spec's
`tuning.stability` (`StabilitySpec`: defaults and range checks live there, once).
No torch at import (only `adam_variance_stats` needs it), so the rules stay usable
where torch is not installed.
"""

from __future__ import annotations

import math
from collections import deque
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
    """How a run looks so far: `step` is where its trouble began (the first step of a spike that
    persisted, the first risen evaluation; None when stable),
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


def non_finite_problem(step: int, loss: float, grad: float | None) -> str | None:
    """Why this training step means divergence at once (a non-finite loss or gradient), or None."""
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss}) at step {step}"
    if grad is not None and not math.isfinite(grad):
        return f"non-finite gradient norm ({grad}) at step {step}"
    return None


def window_stats(values) -> tuple[float, float]:
    """(mean, sample standard deviation) of the trailing window; (nan, 0) when empty."""
    n = len(values)
    if n == 0:
        return math.nan, 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def is_spike(step: int, loss: float, ratio: float, window, t: StabilitySpec) -> bool:
    """A spike: past `min_steps`, the loss ratio above `loss_ratio_max` and the loss above the
    trailing window's mean + `spike_sigmas` x its spread (the ratio alone while the window is empty)."""
    if step <= t.min_steps or ratio <= t.loss_ratio_max:
        return False
    mean, std = window_stats(window)
    return not window or loss > mean + t.spike_sigmas * std


def combined_se(se: float | None, best_se: float | None) -> float | None:
    """Standard error of the difference of two independent evaluations; None when either is unknown."""
    if se is None or best_se is None or not math.isfinite(se) or not math.isfinite(best_se):
        return None
    return math.hypot(se, best_se)


def val_rise(step: int, val_loss: float, best_loss: float, se: float | None, t: StabilitySpec) -> str | None:
    """Why this evaluation is a *rise* above the best earlier one, or None: above it by more than
    `ppl_rise_tolerance` in perplexity and (when both standard errors are known) by more than
    `val_se_sigmas` combined standard errors. Never a rise while there is no earlier one."""
    if not math.isfinite(best_loss):
        return None
    delta = val_loss - best_loss
    if delta <= math.log1p(t.ppl_rise_tolerance):
        return None
    if se is not None and delta <= t.val_se_sigmas * se:
        return None
    noise = f", {delta / se:.1f} standard errors" if se else ""
    return (f"val ppl {M.perplexity(val_loss):.1f} at step {step} is {math.expm1(delta):.1%} above the best earlier "
            f"{M.perplexity(best_loss):.1f} (tolerance {t.ppl_rise_tolerance * 100:g}%{noise})")


def _is_early(step: int, t: StabilitySpec, window_steps: int) -> bool:
    return step <= t.early_fraction * window_steps


def _check_window(window_steps: int) -> None:
    if window_steps < 1:
        raise SpecError([{"loc": "window_steps", "msg": "must be >= 1", "value": window_steps}])


class StabilityMonitor:
    """The verdict as a run goes. Diverged is final (its first reason kept); fluctuating
    keeps its first reason and can still turn diverged.

    `vocab_size` sets the loss ceiling ln(vocab) + `loss_ceiling_margin`; without it there is none.
    Spikes that recover are counted in `spike_count`, the largest in `max_spike_ratio` at
    `max_spike_step`."""

    def __init__(self, thresholds: StabilitySpec, window_steps: int, vocab_size: int | None = None):
        _check_window(window_steps)
        self.thresholds, self.window_steps = thresholds, window_steps
        margin = thresholds.loss_ceiling_margin
        self.ceiling = math.log(vocab_size) + margin if vocab_size and vocab_size > 1 else math.inf
        self.ratios = LossRatioTracker()
        self.verdict = Verdict()
        self.last_loss_ratio = 1.0
        self.max_loss_ratio = 1.0  # over the steps the spike rule looks at (after min_steps)
        self.best_val_ppl = math.inf
        self.window: deque = deque(maxlen=thresholds.spike_window)  # trailing non-spiking losses
        self.spike_count, self.max_spike_ratio, self.max_spike_step = 0, 1.0, None
        self.run_length = 0        # consecutive spiking steps
        self.episode: list | None = None  # [first step, the window's mean before it] of an unrecovered spike
        self.high_length = 0       # consecutive losses above the ceiling
        self.best_val_loss, self.best_val_se = math.inf, None
        self.rise: list | None = None  # [count, first step, first reason] of consecutive risen evaluations

    def observe_train(self, step: int, loss: float, grad_norm: float | None = None) -> Verdict:
        ratio = self.ratios.update(loss)
        self.last_loss_ratio = ratio
        if step > self.thresholds.min_steps:
            self.max_loss_ratio = max(self.max_loss_ratio, ratio)
        reason = non_finite_problem(step, loss, grad_norm)
        if reason:
            self._escalate(M.DIVERGED, reason, step)
        elif problem := self._spike_problem(step, loss, ratio):
            self._escalate(M.DIVERGED, *problem)
        return self.verdict

    def _spike_problem(self, step: int, loss: float, ratio: float) -> tuple[str, int] | None:
        """(reason, the step where the trouble began) when the spike rules call divergence, or None."""
        t = self.thresholds
        if is_spike(step, loss, ratio, self.window, t):
            self.run_length += 1
            if self.episode is None:
                mean, _ = window_stats(self.window)
                self.episode = [step, mean if self.window else self.ratios.min_loss]
                self.spike_count += 1
            if ratio > self.max_spike_ratio:
                self.max_spike_ratio, self.max_spike_step = ratio, step
        else:
            self.run_length = 0
            self.window.append(loss)
            if self.episode is not None and loss <= self.episode[1]:
                self.episode = None  # recovered
        self.high_length = self.high_length + 1 if loss > self.ceiling else 0
        if self.run_length >= t.spike_patience:
            return (f"loss spike persisted {self.run_length} steps to step {step} (loss {loss:.4g}, ratio "
                    f"{ratio:.2f} > {t.loss_ratio_max:g}, minimum so far {self.ratios.min_loss:.4g})",
                    step - self.run_length + 1)
        if self.episode is not None and step - self.episode[0] >= t.spike_recovery_steps:
            return (f"loss spike at step {self.episode[0]} not recovered within {t.spike_recovery_steps} steps "
                    f"(loss {loss:.4g} at step {step}, trailing mean before it {self.episode[1]:.4g})",
                    self.episode[0])
        if self.high_length >= t.spike_patience:
            return (f"loss above ln(vocab) + {t.loss_ceiling_margin:g} = {self.ceiling:.3g} for "
                    f"{self.high_length} steps to step {step} (loss {loss:.4g}): worse than an untrained model",
                    step - self.high_length + 1)
        return None

    def observe_val(self, step: int, val_loss: float, se: float | None = None, last: bool = False) -> Verdict:
        """One evaluation: its mean loss, its standard error (None or NaN: unknown, then the
        tolerance alone judges) and whether it is the run's last."""
        ppl = M.perplexity(val_loss)
        if not math.isfinite(ppl):
            self._escalate(M.DIVERGED, f"non-finite validation perplexity ({ppl}) at step {step}", step)
            return self.verdict
        se = se if se is not None and math.isfinite(se) else None
        t = self.thresholds
        reason = val_rise(step, val_loss, self.best_val_loss, combined_se(se, self.best_val_se), t)
        if reason is None:
            self.rise = None
        else:
            self.rise = [1, step, reason] if self.rise is None else [self.rise[0] + 1, *self.rise[1:]]
            count, first, why = self.rise
            if count >= t.fluctuation_patience or last:
                tail = f"; still risen at step {step} ({count} evaluations)" if count > 1 else \
                    ("; at the run's last evaluation" if last else "")
                self._escalate(M.FLUCTUATING, why + tail, first)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_se = val_loss, se
            self.best_val_ppl = ppl
        return self.verdict

    def _escalate(self, status: str, reason: str, step: int) -> None:
        if STATUSES.index(status) > STATUSES.index(self.verdict.status):
            self.verdict = Verdict(status, reason, step, _is_early(step, self.thresholds, self.window_steps))

    def summary(self) -> dict:
        """What a report carries of the spikes: count, largest ratio and its step (1.0 and 0 when none)."""
        return {M.SPIKE_COUNT: self.spike_count, M.SPIKE_MAX_RATIO: self.max_spike_ratio,
                M.SPIKE_STEP: self.max_spike_step or 0}

    _STATE = ("last_loss_ratio", "max_loss_ratio", "best_val_ppl", "spike_count", "max_spike_ratio",
              "max_spike_step", "run_length", "episode", "high_length", "best_val_loss", "best_val_se", "rise")

    def state_dict(self) -> dict:
        return {"ratios": self.ratios.state_dict(), "verdict": self.verdict.to_dict(), "window": list(self.window),
                **{k: getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; an empty dict (a checkpoint taken before any report) is a no-op.
        A state from before the spike rules (no `window`) restores what it has."""
        if not state:
            return
        self.ratios.load_state_dict(state["ratios"])
        self.verdict = Verdict(**state["verdict"])
        self.window.extend(state.get("window", []))
        for key in self._STATE:
            if key in state:
                setattr(self, key, state[key])
        if "best_val_loss" not in state and math.isfinite(self.best_val_ppl):
            self.best_val_loss = math.log(self.best_val_ppl)
