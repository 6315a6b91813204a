"""Pacing functions: the sequence length as a function of the optimizer step.

Pure functions of their inputs (slw-spec section 2). `t` counts optimizer steps
from 1; `s` is the start length, `e` the full length, `T` the warmup duration in
steps and `k` the step size that every length is a multiple of.
"""

from __future__ import annotations

from typing import Callable, Sequence

from slwtune.errors import SpecError

PacingFn = Callable[[int], int]


def fixed_root_length(t: int, s: int, e: int, T: int, k: int = 1, r: float = 1.0) -> int:
    """`floor((t/T)**(1/r) * (e-s) + s)`, rounded down to a multiple of k, capped at e."""
    if t < 1:
        raise ValueError(f"step t={t} must be >= 1 (steps count from 1)")
    if t >= T:
        return e
    if r == 1.0:
        # Integer arithmetic: floats would misplace exact boundaries like t/T = 3/10.
        length = s + (t * (e - s)) // T
    else:
        length = int(((t / T) ** (1.0 / r)) * (e - s) + s)
    length -= length % k
    return min(max(length, s), e)


def fixed_linear_length(t: int, s: int, e: int, T: int, k: int = 1) -> int:
    """fixed_root with degree 1: the recommended default."""
    return fixed_root_length(t, s, e, T, k, 1.0)


def fixed_discrete_length(t: int, lengths: Sequence[int], max_steps: Sequence[int]) -> int:
    """`lengths[i]` for the first i with `t <= max_steps[i]`, else the last length."""
    if len(max_steps) != len(lengths) - 1:
        raise ValueError(f"max_steps has {len(max_steps)} entries, expected len(lengths)-1={len(lengths) - 1}")
    for length, boundary in zip(lengths, max_steps):
        if t <= boundary:
            return length
    return lengths[-1]


def make_pacing(slw) -> PacingFn:
    """The pacing function of an `SlwSpec`; the constant full length when SLW is off."""
    e = slw.full_length
    if not slw.enabled:
        return lambda t: e
    if slw.pacing == "fixed_linear":
        s, T, k = slw.start_length, slw.duration_steps, slw.step_size
        return lambda t: fixed_linear_length(t, s, e, T, k)
    if slw.pacing == "fixed_root":
        s, T, k, r = slw.start_length, slw.duration_steps, slw.step_size, slw.root_degree
        return lambda t: fixed_root_length(t, s, e, T, k, r)
    if slw.pacing == "fixed_discrete":
        lengths, max_steps = list(slw.discrete_lengths), list(slw.discrete_max_steps)
        return lambda t: fixed_discrete_length(t, lengths, max_steps)
    raise SpecError([{"loc": "slw.pacing", "value": slw.pacing, "msg": "unknown pacing"}])


def steps_to_full_length(pacing: PacingFn, full_length: int, limit: int = 10_000_000) -> int:
    """The first step at which the pacing reaches the full length (for plans and tests)."""
    lo, hi = 1, 1
    while pacing(hi) < full_length:
        hi *= 2
        if hi > limit:
            raise ValueError(f"pacing never reaches full_length={full_length} within {limit} steps")
    while lo < hi:  # pacings are non-decreasing: binary search
        mid = (lo + hi) // 2
        if pacing(mid) >= full_length:
            hi = mid
        else:
            lo = mid + 1
    return lo


PACINGS = ("fixed_linear", "fixed_root", "fixed_discrete")
# The knobs as `SeqLengthWarmup` names its arguments; the job spec passes its own names (slw.*).
ARGUMENT_NAMES = {"start_length": "start_length", "full_length": "full_length", "step_size": "step_size",
                  "pacing": "pacing", "lengths": "lengths", "max_steps": "max_steps"}


def slw_rule_problems(start_length: int, full_length: int, step_size: int, pacing: str,
                      lengths: Sequence[int] | None = None, max_steps: Sequence[int] | None = None, *,
                      names: dict[str, str] = ARGUMENT_NAMES, start_rules: bool = True) -> list[dict]:
    """The rules between the SLW knobs (slw-spec section 2's edge cases), each broken one as
    {loc, value, msg} with the knobs called by `names`; the one source of `JobSpec.problems()`'s
    slw rules and of `SeqLengthWarmup`'s. `start_rules`: check the start length against k and e."""
    out: list[dict] = []

    def bad(knob: str, value, msg: str) -> None:
        out.append({"loc": names[knob], "value": value, "msg": msg})

    if start_rules:
        if start_length % step_size:
            bad("start_length", start_length,
                f"must be a multiple of {names['step_size']}={step_size} (rounding would drop below it)")
        if start_length > full_length:
            bad("start_length", start_length, f"must be <= {names['full_length']}={full_length}")
    if pacing != "fixed_discrete":
        return out
    if not lengths:
        bad("lengths", lengths, f"required when {names['pacing']}=fixed_discrete")
    elif len(max_steps or []) != len(lengths) - 1:
        bad("max_steps", max_steps, f"needs len({names['lengths']})-1={len(lengths) - 1} entries")
    else:
        if any(x <= 0 or x > full_length for x in lengths):
            bad("lengths", list(lengths), f"each must be in 1..{names['full_length']}={full_length}")
        steps = list(max_steps or [])
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(x <= 0 for x in steps):
            bad("max_steps", steps, "must be positive and strictly increasing")
    return out


def pacing_problems(start_length: int, full_length: int, duration_steps: int, step_size: int,
                    pacing: str, lengths: Sequence[int] | None = None,
                    max_steps: Sequence[int] | None = None) -> list[dict]:
    """Every problem with these SLW knobs as `SeqLengthWarmup` takes them, each as {loc, value, msg};
    empty when they are valid. Used where the knobs arrive without a JobSpec."""
    out = [{"loc": name, "value": value, "msg": "must be a positive integer"}
           for name, value in (("start_length", start_length), ("full_length", full_length),
                               ("duration_steps", duration_steps), ("step_size", step_size))
           if not isinstance(value, int) or isinstance(value, bool) or value <= 0]
    if out:
        return out
    if pacing not in PACINGS:
        return [{"loc": "pacing", "value": pacing, "msg": "unknown pacing; use fixed_linear, fixed_root or "
                                                          "fixed_discrete"}]
    # A discrete pacing has its own lengths: the start length is not one of its knobs.
    return slw_rule_problems(start_length, full_length, step_size, pacing, lengths, max_steps,
                             start_rules=pacing != "fixed_discrete")
