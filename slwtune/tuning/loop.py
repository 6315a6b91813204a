"""The search loop: rounds of probes until the strategy is done. One loop for every runner.

The Ray driver (each round a Ray Tune run, journaled in job.json), `tune_locally` (probes in this
process) and `slwtune plan --simulate` (verdicts from a landscape, no training) all run
`run_search`; they differ only in the round runner they give it. This is Optuna's ask/tell loop
(`study.ask()` / `study.tell()`) at the grain of a round: the strategy proposes, the runner trains,
the loop tells the outcomes back.

- Round 1 also runs the control probe (SLW off, same window) when `control_length` is given; it is
  returned apart and never told to the strategy.
- `replay`: rounds finished before a driver restart (each a list of results, the control
  included). While the strategy proposes exactly a replayed round's probes, that round is told
  again instead of rerun; once it goes elsewhere, everything from there runs live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from slwtune.tuning.results import ProbeResult
from slwtune.tuning.strategies import Probe, Search

RoundRunner = Callable[[list[Probe], int], list[ProbeResult]]  # (probes, round index) -> their results
RoundHook = Callable[[int, list[ProbeResult], bool], None]     # (round index, results, replayed?)


@dataclass
class SearchRun:
    """What the loop gave: every SLW probe's result in order, the control's, and each round's SLW results."""

    results: list[ProbeResult] = field(default_factory=list)
    control: ProbeResult | None = None
    rounds: list[list[ProbeResult]] = field(default_factory=list)


def run_search(search: Search, run_round: RoundRunner, *, control_length: int | None = None,
               replay: Iterable[list[ProbeResult]] = (), on_round: RoundHook | None = None) -> SearchRun:
    """Rounds of `search` run by `run_round` until the strategy proposes none (see the module docstring).
    `on_round(index, batch, replayed)` sees each round's results (the control included) before they are told."""
    out, pending = SearchRun(), list(replay)
    round_index = 0
    while probes := search.next_round():
        round_index += 1
        replayed = bool(pending) and set(probes) == {r.probe for r in pending[0] if r.slw}
        if replayed:
            batch = pending.pop(0)
        else:
            pending = []  # the search went elsewhere: everything from here runs live
            if round_index == 1 and control_length is not None:
                probes = [*probes, Probe.control(control_length)]
            batch = run_round(probes, round_index)
        if on_round:
            on_round(round_index, batch, replayed)
        out.control = next((r for r in batch if not r.slw), out.control)
        slw = [r for r in batch if r.slw]
        out.results.extend(slw)
        out.rounds.append(slw)
        search.tell(r.outcome() for r in slw)
    return out
