"""Optuna's TPE over both SLW knobs, speaking the `Search` protocol through ask/tell.

Each round asks the study for up to `tuning.max_concurrent_trials` knobs, the
driver probes them on Ray Tune like any other round, and `tell` scores each
outcome with `probe_score` and tells the study. The study lives in an RDB (a
SQLite file in the job folder by default), so a restarted job loads it again.
"""

from __future__ import annotations

import math
from typing import Iterable

from slwtune.metrics import DIVERGED, FLUCTUATING, STABLE
from slwtune.tuning.strategies import Outcome, Probe, start_length_choices


def probe_score(outcome: Outcome, *, base_start: int, t_max: int) -> float:
    """The score TPE maximises (documented in the README).

    stable:      T / T_max (the paper wants the largest stable T) minus 0.05 per
                 doubling of the start length above the spec's (smaller starts save
                 more compute), plus a tie-breaker of at most 0.01 for lower val ppl;
    fluctuating: -1;   diverged: -2;   failed: -3.
    Always finite, so a sampler never sees NaN.
    """
    if outcome.verdict == STABLE:
        doublings = math.log2(max(outcome.probe.start_length, 1) / max(base_start, 1))
        tie = 0.0
        ppl = outcome.best_val_ppl
        if ppl is not None and math.isfinite(ppl) and ppl > 0:
            tie = 0.01 / (1.0 + math.log(ppl))
        return outcome.probe.duration_steps / t_max - 0.05 * max(doublings, 0.0) + tie
    return {FLUCTUATING: -1.0, DIVERGED: -2.0}.get(outcome.verdict, -3.0)


def search_space(spec) -> dict:
    """The Optuna distributions of the two knobs, from the spec's tuning section."""
    import optuna

    t = spec.tuning
    return {"start_length": optuna.distributions.CategoricalDistribution(
                start_length_choices(spec.slw.start_length, t.max_start_length)),
            "duration_steps": optuna.distributions.IntDistribution(t.duration_min, t.duration_max)}


class OptunaSearch:
    """TPE (seeded by the spec) over (start length, T); `n_trials` probes in rounds."""

    def __init__(self, spec, *, study_name: str, storage_url: str):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints its own progress
        t = spec.tuning
        self.n_trials, self.per_round = t.n_trials, t.max_concurrent_trials
        self.base_start, self.t_max = spec.slw.start_length, t.duration_max
        self.space = search_space(spec)
        self.study = optuna.create_study(
            study_name=study_name, storage=optuna.storages.RDBStorage(storage_url), direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=spec.seed), load_if_exists=True)
        self.outcomes: list[Outcome] = []
        self.scores: dict[Probe, float] = {}
        self.notes = [f"optuna study {study_name} in {storage_url}"]
        self._asked: list[tuple[Probe, object]] = []

    def next_round(self) -> list[Probe]:
        left = self.n_trials - len(self.outcomes)
        if left <= 0:
            return []
        self._asked = []
        for _ in range(min(self.per_round, left)):
            trial = self.study.ask(self.space)
            probe = Probe(int(trial.params["start_length"]), int(trial.params["duration_steps"]))
            self._asked.append((probe, trial))
        return [p for p, _ in self._asked]

    def tell(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            match = next((i for i, (p, _) in enumerate(self._asked) if p == outcome.probe), None)
            score = probe_score(outcome, base_start=self.base_start, t_max=self.t_max)
            if match is not None:
                _, trial = self._asked.pop(match)
                self.study.tell(trial, score)
            self.outcomes.append(outcome)
            self.scores[outcome.probe] = max(score, self.scores.get(outcome.probe, -math.inf))

    def chosen(self) -> Probe | None:
        """The stable probe with the best score."""
        stable = [o.probe for o in self.outcomes if o.verdict == STABLE]
        return max(stable, key=lambda p: self.scores[p]) if stable else None

    def violations(self) -> list[str]:
        return []
