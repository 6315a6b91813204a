"""paper_effect's MLflow logging: one parent run per benchmark, one child per full run, per probe and
per race arm; a no-op without a tracking URI (slwtune.tracking, and so MLflow, imported only with one)."""

from __future__ import annotations

from pathlib import Path

from paper_arms import TUNED
from slwtune import metrics as M
from slwtune.spec import JobSpec


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
        from slwtune.tuning.results import probe_spec

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
            tracking.end_run(self.uri, self.parent, M.RUN_FAILED)
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
        tracking.end_run(self.uri, self.parent, M.RUN_FAILED if failed else M.RUN_FINISHED)


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

            tracking.end_run(self.tracker.uri, self.run_id, M.RUN_FAILED if exc_type else M.RUN_FINISHED)
