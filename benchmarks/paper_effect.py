"""What tuning buys, measured: tuned SLW against the baseline and against the SLW defaults other tools ship.

    python benchmarks/paper_effect.py [SPEC] [--lrs 0.01 0.1] [--batch 64] [--seeds 3]
                                      [--quick | --gpu] [--dry-run] [--out DIR] [--mlflow-uri URI]
                                      [--set key=value ...]

SPEC is a job spec file or preset name; without it, the scale's built-in spec (see SCALES in paper_arms.py).
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
  composer   Composer's SeqLengthWarmup defaults (see DEFAULTS in paper_arms.py).
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

This file runs the arms; its parts beside it: paper_arms.py (arms, shipped defaults, scales, specs),
paper_analysis.py (curves, target, table rows, headline), paper_report.py (table, plot),
paper_tracking.py (MLflow), common.py (what the benchmarks share).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from common import add_set_option, spawn_pool
from paper_analysis import Curve, Run, run_record, summarize
from paper_arms import (BASELINE, DEFAULTS, TUNED, at_lr, build_spec, full_run_spec, knobs_label, scale_of,
                        slw_spec)
from paper_report import fmt, plot_curves, sources_markdown, table_markdown
from paper_tracking import Tracker
from slwtune import metrics as M
from slwtune.sessions import LocalSession
from slwtune.spec import JobSpec
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning import race as R
from slwtune.tuning.local import LocalTuning, StepRecorder, tune_locally
from slwtune.tuning.results import probe_spec
from slwtune.tuning.strategies import Probe


# ---- the arms' runs ---------------------------------------------------------------------------------


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
        label = knobs_label(knobs.start_length, knobs.duration_steps)
    verdicts = ", ".join(f"{knobs_label(r.start_length, r.duration_steps) if r.slw else 'control'} {r.verdict}"
                         for r in tuning.probes)
    decision = tuning.decision or {}
    race = (f"; race: {decision.get('winner')} ({decision.get('rule')}, {decision.get('race_tokens', 0):,} tokens)"
            if decision.get("raced") else "")
    cost = dict(tuning_tokens=tuning.tokens, tuning_wall_s=tuning.wall_s, tuning_cpu_s=tuning.total_cpu_s,
                tuning_note=f"seed {seed}: {verdicts}{race} -> {label}")
    if not go:
        return Run(TUNED, lr, seed, label, Curve(), None, M.NONE_STABLE, 0, 0.0, 0.0, **cost)
    run_spec = probe_spec(spec, knobs or Probe.control(spec.slw.full_length))
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
    base = at_lr(spec, lr, seed)
    arms = [(BASELINE, lambda: run_plain(BASELINE, base.without_slw(), lr, seed, "off", device, tracker))]
    arms.append((TUNED, lambda: run_tuned(base, lr, seed, device, tracker, log)))
    for arm, default in DEFAULTS.items():
        start, duration = default.knobs(base)
        arms.append((arm, lambda arm=arm, s=start, t=duration: run_plain(
            arm, slw_spec(base, s, t), lr, seed, knobs_label(s, t), device, tracker)))
    runs = []
    for arm, go in arms:
        log(f"lr {lr:g} seed {seed}: {arm} ...")
        run = go()
        log(f"lr {lr:g} seed {seed}: {arm} [{run.knobs}] final val loss "
            f"{fmt(run.final_val_loss, '.4f')} ({run.verdict}), {run.wall_s + run.tuning_wall_s:.0f}s")
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
    with spawn_pool(jobs) as pool:
        futures = [pool.submit(run_seed, spec, lr, i, device, Tracker(None, "", "", {}), _log) for lr, i in units]
        return [run for f in futures for run in f.result()]


def _log(msg: str) -> None:
    print(f"[paper_effect {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- main ---------------------------------------------------------------------------------------------


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
    add_set_option(p)
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
    scale = scale_of(args)
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
