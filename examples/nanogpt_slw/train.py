"""Your training function, tuned by slwtune: `train(ctx)` is the probes and the full run.

Everything here is the user's: the model and batches (`examples/slw_own_loop.py`'s TinyGPT and
nanoGPT-style get_batch on the builtin Shakespeare bytes), the optimizer, the checkpoint format.
slwtune hands in a `TrainContext`: the knobs (`ctx.slw`, None when SLW is off), the LR schedule,
the probe window and token budget, the device, a checkpoint to resume from; `ctx.report` judges
each step with slwtune's verdict rules and says when to stop.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import torch

from examples.slw_own_loop import TinyGPT, evaluate, get_batch
from slwtune.data import DatasetMeta, open_tokens, resolve_dataset
from slwtune.slw import TokenClock

CHECKPOINT = "train.pt"  # this loop's own format: model, optimizer, counters, data RNG


def save(folder: str, model, optimizer, step: int, clock: TokenClock, gen: torch.Generator) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "clock": clock.state_dict(), "gen": gen.get_state()}, Path(folder) / CHECKPOINT)


def load(folder: str, model, optimizer, clock: TokenClock, gen: torch.Generator) -> int:
    """Restore from `folder`; returns the step it was written at."""
    blob = torch.load(Path(folder) / CHECKPOINT, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    clock.load_state_dict(blob["clock"])
    gen.set_state(blob["gen"])
    return int(blob["step"])


def train(ctx) -> None:
    """Train until `ctx.report` says stop (the verdict, the probe window or the token budget)."""
    spec, device = ctx.spec, ctx.device
    full, rows = spec.slw.full_length, spec.data.batch_size // ctx.world_size  # this rank's rows
    data_dir = resolve_dataset(spec.data.path, spec.data.tokenizer, spec.data.vocab_size)
    train_data, val_data = open_tokens(data_dir, "train"), open_tokens(data_dir, "val")
    val_gen = torch.Generator().manual_seed(spec.seed)
    val_batches = [get_batch(val_data, rows, full, val_gen) for _ in range(spec.run.eval_batches)]
    gen = torch.Generator().manual_seed(spec.seed + 1 + ctx.rank)  # each rank its own rows

    m = spec.model
    model = TinyGPT(DatasetMeta.load(data_dir).vocab_size, context=full, d=m.n_embd or 64, n_layer=m.n_layer or 2,
                    n_head=m.n_head or 4).to(device)
    o = spec.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    clock = TokenClock(warmup_steps=o.lr_warmup_steps)
    step = load(ctx.resume_from, model, optimizer, clock, gen) if ctx.resume_from else 0
    trained = model
    if ctx.world_size > 1:  # Ray Train has set up the process group
        trained = torch.nn.parallel.DistributedDataParallel(model)

    while True:
        step += 1
        lr = ctx.lr_schedule(step, clock.tokens, clock.warmup_tokens)  # warmup by step, decay by tokens
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, rows, full, gen)  # (B, e)
        if ctx.slw is not None:  # None when SLW is off: the control probe, a baseline full run
            x, y, _ = ctx.slw.apply((x, y), step)  # (B, L)
        loss = trained(x.to(device), y.to(device))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or math.inf)
        if math.isfinite(loss.item()):  # never apply a non-finite update; the report says diverged
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.advance(step, x.numel() * ctx.world_size)  # tokens of all ranks: the budget's clock

        val_loss = evaluate(model, [(vx.to(device), vy.to(device)) for vx, vy in val_batches]) \
            if ctx.eval_due(step, clock.tokens) else None  # at full length
        ckpt = None
        if ctx.checkpoint_due(step, clock.tokens):  # rank 0, at the end of a probe window among others
            ckpt = tempfile.mkdtemp(prefix="nanogpt-ckpt-")
            save(ckpt, model, optimizer, step, clock, gen)
        stop = ctx.report(step=step, tokens=clock.tokens, loss=loss.item(), val_loss=val_loss,
                          grad_norm=grad_norm.item(), lr=lr, seqlen=x.shape[1], optimizer=optimizer,
                          checkpoint_dir=ckpt)
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)  # Ray kept a copy
        if stop:
            return
