"""What several benchmarks share: specs derived from a spec, stop rules lifted, worker processes, `--set`.

The benchmarks are scripts (`python benchmarks/NAME.py`); Python puts their folder first on the
import path, so they import this module, and their other shared parts, by its bare name. It
imports only slwtune's spec (no torch, Ray, MLflow or Optuna): gpu_check's surface stays bare.
"""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from slwtune.spec import JobSpec, StabilitySpec, apply_overrides, parse_spec


def respec(spec: JobSpec, overrides: dict) -> JobSpec:
    """`spec` with these dotted keys set (`{"optim.lr": 0.1}`), validated again."""
    return parse_spec(apply_overrides(spec.to_dict(), overrides))


def loosest(rule: str) -> float:
    """The largest value `tuning.stability.<rule>` allows (its bound in slwtune.spec): the rule off in effect."""
    return next(m.le for m in StabilitySpec.model_fields[rule].metadata if getattr(m, "le", None) is not None)


def lifted(spec: JobSpec, *rules: str) -> JobSpec:
    """`spec` with these stability rules at their loosest: a run trains on through what they would stop,
    while a non-finite loss still ends it."""
    return respec(spec, {f"tuning.stability.{rule}": loosest(rule) for rule in rules})


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` fresh interpreters (spawned, not forked from a process that holds torch threads); each
    training run in one sets its own torch threads (`resources.cpus_per_worker`)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable): a spec override, as `slwtune --set` takes it."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override (repeatable)")
