"""Connecting to Ray: the configured cluster, or a local one started for this process."""

from __future__ import annotations

import math
import os
import sys

from slwtune import settings


def default_storage() -> str:
    """Where Ray Train/Tune keep experiment state and checkpoints."""
    return settings.storage()


def local_cpus_for(spec) -> int:
    """Logical CPUs a local Ray needs so `max_concurrent_trials` probes fit at once.

    Each probe holds its Train workers' CPUs plus a sliver for the trial driver; CPU
    training threads are capped per worker, so over-subscribing logical CPUs is safe.
    """
    per_trial = spec.resources.num_workers * spec.resources.cpus_per_worker
    needed = math.ceil(spec.tuning.max_concurrent_trials * (per_trial + 0.01)) + 1
    return max(os.cpu_count() or 1, needed)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect once: to `address` / $RAY_ADDRESS when given, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    settings.quiet_tokenizers()  # before Ray forks workers that inherit this environment
    # Train V2 + Tune: workers must be able to import slwtune; a local cluster shares this env.
    address = address or settings.ray_address()
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           log_to_driver=True)
        if context.dashboard_url:
            print(dashboard_sign_in_hint(context.dashboard_url, settings.ray_auth_mode()), file=sys.stderr)


def dashboard_sign_in_hint(dashboard_url: str, auth_mode: str | None) -> str:
    """One line telling the person at the terminal how to open a local Ray's dashboard.

    A new local Ray turns token auth on (RAY_AUTH_MODE=token) and takes its token from
    RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, creating the last when none
    exists: `ray get-auth-token` reads the same places, so the token itself is never printed.
    """
    url = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
    if (auth_mode or "").lower() != "token":
        return f"slwtune: local Ray dashboard {url} (token auth is off: RAY_AUTH_MODE={auth_mode})"
    return f"slwtune: local Ray dashboard {url} (token auth on: sign in with the token `ray get-auth-token` prints)"
