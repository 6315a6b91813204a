"""The project's vocabulary: metric names, report keys, verdicts, job phases and outcomes,
CLI exit codes, MLflow tag names and run statuses. The one place each is spelled, so every MLflow run,
report.json, the CLI and the service line up. Import as `from slwtune import metrics as M`."""

import math

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_RATIO = "train/loss_ratio"
TRAIN_SEQLEN = "train/seqlen"
TRAIN_TOKENS = "train/tokens"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
ADAM_VAR_MAX = "optim/adam_var_max"
ADAM_VAR_L1 = "optim/adam_var_l1"
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
VAL_LOSS_SE = "val/loss_se"  # standard error of val/loss over its evaluation batches (the eval's own noise)
TOKENS_PER_S = "perf/tokens_per_s"
MFU = "perf/mfu"

ALL = (TRAIN_LOSS, TRAIN_LOSS_RATIO, TRAIN_SEQLEN, TRAIN_TOKENS, TRAIN_LR, TRAIN_GRAD_NORM,
       ADAM_VAR_MAX, ADAM_VAR_L1, VAL_LOSS, VAL_PPL, VAL_LOSS_SE, TOKENS_PER_S, MFU)

# Keys of a report (to Ray Train / Tune) beside the metrics above.
STEP = "step"
VERDICT = "verdict"          # stable | fluctuating | diverged
VERDICT_CODE = "verdict_code"  # 0 stable, 1 fluctuating, 2 diverged: numeric for Tune
REASON = "reason"
DONE = "done"
EARLY = "early"              # the verdict came in the first evaluations of the window
MAX_LOSS_RATIO = "max_loss_ratio"
SPIKE_COUNT = "spike_count"          # loss spikes seen (recovered ones included: they do not end a run)
SPIKE_MAX_RATIO = "spike_max_ratio"  # the largest spike's loss ratio
SPIKE_STEP = "spike_step"            # the step of the largest spike (0: none)
BEST_VAL_PPL = "best_val_ppl"
WALL_S = "wall_s"
MLFLOW_UNSENT = "mlflow_unsent"  # metrics MLflow was down for until the end (kept in the job folder)

# Verdicts of a run (probe, full run or plain train). `failed` = the run crashed: not an SLW signal.
STABLE, FLUCTUATING, DIVERGED, FAILED = "stable", "fluctuating", "diverged", "failed"
VERDICTS = (STABLE, FLUCTUATING, DIVERGED, FAILED)
VERDICT_CODES = {STABLE: 0, FLUCTUATING: 1, DIVERGED: 2}

# Outcome of the selection (the parent run's verdict tag)
CHOSEN, NONE_STABLE = "chosen", "none_stable"

# Phases of a job's driver (the parent run's phase tag)
PHASE_PROBING, PHASE_SELECTING, PHASE_FULL_RUN, PHASE_DONE = "probing", "selecting", "full_run", "done"
PHASES = (PHASE_PROBING, PHASE_SELECTING, PHASE_FULL_RUN, PHASE_DONE)

# Kinds of MLflow run (the kind tag)
KIND_JOB, KIND_PROBE, KIND_FULL_RUN, KIND_TRAIN = "job", "probe", "full_run", "train"
KIND_CONTROL = "control"  # the baseline probe: SLW off over the probe window
KIND_RACE = "race"        # one arm of the race between the best SLW candidate and the control

# Outcomes of a job (report.json `outcome`, the parent run's outcome tag)
OUTCOME_DONE = "done"                      # knobs chosen; the full run (if any) did not diverge or crash
OUTCOME_RUN_FAILED = "full_run_failed"     # the full run diverged or crashed
OUTCOME_NONE_STABLE = "none_stable"        # no probe was stable: the report says what to change
OUTCOME_PROBES_CRASHED = "probes_crashed"  # every probe crashed: not an SLW signal, no advice
OUTCOMES = (OUTCOME_DONE, OUTCOME_RUN_FAILED, OUTCOME_NONE_STABLE, OUTCOME_PROBES_CRASHED)

# Exit codes of `slwtune tune|train` (and of the Ray job's driver): one contract.
EXIT_OK = 0             # done: knobs chosen and the full run (if any) finished stable
EXIT_RUN_FAILED = 1     # the full run (or `slwtune train`) diverged or crashed
EXIT_NONE_STABLE = 2    # no stable configuration (the report says what to change)
EXIT_INFRA = 3          # infrastructure failure: every probe crashed, a backend is unreachable
EXIT_INVALID = 4        # invalid input: the spec, a flag, the data path or the entrypoint (nothing ran)
EXIT_INTERRUPTED = 130
EXIT_FOR_OUTCOME = {OUTCOME_DONE: EXIT_OK, OUTCOME_RUN_FAILED: EXIT_RUN_FAILED,
                    OUTCOME_NONE_STABLE: EXIT_NONE_STABLE, OUTCOME_PROBES_CRASHED: EXIT_INFRA}
# Verdicts that make a training run a failure (a full run that only fluctuated still trained)
RUN_FAILED_VERDICTS = (DIVERGED, FAILED)

# MLflow tags
TAG_VERDICT = "slwtune.verdict"
TAG_REASON = "slwtune.reason"
NO_REASON = "-"                  # the reason tag's value when there is none to give
TAG_PHASE = "slwtune.phase"
TAG_KIND = "slwtune.kind"        # job | probe | full_run | train
TAG_JOB_ID = "slwtune.job_id"
TAG_TRIAL_ID = "slwtune.trial_id"
TAG_CHOSEN_START = "slwtune.chosen.start_length"
TAG_CHOSEN_DURATION = "slwtune.chosen.duration_steps"
TAG_PARENT = "mlflow.parentRunId"
TAG_PROGRESS = "slwtune.progress"  # job: human-readable progress of the phase
TAG_ROUND = "slwtune.round"        # probe: the search round it belongs to
TAG_STRATEGY = "slwtune.strategy"  # job: paper | grid | optuna
TAG_OUTCOME = "slwtune.outcome"    # job: one of the OUTCOME_* values
TAG_CONTINUED_FROM = "slwtune.continued_from"  # full run: the probe checkpoint it continued from
TAG_RESUMED_FROM_STEP = "slwtune.resumed_from_step"  # probe: its driver was lost; it went on from this step's checkpoint
TAG_START_LENGTH = "slw.start_length"      # probe: its knobs, as tags for the runs table
TAG_DURATION_STEPS = "slw.duration_steps"
TAG_SLW_ENABLED = "slw.enabled"            # every training run: false for the control and the baseline
TAG_RACE_ARM = "slwtune.race_arm"          # race: slw | baseline
TAG_DECISION = "slwtune.decision"          # job: the race's winner (slw | baseline), or - without a race

# MLflow's run statuses, as the library writes them (the service reads them through service.states)
RUN_RUNNING, RUN_FINISHED, RUN_FAILED, RUN_KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"

# Keys of a job's report (report.json; `slwtune.tuning.report.build_report` writes them, the driver adds
# the last three when the job ends)
REPORT_JOB_ID = "job_id"
REPORT_NAME = "name"
REPORT_OUTCOME = "outcome"            # one of the OUTCOME_* values
REPORT_ERROR = "error"                # why the job failed, or None
REPORT_STRATEGY = "strategy"
REPORT_CHOSEN = "chosen"              # {start_length, duration_steps}, or None
REPORT_TRIALS = "trials"
REPORT_CONTROL = "control"            # the control probe (SLW off)
REPORT_COMPARISON = "comparison"      # every stable SLW probe against the control at equal tokens
REPORT_BASELINE_WINS = "baseline_wins"
REPORT_MESSAGE = "message"
REPORT_DECISION = "decision"          # the race between SLW and the control
REPORT_TUNING_TOKENS = "tuning_tokens"
REPORT_CONTROL_TOKENS = "control_tokens"
REPORT_RACE_TOKENS = "race_tokens"
REPORT_FULL_RUN_TOKENS = "full_run_tokens"
REPORT_TUNING_FRACTION = "tuning_fraction"
REPORT_REUSED_PROBE_TOKENS = "reused_probe_tokens"
REPORT_NET_TUNING_FRACTION = "net_tuning_fraction"
REPORT_PROBE_STEPS = "probe_steps"
REPORT_NOTES = "notes"
REPORT_EVALUATION = "evaluation"      # the evaluation's noise as the probes measured it, against the plan's
REPORT_VIOLATIONS = "violations"
REPORT_ADVICE = "advice"              # what to change when no probe was stable
REPORT_PARENT_RUN_ID = "mlflow_parent_run_id"
REPORT_FULL_RUN = "full_run"
REPORT_RESTARTS = "restarts"          # the driver's own restarts (--resume)
REPORT_WARNINGS = "warnings"          # what went wrong around the job without failing it
REPORT_DISK_BYTES = "disk_bytes"      # the job folder plus its checkpoints

# Values that cannot be NaN/Inf in reports (Tune's schedulers choke on them).
NONFINITE_STANDIN = 1e30


# exp() of a loss above this overflows a float; such a perplexity is reported as inf.
_MAX_LOG_PPL = 700.0


def finite(x: float) -> float:
    """x if finite, else a large finite stand-in: the verdict field says what happened."""
    return float(x) if math.isfinite(x) else NONFINITE_STANDIN


def perplexity(loss: float) -> float:
    """exp(loss), the one definition: NaN stays NaN, a huge loss gives inf (never an overflow)."""
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < _MAX_LOG_PPL else math.inf
