"""What tuning buys, measured: tuned SLW against the baseline and against the SLW defaults other tools ship.

    python benchmarks/paper_effect.py [SPEC] [--lrs 0.01 0.1] [--batch 64] [--seeds 3]
                                      [--quick | --gpu] [--dry-run] [--out DIR] [--mlflow-uri URI]
                                      [--set key=value ...]

SPEC is a job spec file or preset name; without it, the scale's built-in spec (see SCALES).
Per LR, with the same data and the same seeds (seed = spec.seed + i), four arms train in this
process (slwtune.train_loop with a LocalSession: no Ray, no MLflow needed):

  baseline   SLW off (spec.without_slw()).
  tuned      what `slwtune tune` delivers: the spec's own search strategy drives in-process probes
             (slwtune.tuning.local: the control probe too), the driver's own race decides between the
             best SLW candidate and the control at equal tokens (slwtune.tuning.race), the driver's rule
             picks the full run (the baseline when the control wins, `tuning.when_baseline_wins`), and
             the full run continues from the race winner's checkpoint when
             `tuning.reuse_probe_checkpoint` is on. Tuned once per seed; every probe's and both race
             arms' tokens and time count against this arm (its curve starts there).
  composer   Composer's SeqLengthWarmup defaults (see DEFAULTS).
  deepspeed  the DeepSpeed curriculum-learning tutorial's seqlen settings (see DEFAULTS).

Every arm's full run trains to the token budget whatever its loss spikes (the full runs' loss-ratio
stop is lifted; a non-finite loss still ends a run); the probes keep the spec's thresholds. The
loop, its token-based LR decay and the token budget are slwtune's for every arm: only the knobs differ.

Target: the best baseline's final full-length val loss (mean over seeds; best = the LR whose baseline
ends lowest). Tokens and time to target: where an arm's seed-mean val curve (val loss against tokens;
time against tokens) first reaches the target, interpolated linearly between evaluations.

Writes OUT/{table.md,results.json,curves.png}; logs everything under one MLflow parent run when a
tracking URI is given (--mlflow-uri or $MLFLOW_TRACKING_URI). Last line of stdout: JSON with
tokens_to_target_speedup, time_to_target_speedup (best SLW arm vs best baseline, tuning included),
tuned_vs_default_val_loss (best tuned minus best default, negative = tuned better), spikes_baseline,
spikes_slw (mean loss-ratio spikes per run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slwtune import metrics as M
from slwtune.spec import JobSpec, apply_overrides, load_spec, parse_spec
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning import race as R
from slwtune.tuning.local import CPU_S, LocalTuning, StepRecorder, tune_locally

BASELINE, TUNED, COMPOSER, DEEPSPEED = "baseline", "tuned", "composer", "deepspeed"
ARMS = (BASELINE, TUNED, COMPOSER, DEEPSPEED)
SLW_ARMS = (TUNED, COMPOSER, DEEPSPEED)
SPIKE_BOUNDS = (1.2, 1.5)
# Full runs train to the budget: a spike is counted, not a reason to stop. The spec's largest allowed
# bound (100: a loss 100x its minimum) or a non-finite loss still ends a run that has truly diverged.
NO_RATIO_STOP = 100.0


# ---- the defaults other tools ship ---------------------------------------------------------------


@dataclass(frozen=True)
class ShippedDefault:
    """SLW settings as another tool ships them, and how they map to this spec's (start, T)."""

    arm: str
    source: str
    settings: str
    mapping: str
    knobs: Callable[[JobSpec], tuple[int, int]]


def baseline_steps(spec: JobSpec) -> int:
    """Optimizer steps of the baseline (every step at full length) to the token budget."""
    return math.ceil(spec.budget.train_tokens / (spec.data.batch_size * spec.slw.full_length))


def composer_knobs(spec: JobSpec) -> tuple[int, int]:
    """Composer: min_seq_length 8, step 8, duration 0.3 of training (its training is counted in
    batches, so 30% of the baseline's optimizer steps)."""
    return 8, max(1, int(0.3 * baseline_steps(spec)))


def deepspeed_knobs(spec: JobSpec) -> tuple[int, int]:
    """DeepSpeed tutorial: min_difficulty 8, total_curriculum_step 15000 where the GPT-2 example's
    LR warmup is 3000 iterations: T = 5x the LR warmup."""
    return 8, 5 * max(1, spec.optim.lr_warmup_steps)


DEFAULTS = {
    COMPOSER: ShippedDefault(
        COMPOSER,
        "mosaicml/composer composer/algorithms/seq_length_warmup/seq_length_warmup.py (SeqLengthWarmup.__init__ "
        "defaults)",
        "duration=0.3, min_seq_length=8, max_seq_length=1024, step_size=8, truncate=True",
        "start 8, step 8, full length = the spec's, T = 30% of the baseline's optimizer steps (Composer counts "
        "training in batches); linear growth by 8 (Composer's staircase, equal up to rounding)",
        composer_knobs),
    DEEPSPEED: ShippedDefault(
        DEEPSPEED,
        "deepspeedai/DeepSpeed docs/_tutorials/curriculum-learning.md (config example) and Megatron-DeepSpeed "
        "examples_deepspeed/curriculum_learning/ds_train.sh (GPT-2 example: LR_WARMUP_ITER=3000)",
        'curriculum_type "seqlen", min_difficulty 8, max_difficulty 1024, schedule_type "fixed_linear", '
        "total_curriculum_step 15000, difficulty_step 8",
        "start 8, step 8, fixed_linear, full length = the spec's, T = 15000/3000 = 5x the spec's LR warmup steps",
        deepspeed_knobs),
}


def slw_spec(spec: JobSpec, start: int, duration: int, step_size: int = 8) -> JobSpec:
    """`spec` with SLW on: fixed_linear, truncation, lengths on multiples of `step_size`."""
    data = spec.to_dict()
    data["slw"].update(enabled=True, start_length=int(start), duration_steps=int(duration), step_size=step_size,
                       pacing="fixed_linear", mode="truncate")
    return JobSpec.model_validate(data)


def full_run_spec(spec: JobSpec) -> JobSpec:
    """A full run trains to its budget: only a true divergence (ratio > 100 persisting, non-finite)
    ends it early; the loss ceiling is off."""
    data = spec.to_dict()
    data["tuning"]["stability"]["loss_ratio_max"] = NO_RATIO_STOP
    data["tuning"]["stability"]["loss_ceiling_margin"] = 1000.0  # its largest value: off in effect
    return JobSpec.model_validate(data)


# ---- scales -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    name: str
    spec: dict          # the built-in spec (used when no SPEC is given)
    lrs: tuple[float, ...]
    seeds: int
    device: str
    note: str


# The scales' runs are short (24-100 full-length steps) and their probes are 40-50% of a run: at the default
# race budget (0.3 of the run) the race could never see an SLW arm past its warmup, so the tuned arm would be
# the baseline by the undecided rule every time. The whole run as the race budget lets the race judge; its
# cost (the loser's race tokens) counts against the tuned arm like every probe's.
RACE_BUDGET = {"race_max_fraction": 1.0}


def _spec(name: str, *, model: dict, data: dict, optim: dict, full_length: int, tokens: int, run: dict,
          tuning: dict, resources: dict | None = None) -> dict:
    return {"name": name, "seed": 1234, "model": model, "data": data, "optim": optim,
            "slw": {"enabled": True, "start_length": 8, "full_length": full_length, "duration_steps": 100,
                    "step_size": 8},
            "budget": {"train_tokens": tokens}, "run": run, "tuning": {**RACE_BUDGET, **tuning},
            "resources": resources or {"cpus_per_worker": 1}}


CPU_SPEC = _spec(
    "paper-effect-cpu",
    # 2-layer d=128 byte-level GPT, context 128 (the issue's CPU model) at batch 64 = 16 x 4 accumulation:
    # at batch 16 a high LR stalls baseline and SLW alike; at 64 the baseline at 3x the LR is visibly worse
    # and SLW is not (docs/results.md has the regime search)
    model={"preset": "tiny", "n_layer": 2, "n_head": 4, "n_embd": 128, "context_length": 128},
    data={"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 64, "micro_batch_size": 16},
    optim={"lr": 0.01, "min_lr": 0.001, "lr_warmup_steps": 20},
    full_length=128, tokens=64 * 128 * 100,  # 100 full-length steps
    run={"eval_every_steps": 10, "eval_batches": 4, "eval_batch_size": 32, "log_every_steps": 5,
         "stats_every_steps": 5, "checkpoint_every_steps": 10**6},
    # as the presets: probes of 2x the LR warmup, 2 slots, 2 rounds
    tuning={"strategy": "paper", "probe_warmup_multiples": 2, "duration_min": 20, "duration_max": 120,
            "resolution": 30, "slots": 2, "max_rounds": 2, "max_start_length": 32})

QUICK_SPEC = _spec(
    "paper-effect-quick",
    model={"preset": "tiny", "n_layer": 1, "n_head": 2, "n_embd": 32, "context_length": 32},
    data={"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 8, "micro_batch_size": 4},
    optim={"lr": 0.03, "min_lr": 0.001, "lr_warmup_steps": 4},
    full_length=32, tokens=8 * 32 * 24,
    run={"eval_every_steps": 4, "eval_batches": 1, "eval_batch_size": 8, "log_every_steps": 4,
         "stats_every_steps": 2, "checkpoint_every_steps": 10**6},
    tuning={"strategy": "paper", "probe_warmup_multiples": 3, "duration_min": 4, "duration_max": 16,
            "resolution": 8, "slots": 2, "max_rounds": 1, "max_start_length": 16})

GPU_SPEC = _spec(
    "paper-effect-gpu",
    # gpt2-117m shape (12 layers, d=768, context 1024) over bytes (no tokenizer files needed offline)
    model={"preset": "gpt2-117m"},  # the vocabulary is the data's (256 bytes)
    data={"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 256, "micro_batch_size": 32},
    optim={"lr": 3e-3, "min_lr": 3e-5, "lr_warmup_steps": 8},
    full_length=1024, tokens=256 * 1024 * 40,  # 40 full-length steps of 256 x 1024
    run={"eval_every_steps": 4, "eval_batches": 4, "eval_batch_size": 32, "log_every_steps": 2,
         "stats_every_steps": 2, "checkpoint_every_steps": 10**6, "precision": "bf16"},
    tuning={"strategy": "paper", "probe_warmup_multiples": 2, "duration_min": 8, "duration_max": 32,
            "resolution": 12, "slots": 2, "max_rounds": 1, "max_start_length": 64},
    resources={"cpus_per_worker": 8, "use_gpu": True})

SCALES = {
    "cpu": Scale("cpu", CPU_SPEC, (0.01, 0.03), 3, "cpu",
                 "about 20 minutes on 2 idle CPU cores, 1 torch thread (docs/results.md: the measured run)"),
    "quick": Scale("quick", QUICK_SPEC, (0.003, 0.03), 2, "cpu",
                   "under 2 minutes: the same code path at toy size, for `make test`"),
    "gpu": Scale("gpu", GPU_SPEC, (6e-4, 3e-3), 1, "cuda",
                 "sized for under 8 minutes on one H100 (an estimate: not yet run on a GPU)"),
}

# --dry-run: the scale's structure (LRs, arms, accumulation ratio) at toy sizes, on CPU.
DRY_RUN_OVERRIDES = {
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.context_length": 32,
    "slw.full_length": 32, "data.batch_size": 8, "data.micro_batch_size": 4, "optim.lr_warmup_steps": 4,
    "budget.train_tokens": 8 * 32 * 24, "run.eval_every_steps": 4, "run.eval_batches": 1,
    "run.eval_batch_size": 8, "run.stats_every_steps": 2, "run.precision": "fp32",
    "tuning.probe_steps": 8, "tuning.duration_min": 4, "tuning.duration_max": 16, "tuning.resolution": 8,
    "tuning.max_rounds": 1, "tuning.max_start_length": 16, "resources.use_gpu": False,
    "resources.cpus_per_worker": 1,
}


# ---- one run, recorded ----------------------------------------------------------------------------


@dataclass
class Curve:
    """A run's evidence, already offset by what came before it (the tuned arm's tuning)."""

    evals: list[tuple[float, float, float, float]] = field(default_factory=list)  # (tokens, wall, cpu, val loss)
    steps: list[dict] = field(default_factory=list)  # per-step rows (loss ratio, Adam variance)

    def add(self, reports: list[dict], rows: list[dict], tokens0: float = 0, wall0: float = 0,
            cpu0: float = 0) -> None:
        """Reports (val loss) and StepRecorder rows of one training call, shifted by the offsets."""
        at_step = {r[M.STEP]: r for r in rows}
        for rep in reports:
            val = rep.get(M.VAL_LOSS)
            row = at_step.get(rep[M.STEP])
            if val is None or row is None or val >= M.NONFINITE_STANDIN:
                continue
            # the time the point exists: after the step's training, before its own evaluation
            self.evals.append((tokens0 + rep[M.TRAIN_TOKENS], wall0 + row[M.WALL_S], cpu0 + row[CPU_S], val))
        self.steps.extend(rows)


@dataclass
class Run:
    arm: str
    lr: float
    seed: int
    knobs: str
    curve: Curve
    final_val_loss: float | None
    verdict: str
    tokens: int                # trained in this arm's full run (from its start, probe prefix included)
    wall_s: float
    cpu_s: float
    tuning_tokens: int = 0
    tuning_wall_s: float = 0.0
    tuning_cpu_s: float = 0.0
    tuning_note: str = ""

    def spikes(self, bound: float) -> int:
        return sum(1 for r in self.curve.steps if r.get(M.TRAIN_LOSS_RATIO, 1.0) > bound)

    def max_adam_var(self) -> float | None:
        values = [r[M.ADAM_VAR_MAX] for r in self.curve.steps if M.ADAM_VAR_MAX in r]
        return max(values) if values else None


def train(spec: JobSpec, device: str, *, init_checkpoint: str | None = None,
          mlflow: dict | None = None) -> tuple[dict, list[dict], StepRecorder]:
    """One full run in this process: (last report, every report, recorder of every step)."""
    recorder, session = StepRecorder(), LocalSession(device=device)
    options = RunOptions(init_checkpoint=init_checkpoint, on_step=recorder, **(mlflow or {}))
    last = train_loop(full_run_spec(spec), options, session)
    return last, session.reports, recorder


def final_loss(last: dict) -> float | None:
    value = last.get(M.VAL_LOSS)
    return None if value is None or value >= M.NONFINITE_STANDIN else float(value)


def run_plain(arm: str, spec: JobSpec, lr: float, seed: int, knobs: str, device: str, tracker) -> Run:
    with tracker.child(f"{arm}-lr{lr:g}-seed{seed}", spec, {"arm": arm, "lr": lr, "seed": seed}) as mlflow:
        last, reports, rec = train(spec, device, mlflow=mlflow)
    curve = Curve()
    curve.add(reports, rec.rows)
    return Run(arm, lr, seed, knobs, curve, final_loss(last), last.get(M.VERDICT, M.FAILED),
               int(last.get(M.TRAIN_TOKENS) or 0), rec.wall_s(), rec.cpu_s())


def run_tuned(spec: JobSpec, lr: float, seed: int, device: str, tracker, log) -> Run:
    """The tuned arm: slwtune's search in-process, then the full run the driver would start."""
    tuning = tune_locally(spec, device=device, study_name=f"paper-effect-lr{lr:g}-seed{seed}",
                          keep_checkpoints=spec.tuning.reuse_probe_checkpoint,
                          options=tracker.probe_options(spec, lr, seed), race_options=tracker.race_options(spec, lr, seed),
                          log=log)
    try:
        return _tuned_full_run(spec, tuning, lr, seed, device, tracker)
    finally:
        tuning.cleanup()


def _tuned_full_run(spec: JobSpec, tuning: LocalTuning, lr: float, seed: int, device: str, tracker) -> Run:
    go, knobs, seed_probe = tuning.full_run_plan(spec)
    if not go:
        label = "no full run" + (" (control won, when_baseline_wins=stop)" if tuning.baseline_wins else " (none stable)")
    elif knobs is None:
        label = "baseline (control won)"
    else:
        label = f"s={knobs.start_length} T={knobs.duration_steps}"
    verdicts = ", ".join(f"{'control' if not r.slw else f's={r.start_length} T={r.duration_steps}'} {r.verdict}"
                         for r in tuning.probes)
    decision = tuning.decision or {}
    race = (f"; race: {decision.get('winner')} ({decision.get('rule')}, {decision.get('race_tokens', 0):,} tokens)"
            if decision.get("raced") else "")
    cost = dict(tuning_tokens=tuning.tokens, tuning_wall_s=tuning.wall_s, tuning_cpu_s=tuning.total_cpu_s,
                tuning_note=f"seed {seed}: {verdicts}{race} -> {label}")
    if not go:
        return Run(TUNED, lr, seed, label, Curve(), None, M.NONE_STABLE, 0, 0.0, 0.0, **cost)
    run_spec = spec.with_slw(knobs.start_length, knobs.duration_steps) if knobs else spec.without_slw()
    init = tuning.start_point(knobs, seed_probe) if spec.tuning.reuse_probe_checkpoint else None
    curve = Curve()
    tokens0, wall0, cpu0 = float(tuning.tokens), tuning.wall_s, tuning.total_cpu_s
    if init:  # the winning probe's (and race arm's) steps are this run's first steps: their cost sits in its curve
        arm = (tuning.arms or {}).get(R.ARM_SLW if knobs else R.ARM_BASELINE)
        probe = seed_probe.probe
        race_wall, race_cpu = (tuning.race_wall_s.get(arm.name, 0.0), tuning.race_cpu_s.get(arm.name, 0.0)) \
            if arm else (0.0, 0.0)
        tokens0 -= arm.tokens if arm else seed_probe.tokens
        wall0 -= seed_probe.wall_s + race_wall
        cpu0 -= tuning.cpu_s[probe] + race_cpu
        curve.add(tuning.reports[probe], tuning.rows[probe], tokens0, wall0, cpu0)
        wall0 += seed_probe.wall_s
        cpu0 += tuning.cpu_s[probe]
        if arm:
            curve.add(tuning.race_reports.get(arm.name, []), tuning.race_rows.get(arm.name, []), tokens0, wall0,
                      cpu0)
            wall0 += race_wall
            cpu0 += race_cpu
    with tracker.child(f"{TUNED}-lr{lr:g}-seed{seed}", run_spec, {"arm": TUNED, "lr": lr, "seed": seed}) as mlflow:
        last, reports, rec = train(run_spec, device, init_checkpoint=init, mlflow=mlflow)
    curve.add(reports, rec.rows, tokens0, wall0, cpu0)
    return Run(TUNED, lr, seed, label + ((" (continued from its race arm)" if tuning.arms else
                                          " (continued from its probe)") if init else ""), curve, final_loss(last),
               last.get(M.VERDICT, M.FAILED), int(last.get(M.TRAIN_TOKENS) or 0), rec.wall_s(), rec.cpu_s(), **cost)


def run_seed(spec: JobSpec, lr: float, i: int, device: str, tracker, log) -> list[Run]:
    """Every arm at one LR and seed (seed = spec.seed + i), one after the other."""
    seed = spec.seed + i
    base = parse_spec(apply_overrides(spec.to_dict(), {"optim.lr": lr, "seed": seed,
                                                       "optim.min_lr": min(spec.optim.min_lr, lr)}))
    arms = [(BASELINE, lambda: run_plain(BASELINE, base.without_slw(), lr, seed, "off", device, tracker))]
    arms.append((TUNED, lambda: run_tuned(base, lr, seed, device, tracker, log)))
    for arm, default in DEFAULTS.items():
        start, duration = default.knobs(base)
        arms.append((arm, lambda arm=arm, s=start, t=duration: run_plain(
            arm, slw_spec(base, s, t), lr, seed, f"s={s} T={t}", device, tracker)))
    runs = []
    for arm, go in arms:
        log(f"lr {lr:g} seed {seed}: {arm} ...")
        run = go()
        log(f"lr {lr:g} seed {seed}: {arm} [{run.knobs}] final val loss "
            f"{_fmt(run.final_val_loss, '.4f')} ({run.verdict}), {run.wall_s + run.tuning_wall_s:.0f}s")
        runs.append(run)
    return runs


def run_all(spec: JobSpec, lrs: list[float], seeds: int, device: str, tracker, log, jobs: int = 1) -> list[Run]:
    """Every arm at every LR and seed, interleaved per seed so machine noise hits all arms alike.

    `jobs` > 1 runs (LR, seed) units in that many processes (a many-core machine; the figures are the
    same runs, only their wall times share the machine differently); MLflow logging needs jobs = 1.
    """
    units = [(lr, i) for lr in lrs for i in range(seeds)]
    if jobs <= 1:
        return [run for lr, i in units for run in run_seed(spec, lr, i, device, tracker, log)]
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_seed, spec, lr, i, device, Tracker(None, "", "", {}), _log) for lr, i in units]
        return [run for f in futures for run in f.result()]


def _log(msg: str) -> None:
    print(f"[paper_effect {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- analysis: pure functions of the runs -----------------------------------------------------------


def interp(points: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation in sorted (x, y) points; flat beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The mean of several (x, y) curves on the x values they all cover (each interpolated there)."""
    curves = [sorted(c) for c in curves if c]
    if not curves:
        return []
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    grid = sorted({x for c in curves for x, _ in c if lo <= x <= hi})
    return [(x, statistics.fmean(interp(c, x) for c in curves)) for x in grid]


def first_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The first x at which the curve comes down to `target` (linear between points), or None."""
    for i, (x, y) in enumerate(points):
        if y <= target:
            if i == 0:
                return x
            x0, y0 = points[i - 1]
            return x0 + (x - x0) * (y0 - target) / (y0 - y) if y0 != y else x
    return None


def to_target(runs: list[Run], target: float | None) -> dict:
    """Tokens, wall and CPU seconds at which the seed-mean val curve of `runs` reaches `target`."""
    out = {"tokens": None, "wall_s": None, "cpu_s": None}
    evals = [r.curve.evals for r in runs]
    if target is None or not evals or any(not e for e in evals):
        return out
    tokens = first_reach(mean_curve([[(t, v) for t, _, _, v in e] for e in evals]), target)
    if tokens is None:
        return out
    out["tokens"] = tokens
    out["wall_s"] = statistics.fmean(interp([(t, w) for t, w, _, _ in e], tokens) for e in evals)
    out["cpu_s"] = statistics.fmean(interp([(t, c) for t, _, c, _ in e], tokens) for e in evals)
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values) -> float | None:
    """Sample standard deviation; None below two values (one seed has no spread to show)."""
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[Run]) -> dict:
    """Rows of the table (one per LR and arm), the target and the headline figures."""
    groups: dict[tuple[float, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.lr, r.arm), []).append(r)
    finals = {k: _mean(r.final_val_loss for r in g) for k, g in groups.items()}
    baselines = {lr: v for (lr, arm), v in finals.items() if arm == BASELINE and v is not None}
    best_lr = min(baselines, key=baselines.get) if baselines else None
    target = baselines.get(best_lr)
    rows = []
    for (lr, arm), group in sorted(groups.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
        reach = to_target(group, target)
        rows.append({
            "lr": lr, "arm": arm, "seeds": len(group), "knobs": "; ".join(sorted({r.knobs for r in group})),
            "final_val_loss": finals[(lr, arm)], "final_val_loss_std": _std(r.final_val_loss for r in group),
            "runs_with_val": sum(1 for r in group if r.final_val_loss is not None),
            "verdicts": {v: sum(1 for r in group if r.verdict == v) for v in sorted({r.verdict for r in group})},
            "tokens_to_target": reach["tokens"], "wall_s_to_target": reach["wall_s"],
            "cpu_s_to_target": reach["cpu_s"],
            **{f"spikes_gt_{b}": _mean(r.spikes(b) for r in group) for b in SPIKE_BOUNDS},
            "max_adam_var": _mean(r.max_adam_var() for r in group),
            "tuning_tokens": _mean(r.tuning_tokens for r in group) if arm == TUNED else None,
            "tuning_wall_s": _mean(r.tuning_wall_s for r in group) if arm == TUNED else None,
            "tuning_notes": [r.tuning_note for r in group] if arm == TUNED else [],
            "wall_s": _mean(r.wall_s + r.tuning_wall_s for r in group),
        })
    return {"target_val_loss": target, "best_baseline_lr": best_lr, "rows": rows,
            "headline": headline(rows, runs, best_lr)}


def _speedup(base: float | None, other: float | None) -> float | None:
    return base / other if base is not None and other else None


def headline(rows: list[dict], runs: list[Run], best_lr: float | None) -> dict:
    base = next((r for r in rows if r["arm"] == BASELINE and r["lr"] == best_lr), None)
    slw = [r for r in rows if r["arm"] in SLW_ARMS]

    def best(key: str) -> dict | None:
        reached = [r for r in slw if r[key] is not None]
        return min(reached, key=lambda r: r[key]) if reached else None

    by_tokens, by_time, by_cpu = best("tokens_to_target"), best("wall_s_to_target"), best("cpu_s_to_target")

    def best_final(arms) -> float | None:
        values = [r["final_val_loss"] for r in rows if r["arm"] in arms and r["final_val_loss"] is not None]
        return min(values) if values else None

    tuned, default = best_final((TUNED,)), best_final((COMPOSER, DEEPSPEED))

    def spikes(arms) -> dict:
        group = [r for r in runs if r.arm in arms]
        return {f"gt_{b}": _mean(r.spikes(b) for r in group) for b in SPIKE_BOUNDS}

    def name(row):
        return None if row is None else f"{row['arm']}@lr={row['lr']:g}"

    return {
        "tokens_to_target_speedup": _speedup(base and base["tokens_to_target"], by_tokens and by_tokens["tokens_to_target"]),
        "time_to_target_speedup": _speedup(base and base["wall_s_to_target"], by_time and by_time["wall_s_to_target"]),
        "tuned_vs_default_val_loss": None if tuned is None or default is None else tuned - default,
        "spikes_baseline": spikes((BASELINE,)),
        "spikes_slw": spikes(SLW_ARMS),
        "cpu_time_to_target_speedup": _speedup(base and base["cpu_s_to_target"], by_cpu and by_cpu["cpu_s_to_target"]),
        "best_baseline": name(base), "best_slw_by_tokens": name(by_tokens), "best_slw_by_time": name(by_time),
    }


# ---- output -------------------------------------------------------------------------------------------


def run_record(r: Run) -> dict:
    """One run as results.json keeps it: figures and its val curve (tokens, wall s, CPU s, val loss)."""
    return {"arm": r.arm, "lr": r.lr, "seed": r.seed, "knobs": r.knobs, "final_val_loss": r.final_val_loss,
            "verdict": r.verdict, "tokens": r.tokens, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
            "tuning_tokens": r.tuning_tokens, "tuning_wall_s": r.tuning_wall_s, "tuning_cpu_s": r.tuning_cpu_s,
            "tuning_note": r.tuning_note, **{f"spikes_gt_{b}": r.spikes(b) for b in SPIKE_BOUNDS},
            "max_adam_var": r.max_adam_var(), "evals": r.curve.evals}


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _tokens(x: float | None) -> str:
    return "not reached" if x is None else f"{x / 1e3:,.0f}k"


def table_markdown(summary: dict) -> str:
    head = ("| LR | arm | knobs | final val loss (mean ± std) | tokens to target | wall s to target | "
            "CPU s to target | spikes >1.2 | spikes >1.5 | max Adam var | tuning cost | verdicts |")
    lines = [f"Target: best baseline's final val loss {_fmt(summary['target_val_loss'], '.4f')} "
             f"(baseline at lr={summary['best_baseline_lr']})", "", head, "|" + "---|" * 12]
    for r in summary["rows"]:
        cost = "-"
        if r["arm"] == TUNED:
            cost = f"{_tokens(r['tuning_tokens'])} tok, {_fmt(r['tuning_wall_s'], '.0f')} s"
        verdicts = ", ".join(f"{k} {v}" for k, v in r["verdicts"].items())
        final = f"{_fmt(r['final_val_loss'], '.4f')} ± {_fmt(r['final_val_loss_std'], '.4f')}"
        if r["runs_with_val"] < r["seeds"]:
            final += f" ({r['runs_with_val']} of {r['seeds']} seeds)"
        lines.append(
            f"| {r['lr']:g} | {r['arm']} | {r['knobs']} | {final} | {_tokens(r['tokens_to_target'])} | "
            f"{_fmt(r['wall_s_to_target'], '.0f')} | {_fmt(r['cpu_s_to_target'], '.0f')} | "
            f"{_fmt(r['spikes_gt_1.2'], '.1f')} | {_fmt(r['spikes_gt_1.5'], '.1f')} | {_fmt(r['max_adam_var'], '.3g')} | "
            f"{cost} | {verdicts} |")
    return "\n".join(lines) + "\n"


def sources_markdown() -> str:
    lines = ["Defaults other tools ship, as used here:"]
    for d in DEFAULTS.values():
        lines.append(f"- {d.arm}: {d.settings} [{d.source}]; here: {d.mapping}")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[Run], path: Path) -> Path:
    """Val loss against tokens (tuning included), one line per arm (seed mean), one panel per LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r.lr for r in runs})
    fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4.5), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        tops = []
        for arm in ARMS:
            group = [r for r in runs if r.lr == lr and r.arm == arm]
            curve = mean_curve([[(t, v) for t, _, _, v in r.curve.evals] for r in group])
            if curve:
                ax.plot([x for x, _ in curve], [y for _, y in curve], label=arm,
                        linestyle="--" if arm == BASELINE else "-")
                tops.append(curve[min(1, len(curve) - 1)][1])
        if tops:  # an early spike's first evaluation would squash the rest of the panel
            ax.set_ylim(top=max(tops) * 1.02)
        ax.set(title=f"lr={lr:g} (mean of seeds)", xlabel="tokens (tuned: tuning included)",
               ylabel="val loss (full length)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- MLflow, only when a tracking URI is given ---------------------------------------------------------


class Tracker:
    """One parent run per benchmark, one child per full run and per probe; a no-op without a URI."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, params: dict):
        self.uri, self.experiment, self.parent = uri, experiment, None
        if uri:
            from slwtune import tracking

            self.parent = tracking.create_run(uri, experiment, run_name, params=params,
                                              tags={"benchmark": "paper_effect"})

    def child(self, name: str, spec: JobSpec, tags: dict):
        return _Child(self, name, spec, tags)

    def probe_options(self, spec: JobSpec, lr: float, seed: int):
        """RunOptions fields for each probe: its own child run (kind probe / control)."""
        if not self.parent:
            return None
        from slwtune import tracking
        from slwtune.tuning.local import probe_spec

        def options(probe) -> dict:
            kind = M.KIND_PROBE if probe.slw else M.KIND_CONTROL
            name = f"probe-lr{lr:g}-seed{seed}-" + (f"s{probe.start_length}-T{probe.duration_steps}" if probe.slw
                                                    else "control")
            run_id = tracking.create_run(self.uri, self.experiment, name, parent_run_id=self.parent,
                                         params=tracking.run_params(probe_spec(spec, probe)),
                                         tags={M.TAG_KIND: kind, "arm": TUNED, "lr": lr, "seed": seed,
                                               **tracking.knob_tags(probe_spec(spec, probe))})
            return {"mlflow_uri": self.uri, "mlflow_run_id": run_id}

        return options

    def race_options(self, spec: JobSpec, lr: float, seed: int):
        """RunOptions fields for each race arm: one child run per arm (kind race), kept over its segments."""
        if not self.parent:
            return None
        from slwtune import tracking

        runs: dict[str, str] = {}

        def options(arm) -> dict:
            if arm.name not in runs:
                arm_spec = arm.spec(spec)
                runs[arm.name] = tracking.create_run(
                    self.uri, self.experiment, f"race-lr{lr:g}-seed{seed}-{arm.name}", parent_run_id=self.parent,
                    params=tracking.run_params(arm_spec), tags={M.TAG_KIND: M.KIND_RACE, M.TAG_RACE_ARM: arm.name,
                                                                "arm": TUNED, "lr": lr, "seed": seed,
                                                                **tracking.knob_tags(arm_spec)})
            return {"mlflow_uri": self.uri, "mlflow_run_id": runs[arm.name]}

        return options

    def finish(self, out_dir: Path, summary: dict, failed: bool = False) -> None:
        if not self.parent:
            return
        from slwtune import tracking

        if failed:
            tracking.end_run(self.uri, self.parent, "FAILED")
            return
        for f in sorted(out_dir.iterdir()):
            tracking.log_artifact(self.uri, self.parent, str(f))
        metrics = {k: v for k, v in summary["headline"].items() if isinstance(v, (int, float))}
        for k in ("spikes_baseline", "spikes_slw"):
            metrics.update({f"{k}_{b}": v for b, v in summary["headline"][k].items() if v is not None})
        if summary["target_val_loss"] is not None:
            metrics["target_val_loss"] = summary["target_val_loss"]
        logger = tracking.RunLogger(self.uri, self.parent)
        logger.log(metrics, 0)
        logger.flush()
        tracking.end_run(self.uri, self.parent, "FAILED" if failed else "FINISHED")


class _Child:
    def __init__(self, tracker: Tracker, name: str, spec: JobSpec, tags: dict):
        self.tracker, self.name, self.spec, self.tags, self.run_id = tracker, name, spec, tags, None

    def __enter__(self) -> dict:
        t = self.tracker
        if not t.parent:
            return {}
        from slwtune import tracking

        self.run_id = tracking.create_run(t.uri, t.experiment, self.name, parent_run_id=t.parent,
                                          params=tracking.run_params(self.spec),
                                          tags={M.TAG_KIND: M.KIND_TRAIN, **tracking.knob_tags(self.spec), **self.tags})
        return {"mlflow_uri": t.uri, "mlflow_run_id": self.run_id}

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id:
            from slwtune import tracking

            tracking.end_run(self.tracker.uri, self.run_id, "FAILED" if exc_type else "FINISHED")


# ---- main ---------------------------------------------------------------------------------------------


def build_spec(args, scale: Scale) -> JobSpec:
    overrides: dict = {}
    if args.dry_run:
        overrides.update(DRY_RUN_OVERRIDES)
    if args.batch:
        overrides["data.batch_size"] = args.batch
    if args.spec:
        spec = load_spec(args.spec, args.set or None)
        return parse_spec(apply_overrides(spec.to_dict(), overrides)) if overrides else spec
    data = apply_overrides(scale.spec, overrides)
    return parse_spec(apply_overrides(data, args.set)) if args.set else parse_spec(data)


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec", nargs="?", help="job spec file or preset name (default: the scale's built-in spec)")
    p.add_argument("--lrs", type=float, nargs="+", help="learning rates (default: the scale's)")
    p.add_argument("--batch", type=int, help="global batch in sequences (micro-batch from the spec: accumulation)")
    p.add_argument("--seeds", type=int, help="seeds per arm (default: the scale's)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="toy sizes, under 2 minutes (the test suite runs it)")
    scale.add_argument("--gpu", action="store_true", help="gpt2-117m shape on CUDA, sized for under 8 min on an H100")
    p.add_argument("--dry-run", action="store_true", help="the scale's code path at toy sizes on CPU")
    p.add_argument("--device", help="torch device (default: the scale's; cpu with --dry-run)")
    p.add_argument("--out", help="output folder (default: runs/paper_effect-<scale>)")
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="log everything under one parent run (default: $MLFLOW_TRACKING_URI; none: no MLflow)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override (repeatable)")
    p.add_argument("--jobs", type=int, default=1,
                   help="(LR, seed) units run in this many processes (a many-core machine; no MLflow then)")
    args = p.parse_args(argv)
    if args.mlflow_uri in ("", "none"):
        args.mlflow_uri = None
    if args.jobs < 1:
        p.error(f"--jobs={args.jobs}: must be >= 1")
    if args.jobs > 1 and args.mlflow_uri:
        p.error(f"--jobs={args.jobs} with --mlflow-uri={args.mlflow_uri!r}: MLflow logging needs --jobs 1 "
                "(pass --mlflow-uri none)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = SCALES["quick" if args.quick else "gpu" if args.gpu else "cpu"]
    spec = build_spec(args, scale)
    lrs = args.lrs or list(scale.lrs)
    seeds = args.seeds or scale.seeds
    device = args.device or ("cpu" if args.dry_run else scale.device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"device {device!r}: CUDA is not available here; --dry-run runs this scale's code path on CPU "
                  "at toy sizes", file=sys.stderr)
            return 2
    out = Path(args.out or f"runs/paper_effect-{scale.name}{'-dry' if args.dry_run else ''}")
    out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)

    log = _log
    log(f"scale {scale.name} ({scale.note}), device {device}, lrs {lrs}, seeds {seeds}, "
        f"{spec.budget.train_tokens:,} tokens per run, batch {spec.data.batch_size} "
        f"(micro {spec.micro_batch_size()} x {spec.grad_accum_steps()}), probe window {spec.probe_steps()} steps")
    tracker = Tracker(args.mlflow_uri, spec.tracking.experiment or "paper-effect",
                      f"paper-effect-{scale.name}-{started:%Y%m%d-%H%M%S}",
                      {**spec.flat(), "bench.scale": scale.name, "bench.lrs": lrs, "bench.seeds": seeds,
                       "bench.device": device, "bench.dry_run": args.dry_run, "bench.jobs": args.jobs})
    failed = True
    summary: dict = {"headline": {}, "target_val_loss": None}
    try:
        t0 = time.perf_counter()
        runs = run_all(spec, lrs, seeds, device, tracker, log, args.jobs)
        summary = summarize(runs)
        table = table_markdown(summary)
        result = {"scale": scale.name, "dry_run": args.dry_run, "device": device, "lrs": lrs, "seeds": seeds,
                  "started_utc": started.isoformat(timespec="seconds"), "total_wall_s": time.perf_counter() - t0,
                  "spec": spec.to_dict(), "defaults": {d.arm: {"source": d.source, "settings": d.settings,
                                                               "mapping": d.mapping} for d in DEFAULTS.values()},
                  **summary, "runs": [run_record(r) for r in runs]}
        (out / "table.md").write_text(table + "\n" + sources_markdown())
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
        plot_curves(runs, out / "curves.png")
        failed = False
    finally:
        tracker.finish(out, summary, failed)
    print(table)
    print(sources_markdown())
    print(f"wrote {out}/table.md, results.json, curves.png; total {result['total_wall_s']:.0f}s")
    print(json.dumps(summary["headline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
