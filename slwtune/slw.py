"""Sequence Length Warmup in your own training loop (pure torch: no Ray, MLflow or service).

    from slwtune.slw import SeqLengthWarmup, LRSchedule, TokenClock

    slw = SeqLengthWarmup(start_length=8, full_length=256, duration_steps=300, step_size=8)
    schedule = LRSchedule(lr=6e-4, min_lr=1e-5, warmup_steps=100, decay_tokens=50_000_000)
    clock = TokenClock(warmup_steps=100)
    for step in range(1, max_steps + 1):                 # optimizer steps count from 1
        lr = schedule(step, clock.tokens, clock.warmup_tokens)
        x, y, n = slw.apply(get_batch(), step)           # (B, e) pairs or (B, e+1) windows -> (rows, L)
        loss = model(x, y) ...; optimizer.step()
        clock.advance(step, n)                           # n: the tokens this step trained on
        if clock.tokens >= train_tokens: break           # terminate on tokens, not steps

`SeqLengthWarmup` is a thin facade over `slwtune.pacing` (the length at a step),
`slwtune.batching` (truncate or reshape a batch) and `slwtune.schedule` (tokens), so
its lengths are exactly those of slwtune's own loop and of the knobs `slwtune tune`
chooses: pass them in as `SeqLengthWarmup.from_spec(spec)` or by hand. Evaluate at
full length (don't call `apply` on validation batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import NamedTuple

import torch

from slwtune import batching, pacing as pacing_fns, schedule
from slwtune.errors import SpecError
from slwtune.schedule import LRSchedule, TokenClock

__all__ = ["SeqLengthWarmup", "Applied", "LRSchedule", "TokenClock"]


class Applied(NamedTuple):
    """A batch at the current length: inputs and targets (rows, L), and rows * L tokens."""

    inputs: torch.Tensor
    targets: torch.Tensor
    tokens: int


class SeqLengthWarmup:
    """The sequence length as a function of the optimizer step, and a batch cut to it.

    start_length (s), full_length (e), duration_steps (T), step_size (k): the knobs of
    slw-spec section 2; lengths are multiples of k and reach e at step T.
    pacing: "fixed_linear" (the default, recommended), "fixed_root" (with `root_degree`),
    "fixed_discrete" (with `lengths` and `max_steps`), or any callable step -> length.
    mode: "truncate" (the paper: keep the first L tokens of each row) or "reshape"
    (re-chunk each row into e // L rows of L, dropping no token but the remainder).
    Invalid knobs raise `SpecError` naming each bad argument and its value.
    """

    def __init__(self, start_length: int, full_length: int, duration_steps: int, step_size: int = 8,
                 pacing: str | Callable[[int], int] = "fixed_linear", *, mode: str = "truncate",
                 root_degree: float = 2.0, lengths: Sequence[int] | None = None,
                 max_steps: Sequence[int] | None = None):
        name = "custom" if callable(pacing) else pacing
        problems = pacing_fns.pacing_problems(start_length, full_length, duration_steps, step_size,
                                              "fixed_linear" if name == "custom" else name, lengths, max_steps)
        if mode not in ("truncate", "reshape"):
            problems.append({"loc": "mode", "value": mode, "msg": "use truncate or reshape"})
        if name == "fixed_root" and not root_degree >= 1.0:
            problems.append({"loc": "root_degree", "value": root_degree, "msg": "must be >= 1"})
        if problems:
            raise SpecError(problems)
        self.start_length, self.full_length = start_length, full_length
        self.duration_steps, self.step_size = duration_steps, step_size
        self.pacing, self.mode, self.root_degree = name, mode, root_degree
        self.lengths = list(lengths) if lengths is not None else None
        self.max_steps = list(max_steps) if max_steps is not None else None
        self._length_fn = pacing if callable(pacing) else pacing_fns.make_pacing(SimpleNamespace(
            enabled=True, full_length=full_length, pacing=name, start_length=start_length,
            duration_steps=duration_steps, step_size=step_size, root_degree=root_degree,
            discrete_lengths=self.lengths, discrete_max_steps=self.max_steps))

    @classmethod
    def from_spec(cls, spec) -> SeqLengthWarmup:
        """From a `JobSpec` or its `slw` section (the knobs `slwtune tune` reports)."""
        s = getattr(spec, "slw", spec)
        return cls(s.start_length, s.full_length, s.duration_steps, s.step_size, s.pacing, mode=s.mode,
                   root_degree=s.root_degree, lengths=s.discrete_lengths, max_steps=s.discrete_max_steps)

    def __repr__(self) -> str:
        return (f"SeqLengthWarmup(start_length={self.start_length}, full_length={self.full_length}, "
                f"duration_steps={self.duration_steps}, step_size={self.step_size}, "
                f"pacing={self.pacing!r}, mode={self.mode!r})")

    def length_at(self, step: int) -> int:
        """The sequence length of optimizer step `step` (counted from 1)."""
        if step < 1:
            raise ValueError(f"step={step} must be >= 1 (optimizer steps count from 1)")
        length = int(self._length_fn(step))
        if not 0 < length <= self.full_length:
            raise ValueError(f"pacing gave length={length} at step={step}; must be in 1..{self.full_length}")
        return length

    def apply(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor], step: int) -> Applied:
        """The batch of step `step` at `length_at(step)`: (inputs, targets, tokens).

        batch: raw windows (B, e+1) (cut to L+1 before the inputs/targets split, so the last
        kept input's target is the token right after it), or aligned (inputs, targets) of
        (B, e) each, as nanoGPT's get_batch returns them.
        """
        length = self.length_at(step)
        if isinstance(batch, torch.Tensor):
            return Applied(*batching.apply_seqlen(batch, length, self.mode))
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            fn = batching.truncate_pair if self.mode == "truncate" else batching.reshape_pair
            return Applied(*fn(batch[0], batch[1], length))
        raise TypeError(f"batch must be a (B, e+1) tensor or an (inputs, targets) pair, got {type(batch).__name__}; "
                        "use apply_dict for a dict batch")

    def apply_dict(self, batch: Mapping[str, torch.Tensor], step: int, seq_key: str = "input_ids") -> tuple[dict, int]:
        """A Hugging Face-style dict batch (input_ids, attention_mask, labels, position_ids, a 4-D
        mask ...) at `length_at(step)`; returns (dict, tokens), tokens = attention_mask ones if
        there is a mask, else rows * L. The model shifts `labels` itself, as HF models do."""
        return batching.apply_seqlen_dict(dict(batch), self.length_at(step), self.mode, seq_key)

    def steps_to_full_length(self) -> int:
        """The first step at which the length is `full_length`."""
        return pacing_fns.steps_to_full_length(self.length_at, self.full_length)

    def tokens_for_steps(self, steps: int, batch_size: int) -> int:
        """Tokens trained on in steps 1..steps with `batch_size` full-length rows per step (truncate)."""
        return schedule.tokens_for_steps(self.length_at, steps, batch_size)

    def steps_for_tokens(self, tokens: int, batch_size: int) -> int:
        """Optimizer steps until `tokens` have been trained on (the token budget's end; truncate)."""
        return schedule.steps_for_tokens(self.length_at, tokens, batch_size, self.full_length)
