"""One training run of a job spec on Ray Train (`slwtune train`)."""

from __future__ import annotations

import uuid
from typing import Any

from slwtune import metrics as M
from slwtune import tracking
from slwtune.raycluster import default_storage, ensure_ray
from slwtune.spec import JobSpec
from slwtune.sessions import RaySession
from slwtune.train_loop import RunOptions, train_loop
from slwtune.tuning.results import finite_or_none
from slwtune.user_loop import run_user_function


def train_worker(config: dict) -> None:
    """Ray Train `train_loop_per_worker`: config = {"spec": JobSpec, "options": dict}.

    Probes, the full run and `slwtune train` all come here, so this one dispatch is all it takes
    for a user's training function (`model.entrypoint`) to run wherever slwtune's loop does.
    """
    spec: JobSpec = config["spec"]  # validated once where it entered; Ray pickles the object itself
    options = RunOptions(**config.get("options", {}))
    if spec.model.entrypoint:
        run_user_function(spec, options, RaySession())
    else:
        train_loop(spec, options, RaySession())


def scaling_config(spec: JobSpec):
    """Workers, GPUs and CPUs of one run, from the spec's resources."""
    from ray.train import ScalingConfig

    r = spec.resources
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    return ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=per_worker)


def make_trainer(spec: JobSpec, options: RunOptions, name: str, storage: str, callbacks: list | None = None):
    """A Train V2 `TorchTrainer` running `train_worker` with this spec and options."""
    from dataclasses import asdict

    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    # A dead worker restarts the run from its last checkpoint (the loop restores step, tokens, RNG);
    # the same name and storage also resume a run whose driver died (`slwtune tune --resume`).
    return TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec, "options": asdict(options)},
        scaling_config=scaling_config(spec),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=callbacks or [],
                             failure_config=FailureConfig(max_failures=spec.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=spec.run.keep_checkpoints)),
    )


def checkpoint_location(checkpoint) -> str | None:
    """Where a Ray checkpoint lives, with its filesystem's scheme when it is not local."""
    if checkpoint is None:
        return None
    scheme = getattr(getattr(checkpoint, "filesystem", None), "type_name", "local")
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def summarize(result) -> dict[str, Any]:
    """What a finished Train run did (`run_summary` of its last report, error and checkpoint)."""
    return run_summary(dict(result.metrics or {}), str(result.error) if result.error else None,
                       checkpoint_location(result.checkpoint))


def run_summary(metrics: dict, error: str | None, checkpoint: str | None, reason: str | None = None) -> dict[str, Any]:
    """A run's summary: verdict and reason, steps, tokens, val ppl, checkpoint, error.

    A run that raised is `failed` even when its last report said stable: it did not finish.
    """
    return {
        "verdict": M.FAILED if error else metrics.get(M.VERDICT, M.STABLE),
        "reason": reason if reason is not None else ((error or "")[-500:] if error else metrics.get(M.REASON, "")),
        "steps": metrics.get(M.STEP),
        "tokens": metrics.get(M.TRAIN_TOKENS),
        "final_val_ppl": finite_or_none(metrics.get(M.VAL_PPL)),
        "best_val_ppl": finite_or_none(metrics.get(M.BEST_VAL_PPL)),
        "max_loss_ratio": finite_or_none(metrics.get(M.MAX_LOSS_RATIO)),
        "checkpoint": checkpoint,
        "error": error,
        "mlflow_unsent": int(metrics.get(M.MLFLOW_UNSENT) or 0),
    }


def fit_and_summarize(trainer) -> dict[str, Any]:
    """Fit a trainer; a crashed run becomes verdict `failed` with its error, never an exception."""
    try:
        return summarize(trainer.fit())
    except Exception as exc:  # Train V2 raises TrainingFailedError when a worker or the controller fails
        # Ray puts the worker's traceback first and the actual error last: keep the end.
        message = f"{type(exc).__name__}: ...{str(exc)[-500:]}"
        return run_summary({}, message, None, reason=message)


def train(spec: JobSpec, *, address: str | None = None, storage: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run the spec's full training on Ray Train; logs to MLflow when a tracking URI is set."""
    ensure_ray(address)
    uri = tracking.tracking_uri(spec)
    name = f"{spec.name}-train-{uuid.uuid4().hex[:8]}"
    run_id = None
    if uri:
        run_id = tracking.create_run(uri, tracking.experiment_name(spec), name,
                                     tags={M.TAG_KIND: M.KIND_TRAIN, **tracking.knob_tags(spec)},
                                     params=tracking.run_params(spec))
        print(tracking.run_ui_hint(uri, tracking.ensure_experiment(uri, tracking.experiment_name(spec)), run_id),
              flush=True)
    options = RunOptions(mlflow_uri=uri, mlflow_run_id=run_id, progress=progress)
    summary = fit_and_summarize(make_trainer(spec, options, name, storage or default_storage()))
    if uri:
        tracking.set_tags(uri, run_id, {M.TAG_VERDICT: summary["verdict"], M.TAG_REASON: summary["reason"] or "-"})
        tracking.end_run(uri, run_id, tracking.training_run_status(summary["verdict"]))
    summary["mlflow_run_id"] = run_id
    return summary
