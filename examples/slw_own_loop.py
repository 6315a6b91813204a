"""Sequence Length Warmup in your own nanoGPT-style training loop (CPU, seconds).

    python examples/slw_own_loop.py --steps 120

Your model, your batches, your loop: slwtune contributes three objects from
`slwtune.slw` (pure torch, no Ray/MLflow/service):
  SeqLengthWarmup  the length of each optimizer step, and the batch cut to it;
  LRSchedule       step-based LR warmup, then decay by tokens (not steps);
  TokenClock       the tokens trained so far, for the schedule and the budget.
Put in the knobs that `slwtune tune` chose for you (start length, duration T).
The data is slwtune's builtin Shakespeare as bytes (prepared once into the cache).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slwtune.data import open_tokens, resolve_dataset
from slwtune.slw import LRSchedule, SeqLengthWarmup, TokenClock


class TinyGPT(nn.Module):
    """Stands in for your model: learned positions, causal self-attention blocks."""

    def __init__(self, vocab_size: int, context: int, d: int = 64, n_layer: int = 2, n_head: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, d), nn.Embedding(context, d)
        layer = nn.TransformerEncoderLayer(d, n_head, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]  # L during the warmup: positions 0..L-1 are used
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, d)
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        logits = self.head(self.blocks(x, mask=mask, is_causal=True))  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def get_batch(data: np.ndarray, batch_size: int, block: int, gen: torch.Generator):
    """nanoGPT's get_batch: aligned inputs and next-token targets, (B, block) each."""
    ix = torch.randint(len(data) - block - 1, (batch_size,), generator=gen).tolist()
    x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
    return x, y


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> float:
    """Validation loss at full length (never warmed up)."""
    model.eval()
    loss = sum(model(x, y).item() for x, y in batches) / len(batches)
    model.train()
    return loss


def train(steps: int = 120, batch_size: int = 16, full_length: int = 128, start_length: int = 8,
          duration_steps: int = 60, lr: float = 3e-3, warmup_steps: int = 20, seed: int = 0,
          log_every: int = 20) -> dict:
    """Train for `steps` optimizer steps with SLW; returns the per-step history and val losses."""
    torch.manual_seed(seed)
    data_dir = resolve_dataset("builtin:shakespeare", "bytes", 256)
    train_data, val_data = open_tokens(data_dir, "train"), open_tokens(data_dir, "val")
    gen = torch.Generator().manual_seed(seed)
    val_batches = [get_batch(val_data, batch_size, full_length, gen) for _ in range(4)]

    model = TinyGPT(vocab_size=256, context=full_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    slw = SeqLengthWarmup(start_length, full_length, duration_steps, step_size=8, pacing="fixed_linear")
    # Decay over the tokens a full-length run of `steps` would see (your token budget).
    schedule = LRSchedule(lr=lr, min_lr=lr / 10, warmup_steps=warmup_steps,
                          decay_tokens=steps * batch_size * full_length)
    clock = TokenClock(warmup_steps=warmup_steps)

    history, val_losses = [], [evaluate(model, val_batches)]
    for step in range(1, steps + 1):
        lr_now = schedule(step, clock.tokens, clock.warmup_tokens)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        x, y, n_tokens = slw.apply(get_batch(train_data, batch_size, full_length, gen), step)  # (B, L)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.advance(step, n_tokens)
        history.append({"step": step, "length": x.shape[1], "lr": lr_now, "tokens": clock.tokens,
                        "loss": loss.item()})
        if log_every and step % log_every == 0:
            val_losses.append(evaluate(model, val_batches))
            print(f"step {step:4d}  seqlen {x.shape[1]:4d}  lr {lr_now:.2e}  tokens {clock.tokens:>8,}  "
                  f"loss {loss.item():.3f}  val {val_losses[-1]:.3f} (ppl {math.exp(val_losses[-1]):.1f})",
                  flush=True)
    return {"history": history, "val_losses": val_losses, "slw": slw}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--start-length", type=int, default=8)
    p.add_argument("--duration-steps", type=int, default=60)
    p.add_argument("--full-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--log-every", type=int, default=20)
    args = p.parse_args(argv)
    train(args.steps, args.batch_size, args.full_length, args.start_length, args.duration_steps,
          log_every=args.log_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
