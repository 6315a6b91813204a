"""How much evidence one evaluation gives: planned before the run, measured by it.

A fluctuation verdict counts a rise of the validation loss only above both the tolerance
(ln(1 + ppl_rise_tolerance)) and `val_se_sigmas` combined standard errors of two evaluations, and
the race decides within z combined standard errors. Both are only as sharp as one evaluation's
standard error, which is the per-sequence spread of the loss over sqrt(evaluated sequences).

- `eval_noise(spec)`: `plan`'s estimate, from a per-sequence spread measured on Shakespeare with the
  demo GPT in its probe window (`SEQUENCE_LOSS_SD`, docs/results.md "Verdicts"). The evaluation is
  large enough when its standard error is at most half the tolerance.
- `measured_evaluation(spec, results)`: the same check from what the probes measured (their last
  evaluation's `val/loss_se`), after the search. A corpus whose sequences vary more than the plan
  assumed makes the planned evaluation too small (at the demo's 5 x 64 sequences: Shakespeare 0.51,
  the held-out King James Bible 1.18 against 0.40); `evaluation_note` says so in the report, with
  the size this corpus needs.

The race already decides on each arm's own measured standard error; this checks the plan's
assumption against the probes' measurements in the same way.
"""

from __future__ import annotations

import math
import statistics

from slwtune.spec import JobSpec

# nats: batch SD x sqrt(batch size) of the demo GPT's evaluation in its probe window, measured at 4 x 16
# sequences. At the demo's 5 x 64 the same model measures 0.51 (windows of one batch are correlated:
# benchmarks/evaluation_noise.py, docs/results.md), so a job's report, not this, has the last word.
SEQUENCE_LOSS_SD = 0.40


def eval_sequences(spec: JobSpec) -> int:
    """Sequences one evaluation reads (run.eval_batches x run.eval_batch_size, default the batch size)."""
    return spec.run.eval_batches * eval_batch_size(spec)


def eval_batch_size(spec: JobSpec) -> int:
    return spec.run.eval_batch_size or spec.data.batch_size


def se_target(spec: JobSpec) -> float:
    """The standard error (nats) an evaluation should not exceed: half the fluctuation tolerance."""
    return math.log1p(spec.tuning.stability.ppl_rise_tolerance) / 2


def eval_noise(spec: JobSpec, sequence_sd: float = SEQUENCE_LOSS_SD) -> dict:
    """How noisy one evaluation is against the fluctuation tolerance, and how large it should be,
    for a per-sequence loss spread `sequence_sd` (nats).

    The evaluation is large enough when its standard error is at most half the tolerance: then the
    noise bar is within ~1.4x the tolerance at the default 2 standard errors, and a rise the size of
    a few tolerances is never noise."""
    sequences, target = eval_sequences(spec), se_target(spec)
    needed = math.ceil((sequence_sd / target) ** 2) if target > 0 else 1
    return {"eval_sequences": sequences, "eval_se_estimate": sequence_sd / math.sqrt(sequences),
            "eval_se_target": target, "eval_sequences_needed": needed, "eval_large_enough": sequences >= needed}


def measured_evaluation(spec: JobSpec, results) -> dict | None:
    """The evaluation's noise as the probes measured it (`ProbeResult.val_loss_se`, their last
    evaluation's; the control's too), against the target; None when no probe evaluated.

    `se_measured` is the median over probes; `sequence_sd` the per-sequence spread it implies;
    `eval_batches_needed` the `run.eval_batches` that would meet the target on this corpus;
    `noise_bar` the smallest rise the fluctuation rule counted at the measured noise."""
    ses = [r.val_loss_se for r in results if r is not None and r.val_loss_se is not None]
    if not ses:
        return None
    se = statistics.median(ses)
    sequences = eval_sequences(spec)
    sd = se * math.sqrt(sequences)
    noise = eval_noise(spec, sd)
    return {"probes": len(ses), "eval_sequences": sequences, "se_measured": se,
            "se_planned": SEQUENCE_LOSS_SD / math.sqrt(sequences), "se_target": noise["eval_se_target"],
            "sequence_sd": sd, "sequences_needed": noise["eval_sequences_needed"],
            "eval_batches_needed": math.ceil(noise["eval_sequences_needed"] / eval_batch_size(spec)),
            "large_enough": noise["eval_large_enough"], "noise_bar": noise_bar(spec, se)}


def noise_bar(spec: JobSpec, se: float) -> float:
    """The smallest rise (nats) between two evaluations of standard error `se` that the fluctuation
    rule counts (`stability.val_rise`, for two evaluations of equal standard error): above
    ln(1 + ppl_rise_tolerance) and above val_se_sigmas combined standard errors."""
    t = spec.tuning.stability
    return max(math.log1p(t.ppl_rise_tolerance), t.val_se_sigmas * math.sqrt(2) * se)


def evaluation_line(measured: dict) -> str:
    """One line on the measured evaluation (report.md, the note, the demo's summary): its standard error
    against the planned and the wanted one, and, when it falls short, what this data needs."""
    probes = f"{measured['probes']} probe" + "s" * (measured["probes"] != 1)
    head = (f"standard error {measured['se_measured']:.3f} nats (median of {probes}; planned "
            f"{measured['se_planned']:.3f}, wanted <= {measured['se_target']:.3f}) over "
            f"{measured['eval_sequences']:,} sequences: ")
    if measured["large_enough"]:
        return head + "large enough"
    return head + (f"too small, this corpus needs {measured['sequences_needed']:,} sequences (run.eval_batches >= "
                   f"{measured['eval_batches_needed']}, if its validation split holds that many windows); rises below "
                   f"{measured['noise_bar']:.3f} nats count as noise")


def evaluation_note(measured: dict | None) -> str | None:
    """A report note when the measured evaluation was too noisy for the fluctuation rule, else None."""
    if not measured or measured["large_enough"]:
        return None
    return ("the evaluation was noisier than planned on this data, so verdicts and the race's band are looser "
            f"than planned: {evaluation_line(measured)}")
