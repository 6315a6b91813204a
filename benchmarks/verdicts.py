"""Do the probes' verdicts tell instability from noise? Measured against the truth of training on.

    python benchmarks/verdicts.py [--data PATH] [--seeds 3] [--run-steps 80] [--workers 2] [--configs NAME ...]
                                  [--set key=value ...] [--out FILE]

For each configuration (an LR, SLW on or off: CONFIGS) and seed (spec.seed + i), on the data set
`--data` (a prepared slwtune data folder or `builtin:shakespeare`, the default) with the
`shakespeare-demo` preset (a 4-layer GPT; its probe window is 3 x its 20-step LR warmup = 60 steps):

  probe         exactly as the tuner runs it: `slwtune.tuning.local.run_probe` (the spec's window,
                its `tuning.stability` monitor, `stop_when_unstable`), over a run of `--run-steps`
                full-length steps (the token budget; the LR decays over it).
  ground truth  the same configuration trained on to the end of that run: the probe's own last
                checkpoint continued (model, optimizer, data position, RNG) with a fresh monitor
                whose spike and ceiling rules are lifted, so only a non-finite loss ends it early.
                That is the run the probe would have been, had nothing stopped it.

A run *trains* when it ends finite, with its last 10 steps' mean training loss below its first
step's loss (the untrained model's, ~ln(vocab)) and not above 1.5 x the lowest 10-step mean it
reached (no persistent blow-up at the end); otherwise it *blew up*.

Prints one line per probe and, last, one JSON line: `agreement` (fraction of configurations on whose
probe verdict every seed agrees), `false_divergence` (probes judged `diverged` whose run trains),
`missed_divergence` (probes judged `stable` whose run blows up), `configs`, `seeds`, plus the
verdict counts, the wall and CPU seconds and the load average (the machine is shared: say so).
Goals (issue 20): agreement >= 0.90, false_divergence 0, missed_divergence 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from common import add_set_option, lifted, respec, spawn_pool
from slwtune import metrics as M
from slwtune.checkpoint import CHECKPOINT_FILE
from slwtune.sessions import LocalSession
from slwtune.spec import JobSpec, load_spec
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning.local import StepRecorder, run_probe
from slwtune.tuning.results import probe_spec
from slwtune.tuning.strategies import Probe

PRESET = "shakespeare-demo"
TAIL = 10             # steps whose mean loss is a run's end
BLOWUP_RATIO = 1.5    # an end above this x the lowest 10-step mean is a blow-up the run never left
# the ground truth trains on whatever its loss does: these stability rules at their loosest
TRUTH_LIFTED = ("loss_ratio_max", "spike_patience", "spike_recovery_steps", "loss_ceiling_margin")


@dataclass(frozen=True)
class Config:
    name: str
    lr: float
    start_length: int | None = None  # None: SLW off (the control)
    duration_steps: int | None = None
    why: str = ""


# The failing LR was found by measurement (docs/results.md, "Verdicts": 150-step runs at lr 0.1,
# 0.3, 1.0 of the demo model); the comfortably stable one is 10x below the demo's.
CONFIGS = (
    Config("lr0.001", 0.001, why="comfortably stable: 10x below the demo's LR"),
    Config("lr0.01", 0.01, why="the demo's LR, SLW off: spikes in its warmup and recovers (issue 20)"),
    Config("lr0.01-s8-T40", 0.01, 8, 40, why="the demo's LR, short SLW"),
    Config("lr0.01-s8-T100", 0.01, 8, 100, why="the demo's LR, SLW over most of the run"),
    Config("lr0.03", 0.03, why="3x the demo's LR, SLW off"),
    Config("lr1.0", 1.0, why="truly fails: the loss blows up and stays up"),
)


def base_spec(data: str, run_steps: int, overrides: list[str]) -> JobSpec:
    """The demo preset on `data`, its token budget = `run_steps` full-length steps."""
    spec = load_spec(PRESET, [f"data.path={data}", *overrides])
    return respec(spec, {"budget.train_tokens": run_steps * spec.data.batch_size * spec.slw.full_length})


def config_spec(spec: JobSpec, config: Config, seed: int) -> tuple[JobSpec, Probe]:
    out = respec(spec, {"seed": seed, "optim.lr": config.lr, "optim.min_lr": min(spec.optim.min_lr, config.lr / 10)})
    if config.start_length is None:
        return out, Probe.control(out.slw.full_length)
    return out, Probe(config.start_length, config.duration_steps)


def truth_spec(spec: JobSpec) -> JobSpec:
    """Train on whatever the loss does: spike and ceiling rules lifted; a non-finite loss still ends it."""
    return lifted(spec, *TRUTH_LIFTED)


def fresh_monitor_copy(checkpoint: str, into: str) -> str:
    """A copy of the probe's checkpoint whose stability state is cleared (the verdict starts over)."""
    dest = Path(into) / "continue"
    shutil.copytree(checkpoint, dest)
    blob = torch.load(dest / CHECKPOINT_FILE, weights_only=False)
    blob["state"]["monitor"] = {}
    torch.save(blob, dest / CHECKPOINT_FILE)
    return str(dest)


def outcome(losses: list[float]) -> tuple[bool, str]:
    """(trains, why) of a whole run's training losses (see the module doc)."""
    if not losses or not all(math.isfinite(x) for x in losses):
        return False, "non-finite loss"
    means = [statistics.fmean(losses[i:i + TAIL]) for i in range(0, max(1, len(losses) - TAIL + 1))]
    end, low, first = means[-1], min(means), losses[0]
    if end >= first:
        return False, f"ends at {end:.3f}, not below its first loss {first:.3f}"
    if end > BLOWUP_RATIO * low:
        return False, f"ends at {end:.3f}, {end / low:.2f}x its lowest {low:.3f}"
    return True, f"ends at {end:.3f} (first {first:.3f}, lowest {low:.3f})"


def run_one(spec: JobSpec, config: Config, seed: int, device: str) -> dict:
    cspec, probe = config_spec(spec, config, seed)
    work = tempfile.mkdtemp(prefix="slwtune-verdicts-")
    try:
        recorder, reports = StepRecorder(), []
        result = run_probe(cspec, probe, round_index=1, device=device, checkpoint_root=work, recorder=recorder,
                           reports=reports)
        losses = [r[M.TRAIN_LOSS] for r in recorder.rows]
        final_val = result.final_val_ppl
        tspec = truth_spec(probe_spec(cspec, probe))
        if result.checkpoint and result.tokens < tspec.budget.train_tokens and losses and math.isfinite(losses[-1]):
            rest: list[float] = []
            session = LocalSession(device=device)
            last = train_loop(tspec, RunOptions(init_checkpoint=fresh_monitor_copy(result.checkpoint, work),
                                                on_step=lambda row: rest.append(row[M.TRAIN_LOSS])), session)
            losses += rest
            reports += session.reports
            final_val = last.get(M.VAL_PPL)
        trains, why = outcome(losses)
        return {"config": config.name, "seed": seed, "verdict": result.verdict, "reason": result.reason,
                "probe_steps": result.steps, "spikes": result.spike_count, "spike_step": result.spike_step,
                "run_steps": len(losses), "trains": trains, "truth": why,
                "final_val_ppl": final_val if isinstance(final_val, (int, float)) else None,
                # the whole run's curves, to replay the monitor offline with other thresholds (--out)
                "losses": losses, "evals": [(r[M.STEP], r.get(M.VAL_LOSS), r.get(M.VAL_LOSS_SE)) for r in reports
                                            if M.VAL_LOSS in r]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_one_timed(job: tuple) -> dict:
    cpu0 = time.process_time()
    row = run_one(*job)
    return {**row, "cpu_s": round(time.process_time() - cpu0, 1)}


def replay(rows: list[dict], stability: dict, window: int, vocab: int) -> list[dict]:
    """The probes' verdicts again from their recorded curves, with other `tuning.stability` values:
    each run's whole (uninterrupted) curve fed to a monitor up to the window, as the probe saw it."""
    from slwtune.spec import StabilitySpec
    from slwtune.stability import StabilityMonitor

    thresholds = StabilitySpec(**stability)
    out = []
    for row in rows:
        monitor = StabilityMonitor(thresholds, window, vocab)
        evals = {step: (loss, se) for step, loss, se in row["evals"]}
        for step, loss in enumerate(row["losses"][:window], start=1):
            verdict = monitor.observe_train(step, loss)
            if verdict.status == M.DIVERGED:
                break
            if step in evals and evals[step][0] is not None:
                verdict = monitor.observe_val(step, evals[step][0], evals[step][1], last=step == window)
                if verdict.status != M.STABLE:
                    break
        out.append({**row, "verdict": monitor.verdict.status, "reason": monitor.verdict.reason,
                    "spikes": monitor.spike_count})
    return out


def summarize(rows: list[dict], configs: list[Config], seeds: int) -> dict:
    by_config = {c.name: [r for r in rows if r["config"] == c.name] for c in configs}
    agree = [len({r["verdict"] for r in rs}) == 1 for rs in by_config.values() if rs]
    return {
        "agreement": round(sum(agree) / max(1, len(agree)), 3),
        "false_divergence": sum(r["verdict"] == M.DIVERGED and r["trains"] for r in rows),
        "missed_divergence": sum(r["verdict"] == M.STABLE and not r["trains"] for r in rows),
        "configs": len(agree), "seeds": seeds,
        "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in (M.STABLE, M.FLUCTUATING, M.DIVERGED, M.FAILED)},
        "runs_blown_up": sum(not r["trains"] for r in rows),
        "per_config": {name: [r["verdict"] for r in rs] for name, rs in by_config.items()},
    }


def vocab_of(spec: JobSpec) -> int:
    from slwtune.data import DatasetMeta, resolve_dataset

    return DatasetMeta.load(resolve_dataset(spec.data.path, spec.data.tokenizer, spec.data.vocab_size)).vocab_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="builtin:shakespeare", help="prepared slwtune data folder")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--run-steps", type=int, default=80, help="the run's length in full-length steps")
    ap.add_argument("--configs", nargs="*", default=None, help=f"subset of {[c.name for c in CONFIGS]}")
    add_set_option(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (processes; one torch thread each)")
    ap.add_argument("--out", default=None, help="also write the rows and the summary here (JSON)")
    ap.add_argument("--replay", default=None, metavar="FILE",
                    help="no training: judge the curves an earlier --out recorded again, with --stability values")
    ap.add_argument("--stability", action="append", default=[], metavar="KEY=VALUE",
                    help="with --replay: a tuning.stability value (e.g. spike_patience=3)")
    args = ap.parse_args(argv)
    if args.replay:
        saved = json.loads(Path(args.replay).read_text())
        values = {k: (None if v == "null" else float(v) if "." in v else int(v))
                  for k, v in (item.split("=", 1) for item in args.stability)}
        rows = replay(saved["rows"], values, saved["summary"]["probe_steps"], saved["summary"].get("vocab_size", 2048))
        names = list(dict.fromkeys(r["config"] for r in rows))
        summary = summarize(rows, [c for c in CONFIGS if c.name in names], saved["summary"]["seeds"])
        print(json.dumps({**summary, "replayed": args.replay, "stability": values}), flush=True)
        return 0
    configs = [c for c in CONFIGS if args.configs is None or c.name in args.configs]
    if not configs or args.seeds < 1:
        ap.error(f"--configs must name some of {[c.name for c in CONFIGS]} and --seeds be >= 1")
    spec = base_spec(args.data, args.run_steps, args.set)
    load0, t0 = os.getloadavg()[0], time.time()
    # seed-major: every configuration's first seed comes first, so a run cut short still spans them all
    jobs = [(spec, config, spec.seed + i, args.device) for i in range(args.seeds) for config in configs]
    rows = []
    # each run trains on one torch thread (resources.cpus_per_worker = 1): one process per core
    with spawn_pool(args.workers) as pool:
        for future in as_completed([pool.submit(run_one_timed, job) for job in jobs]):
            row = future.result()
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "evals")}), flush=True)
            if args.out:  # as they come: a run cut short keeps what it measured (--replay reads it)
                with open(f"{args.out}.rows.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
    summary = summarize(rows, configs, args.seeds)
    summary.update(data=args.data, vocab_size=vocab_of(spec), run_steps=args.run_steps, probe_steps=spec.probe_steps(),
                   wall_s=round(time.time() - t0), cpu_s=round(sum(r["cpu_s"] for r in rows)), workers=args.workers,
                   load_avg_start=round(load0, 1), load_avg_end=round(os.getloadavg()[0], 1))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
