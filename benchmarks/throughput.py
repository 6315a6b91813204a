"""Throughput of slwtune's training loop against a bare PyTorch loop, measured side by side.

(a) slwtune's `train_loop` in-process (no Ray), SLW off so both train at full length;
(b) a plain PyTorch loop (bare_loop.py, gpu_check's too): same model, batch, data windows, AdamW,
    clipping, threads.
Runs are interleaved A B A B ... so machine noise hits both alike; the ratio is of medians.
Then the step time of the bare loop at lengths e/8, e/4, e/2 relative to e.

Last line: JSON with loop_vs_bare and step_time_<frac>_vs_full.
    python benchmarks/throughput.py [--steps 30] [--pairs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bare_loop import bare_loop
from slwtune import metrics as M
from slwtune.data import DatasetMeta, resolve_dataset
from slwtune.spec import parse_spec
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop


def bench_spec(steps: int, batch: int, length: int, threads: int):
    return parse_spec({
        "name": "bench", "seed": 7,
        "model": {"preset": "small"},
        "data": {"path": "builtin:shakespeare", "tokenizer": "bpe", "vocab_size": 2048, "batch_size": batch},
        "optim": {"lr": 1e-3, "lr_warmup_steps": 5},
        "slw": {"enabled": False, "start_length": 8, "full_length": length, "duration_steps": 10},
        # one report (with its eval) at the very end; the timing below stops before it
        "run": {"eval_every_steps": 10**6, "eval_batches": 1, "log_every_steps": 10**6,
                "stats_every_steps": 10, "checkpoint_every_steps": 10**6},
        "budget": {"train_tokens": 10**12},
        "resources": {"cpus_per_worker": threads},
    })


def run_slwtune(spec, steps: int) -> float:
    """tokens/s of the loop's own steady state (from its first step to its last, before the final eval)."""
    last = train_loop(spec, RunOptions(max_steps=steps), LocalSession())
    return last[M.TOKENS_PER_S]


def run_bare(spec, steps: int, length: int | None = None) -> tuple[float, float]:
    """The plain PyTorch loop (bare_loop.py): returns (tokens/s, seconds per step) at `length` (default: full)."""
    data_dir = resolve_dataset(spec.data.path, spec.data.tokenizer, spec.data.vocab_size)
    seconds = bare_loop(spec, DatasetMeta.load(data_dir).vocab_size, steps, torch.device("cpu"), length=length,
                        data_dir=data_dir)
    elapsed = sum(seconds)
    return steps * spec.data.batch_size * (length or spec.slw.full_length) / elapsed, elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = bench_spec(args.steps, args.batch, args.length, args.threads)
    run_bare(spec, 2)  # warm-up: dataset preparation, allocator, kernels

    loop, bare = [], []
    for i in range(args.pairs):
        loop.append(run_slwtune(spec, args.steps))
        bare.append(run_bare(spec, args.steps)[0])
        print(f"pair {i + 1}: slwtune loop {loop[-1]:,.0f} tok/s   bare loop {bare[-1]:,.0f} tok/s", flush=True)
    ratio = statistics.median(loop) / statistics.median(bare)
    print(f"loop_vs_bare = {ratio:.3f} (median of {args.pairs} interleaved pairs, {args.steps} steps each, "
          f"batch {args.batch} x {args.length}, {args.threads} thread(s))")

    result = {"loop_vs_bare": round(ratio, 4)}
    full_times = []
    fractions = {"eighth": 8, "quarter": 4, "half": 2}
    per_len: dict[str, list[float]] = {k: [] for k in fractions}
    for _ in range(args.pairs):  # interleave the lengths with the full length too
        full_times.append(run_bare(spec, args.steps)[1])
        for name, div in fractions.items():
            per_len[name].append(run_bare(spec, args.steps, args.length // div)[1])
    full_t = statistics.median(full_times)
    for name, div in fractions.items():
        rel = statistics.median(per_len[name]) / full_t
        result[f"step_time_{name}_vs_full"] = round(rel, 4)
        print(f"step time at e/{div} = {args.length // div}: {rel:.3f} of the full-length step")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
