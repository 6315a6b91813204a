"""The SLW training loop of one worker: on a Ray Train worker, or in-process.

`train_loop(spec, options, session)` reads top to bottom: `prepare` sets up and restores,
then per step pick the length, set the LR, run the micro-batches, check the
signals, step the optimizer, and every N steps evaluate, report, checkpoint.
A `Session` hides where it runs (Ray Train or a local benchmark/test).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from slwtune import metrics as M
from slwtune.batching import DeviceBatches, apply_seqlen
from slwtune.checkpoint import (TrainState, load_checkpoint, local_checkpoint_dir, save_checkpoint, seed_everything,
                                unwrap)
from slwtune.data import DatasetMeta, WindowSampler, eval_batches, open_tokens, resolve_dataset
from slwtune.model import build_model, configure_optimizer, estimate_mfu, mark_length_dynamic, peak_flops
from slwtune.pacing import make_pacing
from slwtune.schedule import lr_schedule_from_spec
from slwtune.spec import JobSpec
from slwtune.stability import StabilityMonitor, adam_variance_stats
from slwtune.tracking import RunLogger

if TYPE_CHECKING:
    from slwtune.sessions import Session


@dataclass
class RunOptions:
    """How this run differs from the spec's full run (a probe stops early, ...)."""

    max_steps: int | None = None          # probe window; None = until the token budget
    max_tokens: int | None = None         # stop at this many tokens (a race segment); the LR schedule stays the full run's
    mlflow_uri: str | None = None
    mlflow_run_id: str | None = None
    init_checkpoint: str | None = None     # continue from this dir (e.g. the winning probe)
    progress: bool = False                 # print a progress line from rank 0
    progress_run_id: str | None = None     # also set that line as the progress tag of this MLflow run
    report_every_steps: int | None = None  # default: run.eval_every_steps
    stop_when_unstable: bool = False       # probes end on `fluctuating` too, not only `diverged`
    trace_dir: str | None = None           # every rank appends its reports to trace_dir/rank<r>.jsonl
    spill_dir: str | None = None           # metrics MLflow never took are written here (the job folder)
    on_step: Callable[[dict], None] | None = None  # in-process only: every step's row (benchmarks count spikes)


# ---- setup helpers -------------------------------------------------------------


def autocast_for(spec: JobSpec, device: torch.device):
    """bf16 autocast on CUDA (precision auto|bf16); plain fp32 elsewhere."""
    if device.type == "cuda" and spec.run.precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def all_reduce_sum_(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def forward_backward(forward, model, windows: torch.Tensor, length: int, spec: JobSpec, device: torch.device,
                     micro: int, accum: int, world: int) -> tuple[torch.Tensor, int]:
    """Micro-batches of one optimizer step at `length`: returns (mean loss on device, tokens trained)."""
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for i in range(accum):
        x, y, n = apply_seqlen(windows[i * micro:(i + 1) * micro], length, spec.slw.mode)  # (rows, L)
        if spec.run.compile and spec.slw.enabled:
            mark_length_dynamic(x, y, rows=spec.slw.mode == "reshape")
        # DDP all-reduces gradients only on the last micro-batch
        sync = nullcontext() if (world == 1 or i == accum - 1) else model.no_sync()
        with sync, autocast_for(spec, device):
            _, loss = forward(x, y)
            (loss / accum).backward()
        loss_sum += loss.detach().float()
        tokens += n
    return loss_sum / accum, tokens


def step_signals(loss: torch.Tensor, grad_norm: torch.Tensor, world: int) -> tuple[float, float]:
    """One host sync per step: the loss averaged over ranks, and the (already global) grad norm."""
    signals = torch.stack([loss, grad_norm.float()])
    all_reduce_sum_(signals[:1], world)
    loss_value, grad_value = signals.tolist()
    return loss_value / world, grad_value


def adam_stats(optimizer) -> tuple[float, float]:
    """Adam `exp_avg_sq` max and L1 of this rank: one host sync, no collective. Under DDP every
    rank holds the whole (identical) optimizer state, so reducing over ranks would only
    multiply the L1 by the worker count; a sharded optimizer (ZeRO, FSDP) would need max / sum."""
    var_max, var_l1 = adam_variance_stats(optimizer)
    var_max_value, var_l1_value = torch.stack([var_max, var_l1]).tolist()
    return var_max_value, var_l1_value


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], session: Session, spec: JobSpec) -> tuple[float, float]:
    """(mean validation loss at full length, its standard error over the batches); batches are
    split over ranks and reduced. The standard error is the evaluation's own noise: a rise
    smaller than a few of it says nothing (slw-spec section 5). NaN with a single batch.
    `model` is the plain module, never the compiled one: a compiled eval (other grad mode,
    other shape) would be one more graph to compile, which a short probe does not win back."""
    model.eval()
    total = torch.zeros(3, device=session.device)  # (sum of losses, sum of squares, count)
    for i in range(session.rank, len(batches), session.world_size):
        w = batches[i].to(session.device)
        with autocast_for(spec, session.device):
            _, loss = model(w[:, :-1], w[:, 1:])
        loss = loss.float()
        total += torch.stack([loss, loss * loss, torch.ones((), device=session.device)])
    model.train()
    all_reduce_sum_(total, session.world_size)
    s, ss, n = total.tolist()
    return s / max(n, 1.0), batch_standard_error(s, ss, n)


def batch_standard_error(total: float, total_sq: float, n: float) -> float:
    """Standard error of a mean from its sum, sum of squares and count (sample variance); NaN for n < 2."""
    if n < 2:
        return math.nan
    var = max(0.0, (total_sq - total * total / n) / (n - 1))
    return math.sqrt(var / n)


# ---- the loop ---------------------------------------------------------------------


@dataclass
class LoopParts:
    """What one worker's loop trains with, built once before its first step (`prepare`)."""

    model: Any              # the module the optimizer steps (DDP-wrapped on several workers)
    forward: Any            # `model`, compiled when run.compile
    optimizer: Any
    batches: DeviceBatches  # this rank's rows of step t's global batch
    val: list               # the fixed validation batches
    pacing: Callable[[int], int]
    lr_at: Callable
    monitor: StabilityMonitor
    state: TrainState       # step, tokens, RNG: restored when the run goes on


def prepare(spec: JobSpec, options: RunOptions, session: Session) -> LoopParts:
    """Data, model, optimizer, schedules and monitor; restored from a checkpoint when there is one."""
    rank, world, device = session.rank, session.world_size, session.device
    seed_everything(spec.seed)  # same init on every rank
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))

    # 1) data, model, optimizer
    data_dir = resolve_dataset(spec.data.path, spec.data.tokenizer, spec.data.vocab_size)
    meta = DatasetMeta.load(data_dir)
    window = spec.slw.full_length + 1
    # Every rank draws the global batch and trains on its own rows: the data of a step is the
    # same whatever the worker count (so 1- and N-worker runs compare), at the cost of reading
    # world x more rows from the memmap (small next to a step).
    sampler = WindowSampler(open_tokens(data_dir, "train"), window, spec.data.batch_size, seed=spec.seed)
    rows = slice(rank * spec.data.batch_size // world, (rank + 1) * spec.data.batch_size // world)
    batches = DeviceBatches(lambda step: sampler.batch(step)[rows], device)  # (B / world, e+1) by (seed, step)
    val = eval_batches(open_tokens(data_dir, "val"), window,
                       spec.run.eval_batch_size or spec.data.batch_size, spec.run.eval_batches)
    model = build_model(spec, meta.vocab_size).to(device)
    optimizer = configure_optimizer(model, spec.optim.lr, spec.optim.betas, spec.optim.eps,
                                    spec.optim.weight_decay, fused=device.type == "cuda" or None)
    monitor = StabilityMonitor(spec.tuning.stability, options.max_steps or spec.probe_steps(), meta.vocab_size)

    # 2) restore: Ray's own checkpoint (a restarted run) wins over an init checkpoint (a reused probe)
    state = TrainState()
    resume_from = session.checkpoint_dir() or local_checkpoint_dir(options.init_checkpoint)
    if resume_from:
        state = load_checkpoint(resume_from, model, optimizer)
        monitor.load_state_dict(state.monitor)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Compiled under SLW: one graph, dynamic in the length (forward_backward marks it), for
    # every length including the full one; without SLW a static one. Why not also a static
    # full-length graph: docs/results.md (no gain measured, one more compile per run).
    forward = torch.compile(model) if spec.run.compile else model
    if device.type == "cuda":
        reserve_full_length_memory(forward, spec, device)
    return LoopParts(model=model, forward=forward, optimizer=optimizer, batches=batches, val=val,
                     pacing=make_pacing(spec.slw), lr_at=lr_schedule_from_spec(spec), monitor=monitor, state=state)


def train_loop(spec: JobSpec, options: RunOptions, session: Session) -> dict:
    """Train until the token budget, the probe window, or a `diverged` verdict; returns the last report."""
    world, device = session.world_size, session.device
    parts = prepare(spec, options, session)
    model, optimizer, monitor, state = parts.model, parts.optimizer, parts.monitor, parts.state
    micro, accum = spec.micro_batch_size(), spec.grad_accum_steps()
    report_every = options.report_every_steps or spec.run.eval_every_steps
    reporter = Reporter(spec, options, session, parts)
    raw_config, peak = unwrap(model).config, peak_flops(device)
    verdict = monitor.verdict
    last: dict[str, Any] = {}
    t0, tokens0 = time.perf_counter(), state.tokens
    max_steps = options.max_steps or 10**12
    stop_tokens = min(spec.budget.train_tokens, options.max_tokens or spec.budget.train_tokens)

    # 3) steps
    while state.tokens < stop_tokens and state.step < max_steps:
        state.step += 1
        length = parts.pacing(state.step)
        lr = parts.lr_at(state.step, state.tokens, state.warmup_tokens)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss, step_tokens = forward_backward(parts.forward, model, parts.batches.get(state.step), length, spec,
                                             device, micro, accum, world)
        parts.batches.prefetch(state.step + 1)  # read while the device computes; the signals below wait for it
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   spec.optim.grad_clip if spec.optim.grad_clip > 0 else float("inf"))
        loss_value, grad_value = step_signals(loss, grad_norm, world)
        verdict = monitor.observe_train(state.step, loss_value, grad_value)
        if verdict.status == M.DIVERGED and not math.isfinite(loss_value + grad_value):
            optimizer.zero_grad(set_to_none=True)  # never apply a non-finite update
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.tokens += step_tokens * world
        if state.warmup_tokens is None and state.step >= spec.optim.lr_warmup_steps:
            state.warmup_tokens = state.tokens

        # 4) periodic work: logs, Adam stats, eval, report, checkpoint
        row = {M.TRAIN_LOSS: loss_value, M.TRAIN_LOSS_RATIO: monitor.last_loss_ratio,
               M.TRAIN_SEQLEN: length, M.TRAIN_TOKENS: state.tokens, M.TRAIN_LR: lr,
               M.TRAIN_GRAD_NORM: grad_value}
        if state.step % spec.run.stats_every_steps == 0 or state.step == 1:
            row[M.ADAM_VAR_MAX], row[M.ADAM_VAR_L1] = adam_stats(optimizer)
        elapsed = time.perf_counter() - t0
        tokens_per_s = (state.tokens - tokens0) / max(elapsed, 1e-9)
        row[M.TOKENS_PER_S] = tokens_per_s
        if peak:
            row[M.MFU] = estimate_mfu(raw_config, length, tokens_per_s / world, peak)
        if options.on_step:
            options.on_step({**row, M.STEP: state.step})

        finished = should_stop(verdict, options) or state.tokens >= stop_tokens or state.step >= max_steps
        if state.step % report_every == 0 or finished:
            verdict, finished, last = reporter.report(row, verdict, finished, length, loss_value)
        elif state.step % spec.run.log_every_steps == 0 or state.step == 1:
            reporter.logger.log(row, state.step)
        if finished:
            break

    return last


class Reporter:
    """A loop's periodic work past the step: evaluate, judge, report to the session, checkpoint, log."""

    def __init__(self, spec: JobSpec, options: RunOptions, session: Session, parts: LoopParts):
        self.spec, self.options, self.session, self.parts = spec, options, session, parts
        self.logger = RunLogger(options.mlflow_uri if session.rank == 0 else None, options.mlflow_run_id,
                                spill_dir=options.spill_dir)
        self.start_time = time.time()

    def report(self, row: dict, verdict, finished: bool, length: int, loss_value: float) -> tuple[Any, bool, dict]:
        """(verdict, finished, the report) after this step's evaluation and report."""
        spec, options, session, parts, logger = self.spec, self.options, self.session, self.parts, self.logger
        monitor, state, rank = parts.monitor, parts.state, session.rank
        if verdict.status != M.DIVERGED:
            val_loss, val_se = evaluate(unwrap(parts.model), parts.val, session, spec)
            row[M.VAL_LOSS], row[M.VAL_PPL] = val_loss, M.perplexity(val_loss)
            if math.isfinite(val_se):
                row[M.VAL_LOSS_SE] = val_se
            verdict = monitor.observe_val(state.step, val_loss, val_se, last=finished)
        row[M.SPIKE_COUNT] = monitor.spike_count  # recovered spikes too: MLflow and the report show them
        finished = finished or should_stop(verdict, options)
        state.monitor = monitor.state_dict()
        last = report_row(row, state, verdict, monitor, finished, time.time() - self.start_time)
        ckpt = None
        if rank == 0 and (finished or state.step % spec.run.checkpoint_every_steps == 0):
            ckpt = tempfile.mkdtemp(prefix="slwtune-ckpt-")
            save_checkpoint(Path(ckpt), parts.model, parts.optimizer, state)
        logger.log(row, state.step)
        if finished:  # tag before the report: a Tune stopper may end this process right after it
            logger.set_tags({M.TAG_VERDICT: verdict.status, M.TAG_REASON: verdict.reason or "-"})
        logger.flush()
        if finished:  # the last report says how many metrics MLflow never took (kept in spill_dir)
            last[M.MLFLOW_UNSENT] = logger.close()
        if options.trace_dir:
            write_trace(options.trace_dir, rank, last, parts.model)
        session.report(last, ckpt)
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)
        if rank == 0 and options.progress:
            line = print_progress(state, spec, length, loss_value, verdict, time.time() - self.start_time)
            if options.mlflow_uri and options.progress_run_id:
                logger.set_tags({M.TAG_PROGRESS: line}, run_id=options.progress_run_id)
        return verdict, finished, last


def write_trace(trace_dir: str, rank: int, report: dict, model) -> None:
    """Debug trace: this rank's report plus a checksum of its parameters (replicas must agree)."""
    checksum = sum(float(p.detach().double().sum()) for p in unwrap(model).parameters())
    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(trace_dir) / f"rank{rank}.jsonl", "a") as f:
        f.write(json.dumps({**report, "param_checksum": checksum}) + "\n")


def should_stop(verdict, options: RunOptions) -> bool:
    """A diverged run always ends; a probe also ends on `fluctuating`."""
    return verdict.status == M.DIVERGED or (options.stop_when_unstable and verdict.status != M.STABLE)


def report_row(row: dict, state: TrainState, verdict, monitor, done: bool, wall_s: float) -> dict:
    """What one report carries: finite metrics plus the verdict as its own fields."""
    out = {k: M.finite(v) for k, v in row.items()}
    out.update({M.STEP: state.step, M.TRAIN_TOKENS: state.tokens, M.VERDICT: verdict.status,
                M.VERDICT_CODE: M.VERDICT_CODES[verdict.status], M.REASON: verdict.reason or "",
                M.DONE: done, M.MAX_LOSS_RATIO: M.finite(monitor.max_loss_ratio),
                M.BEST_VAL_PPL: M.finite(monitor.best_val_ppl), M.WALL_S: wall_s,
                M.EARLY: bool(verdict.early)})
    out.update({k: M.finite(v) for k, v in monitor.summary().items()})
    return out


def reserve_full_length_memory(model, spec: JobSpec, device: torch.device) -> None:
    """One forward/backward at full length so later (shorter) steps reuse its memory."""
    rows = spec.micro_batch_size()
    x = torch.zeros(rows, spec.slw.full_length, dtype=torch.long, device=device)
    if spec.run.compile and spec.slw.enabled:
        mark_length_dynamic(x, rows=spec.slw.mode == "reshape")  # compile the graph every length uses
    with autocast_for(spec, device):
        _, loss = model(x, x)
    loss.backward()
    model.zero_grad(set_to_none=True)


def print_progress(state: TrainState, spec: JobSpec, length: int, loss: float, verdict, elapsed: float) -> str:
    """Print a progress bar line; returns the line without the bar (the job's progress)."""
    budget = spec.budget.train_tokens
    frac = min(1.0, state.tokens / budget)
    eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
    bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
    line = (f"full run: step {state.step}, tokens {state.tokens:,}/{budget:,} ({frac:.1%}), seqlen {length}, "
            f"loss {loss:.4f}, {verdict.status}, ETA {eta:.0f}s")
    print(f"[{bar}] {line}", flush=True)
    return line
