"""Search strategies over the two SLW knobs, as pure logic (no Ray here).

Every strategy speaks one protocol, `Search`: it proposes rounds of probes
`(start_length, duration_steps)` with `next_round()`, is told their outcomes
with `tell()`, and at the end says what it `chosen()`, which outcomes broke its
assumptions (`violations()`) and what it decided along the way (`notes`). The
driver runs each round on Ray Tune, the same way for every strategy. The
paper's rule (slw-spec section 5) is `PaperSearch`; `GridSearch` runs explicit
lists; Optuna's TPE lives in `slwtune.tuning.optuna_search` and asks/tells its
own study. `slwtune.tuning.searches.make_search` builds the one a spec asks for.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from slwtune.metrics import DIVERGED, FAILED, FLUCTUATING, STABLE


@dataclass(frozen=True)
class Probe:
    start_length: int
    duration_steps: int
    slw: bool = True  # False: the control probe, SLW off over the same window

    def as_config(self) -> dict:
        knobs = {"start_length": self.start_length, "duration_steps": self.duration_steps}
        return knobs if self.slw else {**knobs, "slw": False}

    @staticmethod
    def control(full_length: int) -> "Probe":
        """The baseline over the probe window: every step at full length, no SLW."""
        return Probe(full_length, 0, slw=False)


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
    """The paper's lightweight search (slw-spec section 5), as a parallel k-ary search over T.

    The paper's picture, at one start length: too small a T does not stabilise
    (the probe diverges), too large a T overfits the short sequences (full-length
    validation perplexity fluctuates), and the band between is stable. So:

    1. Duration: `diverged` at T is a lower bound ("T too small"), `fluctuating`
       at T an upper bound ("T too large"), `stable` at T a lower bound on the
       largest stable T. Each round probes `slots` points inside the open
       interval (left, right) that is still unknown, starting from [t_min, t_max].
       With several slots the range's ends come first; with one slot the point is
       the interval's geometric midpoint (T is a scale: the band of stable T is
       as likely at 5k-10k as at 20k-40k, the log-uniform prior that Optuna's
       `log=True` and Ray Tune's `loguniform` use for such knobs), so a band low
       in a wide range is met in round 1 or 2, not after the last round.
       Once a stable T is known it stops when the interval is narrower than
       `resolution`, after `max_rounds` rounds, or when T_max is stable.
       "Nothing is stable" needs evidence: until a stable T is seen `max_rounds`
       does not stop it: the untested end next to the stable side is probed
       first (`t_min` when only "too large" was seen, `t_max` when only "too
       small"), then the unknown interval is narrowed to `resolution`. So a stable band at least `resolution` wide, or
       one that reaches an end of the range, is always found.
    2. Start length: doubles (up to `max_start`) only on evidence about the start,
       not about T: when the T search at this start is over with no stable T and
       at least half of its probes went wrong at the very beginning of the window
       (`early`). An early divergence at a small T is what a too-small T does, so
       it narrows T first; only when no T helps is the start to blame.
    3. Chosen: the largest stable T at the final start length. Outcomes that break
       the order diverged < stable < fluctuating are kept in `violations` and
       reported; a crashed probe (`failed`) is unknown, not unstable.
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

    def _largest_stable(self) -> int | None:
        stable = [o.probe.duration_steps for o in self._current() if o.verdict == STABLE]
        return max(stable) if stable else None

    def bounds(self) -> tuple[int | None, int | None]:
        """(left, right) at the current start: T <= left is known stable or too small, T >= right too large.

        Above the largest stable T, any unstable probe bounds the search from above (a diverged
        one there is a violation); without a stable T, diverged probes below the smallest
        fluctuating one bound it from below.
        """
        current, best = self._current(), self._largest_stable()
        above = [o.probe.duration_steps for o in current if o.verdict != STABLE
                 and (best is None and o.verdict == FLUCTUATING or best is not None and o.probe.duration_steps > best)]
        right = min(above) if above else None
        if best is not None:
            return best, right
        below = [o.probe.duration_steps for o in current if o.verdict == DIVERGED
                 and (right is None or o.probe.duration_steps < right)]
        return (max(below) if below else None), right

    def violations(self) -> list[str]:
        """Probes on the wrong side of the order diverged < stable < fluctuating."""
        left, right = self.bounds()
        best = self._largest_stable()
        out = []
        for o in self._current():
            t = o.probe.duration_steps
            if o.verdict == FLUCTUATING and left is not None and t < left:
                what = f"the stable T={best}" if best is not None else f"the diverged T={left}"
                out.append(f"start {o.probe.start_length}, T={t} was fluctuating below {what}")
            elif o.verdict == DIVERGED and right is not None and t > right:
                out.append(f"start {o.probe.start_length}, T={t} was diverged above the fluctuating T={right}")
            elif o.verdict == DIVERGED and best is not None and t > best:
                out.append(f"start {o.probe.start_length}, T={t} was diverged above the stable T={best}")
        return out

    # ---- the protocol: next_round / tell / chosen --------------------------------

    def next_round(self) -> list[Probe]:
        """The probes of the next round; empty when the search is over."""
        while not self.finished:
            points = self._points_at_start()
            if points:
                return [Probe(self.start, t) for t in points]
            self._after_search_at_start()
        return []

    def _points_at_start(self) -> list[int]:
        """The next T points at the current start, or [] when the T search there is over."""
        left, right = self.bounds()
        lo = left if left is not None else self.t_min - 1   # exclusive bounds of what is unknown
        hi = right if right is not None else self.t_max + 1
        if lo >= self.t_max or hi <= self.t_min:
            return []   # T_max is stable (or too small), or T_min is too large: nothing left to learn
        tested = {o.probe.duration_steps for o in self.outcomes if o.probe.start_length == self.start}
        narrow = hi - lo <= self.resolution
        if not narrow and self.rounds_at_start < self.max_rounds:
            return self._spread(lo, hi, tested)
        if self._largest_stable() is not None:
            return []
        ends = self._untested_ends(left, right, tested)
        if ends or narrow:
            return ends
        self._note_once(f"no T was stable at start length {self.start} after max_rounds={self.max_rounds}: searching "
                        f"on inside the unknown interval (max_rounds applies once a T is stable)")
        return self._spread(lo, hi, tested)

    def _untested_ends(self, left: int | None, right: int | None, tested: set[int]) -> list[int]:
        """The ends of [t_min, t_max] on the stable side that no probe has tried yet: one probe there
        settles "none on that side" (the order diverged < stable < fluctuating) or finds a stable T."""
        ends = ([self.t_min] if left is None else []) + ([self.t_max] if right is None else [])
        ends = sorted({t for t in ends if t not in tested})
        if ends:
            self._note_once(f"no T was stable at start length {self.start}: probing T={', '.join(map(str, ends))} "
                            f"before concluding that none is")
        return ends

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _after_search_at_start(self) -> None:
        """The T search at this start is over: done, or double the start on evidence about it."""
        judged = self._current()
        early_bad = [o for o in judged if o.verdict != STABLE and o.early]
        if self._largest_stable() is not None or not judged or 2 * len(early_bad) < len(judged):
            self.finished = True
        elif self.start * 2 > self.max_start:
            self.notes.append(f"no T was stable at start length {self.start} and {len(early_bad)}/{len(judged)} "
                              f"probes went wrong at the very beginning; max_start_length={self.max_start} "
                              f"forbids doubling")
            self.finished = True
        else:
            self.notes.append(f"no T was stable at start length {self.start} and {len(early_bad)}/{len(judged)} "
                              f"probes went wrong at the very beginning: doubling to {self.start * 2}")
            self.start *= 2
            self.rounds_at_start = 0

    def _spread(self, left: int, right: int, tested: set[int]) -> list[int]:
        """`slots` integer points evenly inside (left, right), the range's ends first when open."""
        lo = max(left, self.t_min - 1)
        hi = min(right, self.t_max + 1)
        if self.slots == 1:
            a, b = max(lo + 1, self.t_min, 1), min(hi - 1, self.t_max)
            points = [round(math.sqrt(a * b))]
        else:
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
        self.outcomes.extend(outcomes)
        self.rounds_at_start += 1

    def chosen(self) -> Probe | None:
        best = self._largest_stable()
        return Probe(self.start, best) if best is not None else None


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
