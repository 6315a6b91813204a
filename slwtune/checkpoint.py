"""Checkpoints of the training loop: model, optimizer, the loop's counters and every RNG.

Exact resume (slw-spec section 7): a run restarted from a checkpoint continues the
schedule at the same step and token count, with the same data order and random state,
so its losses match the uninterrupted run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["CHECKPOINT_FILE", "TrainState", "seed_everything", "save_checkpoint", "load_checkpoint",
           "local_checkpoint_dir"]

CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainState:
    """Everything beyond model/optimizer that exact resume needs."""

    step: int = 0
    tokens: int = 0
    warmup_tokens: int | None = None  # tokens when the LR warmup ended: the decay starts there
    monitor: dict = field(default_factory=dict)  # StabilityMonitor.state_dict()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, without a DDP wrapper (`.module`) or a torch.compile one (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None)
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(path: Path, model, optimizer, state: TrainState) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "state": asdict(state),
                "rng": rng_state()}, path / CHECKPOINT_FILE)


def load_checkpoint(path: str, model, optimizer) -> TrainState:
    """Restore model, optimizer and RNG from `path`; returns the loop's counters."""
    blob = torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    set_rng_state(blob["rng"])
    return TrainState(**blob["state"])


def local_checkpoint_dir(path: str | None) -> str | None:
    """A checkpoint path as a local folder: as is when local, else fetched from Ray storage."""
    if path is None or Path(path).is_dir():
        return path
    import ray.train

    return ray.train.Checkpoint(path).to_directory()
