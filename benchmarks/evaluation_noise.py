"""Is the evaluation large enough for the fluctuation rule on this data? `plan` assumed, probes measure.

    python benchmarks/evaluation_noise.py [--data builtin:shakespeare --data data/heldout ...]
                                          [--probes control 8:40 8:149] [--set key=value ...]

For each data set, the `shakespeare-demo` preset's probes run in this process exactly as the tuner
runs them (`slwtune.tuning.local.run_probe`: its window, its monitor), and each evaluation's standard
error (`val/loss_se`) is read. Printed per data set: the standard error at every evaluation of each
probe, the per-sequence spread it implies, and what `slwtune.tuning.evidence.measured_evaluation`
makes of the probes' last evaluations (what a job's report says); last, one JSON line.

The held-out corpus: `python benchmarks/heldout_corpus.py --out data/heldout`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from common import add_set_option
from slwtune import metrics as M
from slwtune.spec import load_spec
from slwtune.tuning.evidence import eval_noise, evaluation_note, measured_evaluation
from slwtune.tuning.local import run_probe
from slwtune.tuning.strategies import Probe

PRESET = "shakespeare-demo"


def parse_probe(text: str, full_length: int) -> Probe:
    """`control` or `START:T`."""
    if text == "control":
        return Probe.control(full_length)
    start, duration = text.split(":")
    return Probe(int(start), int(duration))


def measure(data: str, probes: list[str], overrides: list[str]) -> dict:
    spec = load_spec(PRESET, [f"data.path={data}", *overrides])
    sequences = eval_noise(spec)["eval_sequences"]
    results, per_probe = [], {}
    for text in probes:
        t0, reports = time.time(), []
        result = run_probe(spec, parse_probe(text, spec.slw.full_length), round_index=1, reports=reports)
        ses = [(int(r[M.STEP]), r[M.VAL_LOSS_SE]) for r in reports if r.get(M.VAL_LOSS_SE) is not None]
        per_probe[text] = {"verdict": result.verdict, "last_se": result.val_loss_se,
                           "sequence_sd": [round(se * math.sqrt(sequences), 3) for _, se in ses],
                           "steps": [s for s, _ in ses], "wall_s": round(time.time() - t0, 1)}
        print(f"{data} {text:>8}: {result.verdict:<11} per-sequence spread by evaluation "
              f"{per_probe[text]['sequence_sd']} (steps {per_probe[text]['steps']})", flush=True)
        results.append(result)
    measured = measured_evaluation(spec, results)
    print(f"{data}: {json.dumps(measured)}")
    print(f"{data}: note: {evaluation_note(measured) or '(none: the evaluation is large enough)'}", flush=True)
    return {"data": data, "probes": per_probe, "evaluation": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", help="a prepared data folder or builtin:shakespeare (repeatable)")
    parser.add_argument("--probes", nargs="+", default=["control", "8:40", "8:149"])
    add_set_option(parser)
    args = parser.parse_args(argv)
    rows = [measure(data, args.probes, args.set) for data in (args.data or ["builtin:shakespeare"])]
    print(json.dumps({r["data"]: {k: r["evaluation"][k] for k in ("se_measured", "se_planned", "se_target",
                                                                    "sequence_sd", "large_enough",
                                                                    "eval_batches_needed")}
                      for r in rows if r["evaluation"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
