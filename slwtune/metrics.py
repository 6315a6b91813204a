"""Metric names: the one place they are spelled, so every MLflow run lines up."""

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
TOKENS_PER_S = "perf/tokens_per_s"
MFU = "perf/mfu"

ALL = (TRAIN_LOSS, TRAIN_LOSS_RATIO, TRAIN_SEQLEN, TRAIN_TOKENS, TRAIN_LR, TRAIN_GRAD_NORM,
       ADAM_VAR_MAX, ADAM_VAR_L1, VAL_LOSS, VAL_PPL, TOKENS_PER_S, MFU)

# Keys of a report (to Ray Train / Tune) beside the metrics above.
STEP = "step"
VERDICT = "verdict"          # stable | fluctuating | diverged
VERDICT_CODE = "verdict_code"  # 0 stable, 1 fluctuating, 2 diverged: numeric for Tune
REASON = "reason"
DONE = "done"
MAX_LOSS_RATIO = "max_loss_ratio"
BEST_VAL_PPL = "best_val_ppl"
WALL_S = "wall_s"

VERDICT_CODES = {"stable": 0, "fluctuating": 1, "diverged": 2}

# MLflow tags
TAG_VERDICT = "slwtune.verdict"
TAG_REASON = "slwtune.reason"
TAG_PHASE = "slwtune.phase"
TAG_KIND = "slwtune.kind"        # job | probe | full_run | train
TAG_JOB_ID = "slwtune.job_id"
TAG_TRIAL_ID = "slwtune.trial_id"
TAG_CHOSEN_START = "slwtune.chosen.start_length"
TAG_CHOSEN_DURATION = "slwtune.chosen.duration_steps"
TAG_PARENT = "mlflow.parentRunId"
TAG_PROGRESS = "slwtune.progress"  # job: human-readable progress of the phase
TAG_ROUND = "slwtune.round"        # probe: the search round it belongs to

# Values that cannot be NaN/Inf in reports (Tune's schedulers choke on them).
NONFINITE_STANDIN = 1e30


def finite(x: float) -> float:
    """x if finite, else a large finite stand-in: the verdict field says what happened."""
    import math

    return float(x) if math.isfinite(x) else NONFINITE_STANDIN
