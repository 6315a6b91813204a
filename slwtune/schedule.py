"""Learning-rate schedule and token accounting under SLW (slw-spec section 4).

The LR warmup is step-based; the decay is token-based, measured from the tokens
consumed when the warmup ended, so SLW's short early steps don't make the LR
decay too fast. Training terminates on a token budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class LRSchedule:
    """Step-based linear warmup, then token-based decay to `min_lr` at `decay_tokens`."""

    lr: float
    min_lr: float
    warmup_steps: int
    decay_tokens: int
    decay: str = "cosine"  # cosine | linear | constant

    def __call__(self, step: int, tokens: int, warmup_tokens: int | None) -> float:
        """LR for optimizer step `step` (from 1), with `tokens` consumed before it.

        `warmup_tokens` is the token count when the warmup ended (None while in it).
        """
        # 1) linear warmup over steps
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.decay == "constant":
            return self.lr
        start = warmup_tokens or 0
        # 2) past the decay horizon (also guards decay_tokens <= warmup_tokens)
        if tokens >= self.decay_tokens or self.decay_tokens <= start:
            return self.min_lr
        # 3) in between: decay over the tokens consumed since the warmup ended
        ratio = (tokens - start) / (self.decay_tokens - start)
        if self.decay == "linear":
            coeff = 1.0 - ratio
        else:
            coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
        return self.min_lr + coeff * (self.lr - self.min_lr)


def lr_schedule_from_spec(spec) -> LRSchedule:
    o = spec.optim
    return LRSchedule(lr=o.lr, min_lr=o.min_lr, warmup_steps=o.lr_warmup_steps,
                      decay_tokens=spec.decay_tokens(), decay=o.decay)


def tokens_for_steps(pacing: Callable[[int], int], steps: int, batch_size: int) -> int:
    """Tokens trained on in steps 1..steps (batch rows x current length)."""
    return sum(batch_size * pacing(t) for t in range(1, steps + 1))


def steps_for_tokens(pacing: Callable[[int], int], tokens: int, batch_size: int, full_length: int) -> int:
    """Optimizer steps until at least `tokens` have been trained on (the budget's end)."""
    done, step = 0, 0
    while done < tokens:
        step += 1
        length = pacing(step)
        done += batch_size * length
        if length >= full_length:
            # The rest are full-length steps: finish in closed form.
            remaining = tokens - done
            step += max(0, math.ceil(remaining / (batch_size * full_length)))
            break
    return step


@dataclass
class TokenClock:
    """The token bookkeeping the token-based decay needs: tokens trained so far and the count
    when the LR warmup ended. Advance it once per optimizer step, after the step."""

    warmup_steps: int
    tokens: int = 0
    warmup_tokens: int | None = None

    def advance(self, step: int, step_tokens: int) -> None:
        """Record the `step_tokens` trained in optimizer step `step` (from 1)."""
        if step_tokens < 0:
            raise ValueError(f"step_tokens={step_tokens} must be >= 0")
        self.tokens += step_tokens
        if self.warmup_tokens is None and step >= self.warmup_steps:
            self.warmup_tokens = self.tokens

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "warmup_tokens": self.warmup_tokens}

    def load_state_dict(self, state: dict) -> None:
        self.tokens, self.warmup_tokens = int(state["tokens"]), state["warmup_tokens"]
