"""The plain PyTorch loop slwtune's training loop is measured against (throughput.py, gpu_check.py).

Same model, data windows, AdamW (fused on CUDA), clipping, bf16 autocast on CUDA and micro-batches
as the spec's; nothing else: no SLW, no schedule, no monitor, no reports. Imports torch, numpy and
slwtune's pure core only (gpu_check runs where Ray, MLflow and Optuna are not installed).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from slwtune.data import WindowSampler, open_tokens
from slwtune.model import GPT, config_from_spec, configure_optimizer
from slwtune.spec import JobSpec


def bare_loop(spec: JobSpec, vocab: int, steps: int, device: torch.device, compile_: bool = False,
              length: int | None = None, data_dir: str | Path | None = None) -> list[float]:
    """`steps` optimizer steps at `length` (default: full) on `data_dir` (default: spec.data.path, a
    prepared folder); returns each step's seconds, up to its one host sync (the loss, as any loop that
    logs it)."""
    torch.manual_seed(spec.seed)
    full, length = spec.slw.full_length, length or spec.slw.full_length
    sampler = WindowSampler(open_tokens(data_dir or spec.data.path, "train"), full + 1, spec.data.batch_size,
                            seed=spec.seed)
    model = GPT(config_from_spec(spec, vocab)).to(device)
    opt = configure_optimizer(model, spec.optim.lr, spec.optim.betas, spec.optim.eps, spec.optim.weight_decay,
                              fused=device.type == "cuda" or None)
    forward = torch.compile(model) if compile_ else model
    micro, accum = spec.micro_batch_size(), spec.grad_accum_steps()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    times = [time.perf_counter()]
    for step in range(1, steps + 1):
        windows = sampler.batch(step)[:, : length + 1].to(device)
        for i in range(accum):
            part = windows[i * micro:(i + 1) * micro]
            with autocast:
                _, loss = forward(part[:, :-1], part[:, 1:])
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the one sync a loop that logs its loss has
        times.append(time.perf_counter())
    return [b - a for a, b in zip(times, times[1:])]
