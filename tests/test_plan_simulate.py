"""`slwtune plan --simulate`: the configured search against a stated stability landscape."""

import json

import pytest

from slwtune.cli import main
from slwtune.errors import SpecError
from slwtune.metrics import DIVERGED, FLUCTUATING, STABLE
from slwtune.simulation import Landscape, parse_landscape, probe_tokens, simulate
from slwtune.spec import load_spec
from slwtune.tuning.strategies import Probe

# the search alone over a wide T range: without the race, T is not capped by the run's length
WIDE = ["tuning.duration_min=50", "tuning.duration_max=800", "tuning.resolution=50", "tuning.max_rounds=4",
        "tuning.race=false"]


def test_parse_landscape_reads_each_rule():
    assert parse_landscape("diverged<300, fluctuating>700,early<16") == Landscape(300, 700, 16)
    assert parse_landscape("") == Landscape()


@pytest.mark.parametrize("bad", ["diverged>300", "stable<3", "fluctuating>x", "early<<16"])
def test_parse_landscape_names_a_bad_rule(bad):
    with pytest.raises(SpecError) as err:
        parse_landscape(f"diverged<10,{bad}")
    assert err.value.problems[0]["loc"] == "--simulate" and err.value.problems[0]["value"] == bad


def test_landscape_verdicts():
    land = Landscape(300, 700, 16)
    assert land.verdict(Probe(8, 500)) == (DIVERGED, True)
    assert land.verdict(Probe(16, 299)) == (DIVERGED, False)
    assert land.verdict(Probe(16, 701)) == (FLUCTUATING, False)
    assert land.verdict(Probe(16, 300)) == (STABLE, False)


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_paper_search_settles_both_failure_ends(slots):
    # diverged below 300, fluctuating above 700: the largest stable T, not "nothing chosen"
    spec = load_spec("shakespeare-demo", WIDE + [f"tuning.slots={slots}"])
    sim = simulate(spec, parse_landscape("diverged<300,fluctuating>700"))
    chosen = sim["chosen"]
    assert chosen["start_length"] == 8
    assert 300 <= chosen["duration_steps"] <= 700
    assert 700 - chosen["duration_steps"] <= spec.tuning.resolution
    assert sim["violations"] == []


def test_start_doubles_only_when_no_t_helps():
    spec = load_spec("shakespeare-demo", WIDE)
    sim = simulate(spec, parse_landscape("diverged<300,fluctuating>700,early<16"))
    assert sim["chosen"]["start_length"] == 16 and 650 <= sim["chosen"]["duration_steps"] <= 700
    assert {p["start_length"] for p in sim["rounds"][0]} == {8}
    assert any("doubling to 16" in n for n in sim["notes"])


def test_early_divergence_at_small_t_narrows_t_instead_of_doubling():
    # the held-out corpus case: a small T diverged early, a large T fluctuated: narrow T at start 8
    spec = load_spec("shakespeare-demo", WIDE)
    sim = simulate(spec, parse_landscape("diverged<100,fluctuating>400"))
    assert all(p["start_length"] == 8 for r in sim["rounds"] for p in r)
    assert 350 <= sim["chosen"]["duration_steps"] <= 400


def test_simulation_counts_the_tokens_of_every_probe():
    spec = load_spec("shakespeare-demo", WIDE)
    sim = simulate(spec, parse_landscape("fluctuating>700"))
    expected = sum(probe_tokens(spec, Probe(p["start_length"], p["duration_steps"]), spec.probe_steps())
                   for r in sim["rounds"] for p in r)
    expected += spec.data.batch_size * spec.slw.full_length * spec.probe_steps()  # the control probe
    assert sim["tuning_tokens"] == expected
    assert sim["tuning_fraction"] == pytest.approx(expected / spec.budget.train_tokens)


def test_plan_simulate_json_cli(capsys):
    assert main(["plan", "shakespeare-demo", *sum((["--set", o] for o in WIDE), []),
                 "--simulate", "diverged<300,fluctuating>700", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"rounds", "chosen", "tuning_tokens", "tuning_fraction"} <= set(out)
    assert all({"start_length", "duration_steps", "verdict"} == set(p) for r in out["rounds"] for p in r)
    assert 650 <= out["chosen"]["duration_steps"] <= 700


def test_plan_simulate_optuna_runs_in_memory(capsys):
    assert main(["plan", "shakespeare-tiny", "--set", "tuning.strategy=optuna", "--set", "tuning.n_trials=4",
                 "--simulate", "fluctuating>40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(len(r) for r in out["rounds"]) == 4
    assert out["chosen"] is None or out["chosen"]["duration_steps"] <= 40
