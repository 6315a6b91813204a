"""Connecting to Ray: the configured cluster, or a local one started for this process."""

from __future__ import annotations

import os
from pathlib import Path


def default_storage() -> str:
    """Where Ray Train/Tune keep experiment state and checkpoints."""
    return os.environ.get("SLWTUNE_STORAGE", str(Path.home() / ".slwtune" / "ray_results"))


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect once: to `address` / $RAY_ADDRESS when given, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Train V2 + Tune: workers must be able to import slwtune; a local cluster shares this env.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
