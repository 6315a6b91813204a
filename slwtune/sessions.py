"""Where a training loop runs: a `Session` gives it its rank, world size and device, takes its
reports and checkpoints, and says where to resume from.

`RaySession` is one Ray Train worker (`slwtune.train.train_worker` runs a loop in it);
`LocalSession` runs in-process, single worker, for benchmarks and unit tests. This module imports
neither loop: the loops import it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import torch

from slwtune import metrics as M

__all__ = ["Session", "LocalSession", "RaySession"]


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
