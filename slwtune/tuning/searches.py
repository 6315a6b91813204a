"""`make_search`: the search strategy a job spec asks for (`tuning.strategy`).

Its own module so that the strategies and Optuna's search, which builds on their `Probe` and
`Outcome`, never import each other.
"""

from __future__ import annotations

from slwtune.tuning.strategies import GridSearch, PaperSearch, Search

__all__ = ["make_search"]


def make_search(spec, *, study_name: str, default_storage: str) -> Search:
    """The strategy the spec asks for (`tuning.strategy`)."""
    t = spec.tuning
    if t.strategy == "grid":
        return GridSearch(list(t.start_lengths), list(t.durations))
    if t.strategy == "optuna":
        from slwtune.tuning.optuna_search import OptunaSearch  # lazy: optuna is imported only for it

        return OptunaSearch(spec, study_name=study_name, storage_url=t.optuna_storage or default_storage)
    return PaperSearch(t_min=t.duration_min, t_max=t.duration_max, resolution=t.resolution, slots=t.slots,
                       max_rounds=t.max_rounds, start=spec.slw.start_length, max_start=t.max_start_length)
