"""PaperSearch over many stability landscapes, for every preset's tuning settings (property-style).

A landscape says which T diverge (too small), which fluctuate (too large) and which are stable;
`plan --simulate` runs the configured search against it. The property: when a stable band exists
that the search can see (at least `resolution` wide inside [duration_min, duration_max], or reaching
one of its ends), the search ends inside it; it chooses nothing only when no T is stable. The
landscapes are drawn at random (seeded) per kind: band low, middle, high, everywhere, nowhere.
"""

import random

import pytest

from slwtune.simulation import Landscape, simulate
from slwtune.spec import list_presets, load_spec
from slwtune.tuning.searches import make_search
from slwtune.tuning.strategies import Outcome

KINDS = ["low", "middle", "high", "everywhere", "nowhere"]
DRAWS = 20


def draw_landscape(kind: str, t_min: int, t_max: int, resolution: int, rng: random.Random) -> Landscape:
    """A landscape of `kind` whose stable band (if any) is at least `resolution` wide or touches an end."""
    span = t_max - t_min
    if kind == "everywhere":
        return Landscape()
    if kind == "low":      # stable from below the range up to somewhere in its lower part
        return Landscape(fluctuating_above=rng.randint(t_min, t_min + span // 3))
    if kind == "high":     # stable from somewhere in the upper part to above the range
        return Landscape(diverged_below=rng.randint(t_max - span // 3, t_max))
    if kind == "middle":   # both failure modes inside the range, a band of >= resolution between
        width = rng.randint(resolution, max(resolution, span // 2))
        lo = rng.randint(t_min + 1, t_max - width)
        return Landscape(diverged_below=lo, fluctuating_above=lo + width - 1)
    edge = rng.randint(t_min - resolution, t_max + resolution)   # nowhere: T < edge diverges, T >= edge fluctuates
    return Landscape(diverged_below=edge, fluctuating_above=edge - 1)


def search(spec, land: Landscape) -> dict:
    """What `simulate` reports of the search, without its token counting (the GPU presets' windows are long)."""
    s = make_search(spec, study_name="landscape", default_storage="sqlite:///:memory:")
    rounds = []
    while probes := s.next_round():
        rounds.append([(p.start_length, p.duration_steps, land.verdict(p)[0]) for p in probes])
        s.tell(Outcome(p, *land.verdict(p)) for p in probes)
    chosen = s.chosen()
    return {"chosen": chosen.as_config() if chosen else None, "rounds": rounds, "notes": s.notes,
            "violations": s.violations()}


def stable_band(land: Landscape, t_min: int, t_max: int) -> tuple[int, int] | None:
    lo = max(t_min, land.diverged_below or t_min)
    hi = min(t_max, t_max if land.fluctuating_above is None else land.fluctuating_above)
    return (lo, hi) if lo <= hi else None


@pytest.mark.parametrize("preset", list_presets())
@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_search_ends_in_the_stable_band_or_says_none_only_when_none(preset, slots, kind):
    spec = load_spec(preset, [f"tuning.slots={slots}", "tuning.strategy=paper"])
    t = spec.tuning
    rng = random.Random(f"{preset}/{slots}/{kind}")
    for _ in range(DRAWS):
        land = draw_landscape(kind, t.duration_min, t.duration_max, t.resolution, rng)
        sim = search(spec, land)
        band = stable_band(land, t.duration_min, t.duration_max)
        chosen = sim["chosen"]
        if band is None:
            assert chosen is None, (land, sim["rounds"])
        else:
            assert chosen is not None, (land, sim["rounds"], sim["notes"])
            assert band[0] <= chosen["duration_steps"] <= band[1], (land, sim["rounds"])
            assert chosen["start_length"] == spec.slw.start_length
        assert sim["violations"] == []


@pytest.mark.parametrize("preset", list_presets())
@pytest.mark.parametrize("slots", [1, 2])
def test_start_too_small_doubles_then_finds_the_band(preset, slots):
    start = load_spec(preset).slw.start_length
    spec = load_spec(preset, [f"tuning.slots={slots}", "tuning.strategy=paper", f"tuning.max_start_length={start * 2}"])
    t = spec.tuning
    rng = random.Random(f"early/{preset}/{slots}")
    for _ in range(DRAWS):
        land = draw_landscape(rng.choice(["low", "middle", "high"]), t.duration_min, t.duration_max,
                              t.resolution, rng)
        land = Landscape(land.diverged_below, land.fluctuating_above, early_below=start * 2)
        sim = search(spec, land)
        band = stable_band(land, t.duration_min, t.duration_max)
        assert sim["chosen"]["start_length"] == start * 2, (land, sim["rounds"])
        assert band[0] <= sim["chosen"]["duration_steps"] <= band[1]


@pytest.mark.parametrize("preset", ["gpt2-117m", "gpt2-1.5b", "gpt3-125m"])
def test_one_slot_reports_the_extra_evidence_in_the_simulation(preset):
    # the cases: every T below a point near duration_min is stable; main chose nothing
    spec = load_spec(preset)
    edge = {"gpt2-117m": 9800, "gpt2-1.5b": 18600, "gpt3-125m": 9200}[preset]
    sim = simulate(spec, Landscape(fluctuating_above=edge))
    assert sim["chosen"] is not None and sim["chosen"]["duration_steps"] <= edge


def test_narrow_middle_band_of_the_demo_is_found_past_max_rounds():
    # the landscape, over the demo's own range (the race's cap on T, 149 steps, is off here)
    spec = load_spec("shakespeare-demo", ["tuning.race=false"])
    sim = simulate(spec, Landscape(diverged_below=184, fluctuating_above=248))
    assert 184 <= sim["chosen"]["duration_steps"] <= 248
    assert len(sim["rounds"]) > spec.tuning.max_rounds
    assert any("max_rounds" in n for n in sim["notes"])


def test_narrow_band_inside_the_demo_cap_is_found_with_the_race_on():
    spec = load_spec("shakespeare-demo")
    cap = spec.duration_cap()
    assert spec.tuning.duration_min < cap < spec.tuning.duration_max
    sim = simulate(spec, Landscape(diverged_below=cap - 40, fluctuating_above=cap - 10))
    assert cap - 40 <= sim["chosen"]["duration_steps"] <= cap - 10
