"""Search strategies over the two SLW knobs, as pure logic (no Ray here).

Every strategy speaks one protocol, `Search`: it proposes rounds of probes
`(start_length, duration_steps)` with `next_round()`, is told their outcomes
with `tell()`, and at the end says what it `chosen()`, which outcomes broke its
assumptions (`violations()`) and what it decided along the way (`notes`). The
driver runs each round on Ray Tune, the same way for every strategy. The
paper's rule (slw-spec section 5) is `PaperSearch`; `GridSearch` runs explicit
lists; Optuna's TPE lives in `slwtune.tuning.optuna_search` and asks/tells its
own study. `make_search` builds the one a spec asks for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from slwtune.metrics import FAILED, STABLE


@dataclass(frozen=True)
class Probe:
    start_length: int
    duration_steps: int

    def as_config(self) -> dict:
        return {"start_length": self.start_length, "duration_steps": self.duration_steps}


@dataclass(frozen=True)
class Outcome:
    """What a finished probe told us."""

    probe: Probe
    verdict: str        # stable | fluctuating | diverged | failed
    early: bool = False  # the problem showed at the very beginning of the window
    reason: str = ""
    best_val_ppl: float | None = None  # best full-length val ppl in the window (a tie-breaker)


class Search(Protocol):
    """What the driver needs of a strategy."""

    notes: list[str]

    def next_round(self) -> list[Probe]:
        """The probes of the next round; empty when the search is over."""

    def tell(self, outcomes: Iterable[Outcome]) -> None:
        """The outcomes of the round just run (crashed probes as verdict `failed`)."""

    def chosen(self) -> Probe | None:
        """The knobs to train with, or None when no probe was stable."""

    def violations(self) -> list[str]:
        """Outcomes that break the search's monotone assumption, for the report."""


@dataclass
class PaperSearch:
    """The paper's lightweight search, as a parallel k-ary search over T.

    1. Start length: begins at `start`; when at least half of a round's probes
       go wrong at the very beginning of the window (diverged or fluctuating,
       `early`), it doubles (up to `max_start`) and the T search restarts.
    2. Duration: assumes "stable" holds for T up to some T* and not above; each
       round probes `slots` points evenly spaced inside the open interval
       (largest stable T, smallest unstable T above it), starting from
       [t_min, t_max]. Stops when the interval is narrower than `resolution`,
       after `max_rounds` rounds at one start length, or when T_max is stable.
    3. Chosen: the largest stable T at the final start length. Outcomes that
       break monotonicity (an unstable T below a stable one) are kept in
       `violations` and reported; a failed trial (crash) is retried never and
       treated as unknown, not as unstable.
    """

    t_min: int
    t_max: int
    resolution: int
    slots: int
    max_rounds: int
    start: int
    max_start: int
    outcomes: list[Outcome] = field(default_factory=list)
    rounds_at_start: int = 0
    finished: bool = False
    notes: list[str] = field(default_factory=list)

    # ---- state derived from the outcomes at the current start length ----------

    def _current(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.probe.start_length == self.start and o.verdict != FAILED]

    def bounds(self) -> tuple[int | None, int | None]:
        """(largest stable T, smallest unstable T above it) at the current start length."""
        current = self._current()
        stable = [o.probe.duration_steps for o in current if o.verdict == STABLE]
        lo = max(stable) if stable else None
        unstable_above = [o.probe.duration_steps for o in current
                          if o.verdict != STABLE and (lo is None or o.probe.duration_steps > lo)]
        hi = min(unstable_above) if unstable_above else None
        return lo, hi

    def violations(self) -> list[str]:
        """Unstable probes below a stable T: the monotone assumption does not hold there."""
        lo, _ = self.bounds()
        if lo is None:
            return []
        return [f"start {o.probe.start_length}, T={o.probe.duration_steps} was {o.verdict} "
                f"below the stable T={lo}" for o in self._current()
                if o.verdict != STABLE and o.probe.duration_steps < lo]

    # ---- the protocol: next_round / tell / chosen --------------------------------

    def next_round(self) -> list[Probe]:
        """The probes of the next round; empty when the search is over."""
        if self.finished:
            return []
        lo, hi = self.bounds()
        left = lo if lo is not None else self.t_min - 1   # exclusive bounds of what is unknown
        right = hi if hi is not None else self.t_max + 1
        tested = {o.probe.duration_steps for o in self.outcomes if o.probe.start_length == self.start}
        if (lo is not None and lo >= self.t_max) or (hi is not None and hi <= self.t_min) \
                or right - left <= self.resolution or self.rounds_at_start >= self.max_rounds:
            self.finished = True
            return []
        points = self._spread(left, right, tested)
        if not points:
            self.finished = True
            return []
        return [Probe(self.start, t) for t in points]

    def _spread(self, left: int, right: int, tested: set[int]) -> list[int]:
        """`slots` integer points evenly inside (left, right), the ends included when open."""
        lo = max(left, self.t_min - 1)
        hi = min(right, self.t_max + 1)
        if self.slots == 1:
            points = [(lo + hi) // 2]
        else:
            # An open end probes the range's own end (T_min or T_max) first: it settles
            # "all stable" / "none stable" in one round.
            a = self.t_min if left < self.t_min else lo + (hi - lo) / (self.slots + 1)
            b = self.t_max if right > self.t_max else hi - (hi - lo) / (self.slots + 1)
            points = [round(a + (b - a) * i / (self.slots - 1)) for i in range(self.slots)]
        out = []
        for t in points:
            t = min(max(t, self.t_min), self.t_max)
            if left < t < right and t not in tested and t not in out:
                out.append(t)
        return sorted(out)

    def tell(self, outcomes: Iterable[Outcome]) -> None:
        batch = list(outcomes)
        self.outcomes.extend(batch)
        self.rounds_at_start += 1
        judged = [o for o in batch if o.verdict != FAILED]
        early_bad = [o for o in judged if o.verdict != STABLE and o.early]
        if judged and 2 * len(early_bad) >= len(judged) and not any(o.verdict == STABLE for o in judged):
            if self.start * 2 <= self.max_start:
                self.notes.append(f"start length {self.start} went wrong at the very beginning in "
                                  f"{len(early_bad)}/{len(judged)} probes: doubling to {self.start * 2}")
                self.start *= 2
                self.rounds_at_start = 0
            else:
                self.notes.append(f"start length {self.start} went wrong at the very beginning and "
                                  f"max_start_length={self.max_start} forbids doubling")
                self.finished = True

    def chosen(self) -> Probe | None:
        lo, _ = self.bounds()
        return Probe(self.start, lo) if lo is not None else None


@dataclass
class GridSearch:
    """Every (start length, T) pair of explicit lists, in one round; chosen by the paper's rule."""

    start_lengths: list[int]
    durations: list[int]
    outcomes: list[Outcome] = field(default_factory=list)
    finished: bool = False
    notes: list[str] = field(default_factory=list)

    def next_round(self) -> list[Probe]:
        if self.finished:
            return []
        self.finished = True
        return [Probe(s, t) for s, t in itertools.product(sorted(self.start_lengths), sorted(self.durations))]

    def tell(self, outcomes: Iterable[Outcome]) -> None:
        self.outcomes.extend(outcomes)

    def violations(self) -> list[str]:
        return []

    def chosen(self) -> Probe | None:
        return choose_paper_rule(self.outcomes)


def choose_paper_rule(outcomes: Iterable[Outcome]) -> Probe | None:
    """Among stable probes: the smallest start length that has one, then its largest T."""
    stable = [o.probe for o in outcomes if o.verdict == STABLE]
    if not stable:
        return None
    start = min(p.start_length for p in stable)
    return max((p for p in stable if p.start_length == start), key=lambda p: p.duration_steps)


def start_length_choices(start: int, max_start: int) -> list[int]:
    """start, 2*start, ... up to max_start: the start lengths Optuna may pick."""
    out, s = [], start
    while s <= max_start:
        out.append(s)
        s *= 2
    return out


def make_search(spec, *, study_name: str, default_storage: str) -> Search:
    """The strategy the spec asks for (`tuning.strategy`)."""
    t = spec.tuning
    if t.strategy == "grid":
        return GridSearch(list(t.start_lengths), list(t.durations))
    if t.strategy == "optuna":
        from slwtune.tuning.optuna_search import OptunaSearch

        return OptunaSearch(spec, study_name=study_name, storage_url=t.optuna_storage or default_storage)
    return PaperSearch(t_min=t.duration_min, t_max=t.duration_max, resolution=t.resolution, slots=t.slots,
                       max_rounds=t.max_rounds, start=spec.slw.start_length, max_start=t.max_start_length)
