"""The race's segment runners: where an arm's segment trains (see `slwtune.tuning.race` for the rule).

- `local_segment_runner`: in this process, each arm in turn (`tune_locally`, the benchmarks, tests);
- `run_race_round`: on Ray, each arm's segment a Ray Train run started by the driver.
"""

from __future__ import annotations

from typing import Callable

from slwtune import metrics as M
from slwtune.spec import JobSpec
from slwtune.tuning.race import Arm, SegmentRunner, update_arm


def local_segment_runner(spec: JobSpec, workdir: str, *, device: str = "cpu",
                         options: Callable[[Arm], dict] | None = None,
                         on_reports: Callable[[Arm, list[dict]], None] | None = None) -> SegmentRunner:
    """Segments in this process: each arm in turn (one slot), `train_loop` from its last checkpoint.
    `options(arm)` adds RunOptions fields (MLflow run, on_step); `on_reports` sees each segment's reports."""
    import time

    from slwtune.sessions import LocalSession
    from slwtune.train_loop import RunOptions, train_loop

    def run(arms: list[Arm], until: int, index: int) -> None:
        for arm in arms:
            if arm.failed:
                continue
            session = LocalSession(checkpoint_root=f"{workdir}/race-{arm.name}/seg{index}", device=device)
            extra = dict(options(arm)) if options else {}
            t0, error = time.perf_counter(), None
            try:
                train_loop(arm.spec(spec), RunOptions(init_checkpoint=arm.checkpoint, max_tokens=until, **extra),
                           session)
            except Exception as exc:  # noqa: BLE001 - an arm that crashes loses, like a crashed trial
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            ckpt = session.checkpoints[-1] if session.checkpoints else None
            update_arm(arm, session.reports, ckpt, time.perf_counter() - t0, error)
            if on_reports:
                on_reports(arm, session.reports)

    return run


# ---- on Ray: each arm's segment a Ray Train run started by the driver ---------------------------


def run_race_round(spec: JobSpec, arms: list[Arm], until: int, index: int, *, job_id: str, storage: str,
                   mlflow_uri: str | None, spill_dir: str | None = None, trace_root: str | None = None) -> None:
    """One segment of every live arm, each a Ray Train run (`make_trainer`, as the full run) from the
    arm's last checkpoint, one after the other; folds the results into `arms`.

    Why not a Ray Tune round like the probes: measured on the shared 2-core machine, Train V2 runs
    inside short Tune trials left their placement groups reserved after the trial ended (3.01 of 4
    CPUs after 4 segments; the 5th segment waited over 10 minutes for a worker). Runs owned by the
    driver release them when they finish, as the full run does. Every report of the segment is read
    back from the run's trace (`RunOptions.trace_dir`, rank 0, under `trace_root`: the job folder).
    """
    import json
    import time
    from pathlib import Path

    from slwtune.storage import job_prefix
    from slwtune.train import fit_and_summarize, make_trainer
    from slwtune.train_loop import RunOptions

    prefix = job_prefix(spec.name, job_id)
    for arm in [a for a in arms if not a.failed]:
        stamp = int(time.time())
        trace = Path(trace_root or spill_dir or ".") / "race" / f"{arm.name}-seg{index}-{stamp}"
        options = RunOptions(init_checkpoint=arm.checkpoint, max_tokens=until, mlflow_uri=mlflow_uri,
                             mlflow_run_id=arm.mlflow_run_id, spill_dir=spill_dir, trace_dir=str(trace))
        start = time.time()
        summary = fit_and_summarize(make_trainer(arm.spec(spec), options,
                                                 f"{prefix}race-{arm.name}-seg{index}-{stamp}", storage))
        rank0 = trace / "rank0.jsonl"
        reports = [json.loads(line) for line in rank0.read_text().splitlines()] if rank0.is_file() else []
        error = summary["reason"] if summary["verdict"] == M.FAILED else None
        update_arm(arm, reports, summary["checkpoint"], time.time() - start, error)
