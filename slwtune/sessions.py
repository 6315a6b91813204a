"""Where a training loop runs: a `Session` gives it its rank, world size and device, takes its
reports and checkpoints, and says where to resume from.

`RaySession` is one Ray Train worker (`train_worker` is the `train_loop_per_worker`: slwtune's
loop, or the spec's own training function when `model.entrypoint` is set);
`LocalSession` runs in-process, single worker, for benchmarks and unit tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import torch

from slwtune import metrics as M
from slwtune.spec import JobSpec
from slwtune.train_loop import RunOptions, train_loop
from slwtune.user_loop import run_user_function

__all__ = ["Session", "LocalSession", "RaySession", "train_worker"]


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Every rank calls this equally often; `checkpoint_dir` (rank 0 only) may be removed after."""

    def checkpoint_dir(self) -> str | None:
        """A local folder to resume from (a restarted run), or None."""


class LocalSession:
    """In-process, single worker: keeps every report, and copies checkpoints under `checkpoint_root`."""

    def __init__(self, checkpoint_root: str | None = None, device: str = "cpu", resume_dir: str | None = None):
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)
        self.reports: list[dict] = []
        self.checkpoints: list[str] = []
        self._root = checkpoint_root
        self._resume = resume_dir

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir and self._root:
            dest = Path(self._root) / f"step_{metrics[M.STEP]:08d}"
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(str(dest))

    def checkpoint_dir(self) -> str | None:
        return self._resume


class RaySession:
    """A Ray Train worker: rank, device and reports from `ray.train`."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)  # a barrier: every rank calls it equally often

    def checkpoint_dir(self) -> str | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.to_directory() if ckpt is not None else None


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
