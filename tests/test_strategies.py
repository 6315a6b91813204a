"""The selection logic on synthetic verdicts: monotone, non-monotone, all stable, none stable."""


from slwtune.metrics import DIVERGED, FAILED, FLUCTUATING, STABLE
from slwtune.spec import load_spec
from slwtune.tuning.optuna_search import OptunaSearch
from slwtune.tuning.strategies import (
    GridSearch,
    Outcome,
    PaperSearch,
    Probe,
    choose_paper_rule,
    start_length_choices,
)
from slwtune.tuning.searches import make_search


def run(search, oracle, max_rounds=50):
    """Drive a search to the end with an oracle probe -> (verdict, early)."""
    rounds = []
    for _ in range(max_rounds):
        probes = search.next_round()
        if not probes:
            break
        rounds.append(probes)
        search.tell(Outcome(p, *oracle(p)) for p in probes)
    return rounds


def paper(**kw):
    base = dict(t_min=100, t_max=1000, resolution=50, slots=2, max_rounds=10, start=8, max_start=64)
    base.update(kw)
    return PaperSearch(**base)


def threshold_oracle(t_star, unstable=FLUCTUATING):
    return lambda p: (STABLE, False) if p.duration_steps <= t_star else (unstable, False)


def test_monotone_finds_largest_stable_within_resolution():
    s = paper()
    run(s, threshold_oracle(437))
    chosen = s.chosen()
    assert chosen.start_length == 8
    assert 437 - 50 <= chosen.duration_steps <= 437
    assert s.violations() == []


def test_binary_search_with_one_slot():
    s = paper(slots=1)
    rounds = run(s, threshold_oracle(700))
    assert all(len(r) == 1 for r in rounds)
    assert 650 <= s.chosen().duration_steps <= 700


def test_first_round_probes_both_ends():
    assert [p.duration_steps for p in paper().next_round()] == [100, 1000]


def test_all_stable_chooses_t_max_in_one_round():
    s = paper()
    rounds = run(s, lambda p: (STABLE, False))
    assert len(rounds) == 1 and s.chosen() == Probe(8, 1000)


def test_none_stable_chooses_nothing():
    s = paper()
    run(s, lambda p: (DIVERGED, False))
    assert s.chosen() is None


def test_non_monotone_result_is_reported_not_ignored():
    # stable at 100 and 1000 endpoints is monotone-breaking if a middle point fluctuates
    bad = {400}
    s = paper(slots=3)
    run(s, lambda p: (FLUCTUATING, False) if p.duration_steps in bad or p.duration_steps == 550 else (STABLE, False))
    # 1000 stable -> chosen at once; 550 fluctuating below it is a violation
    assert s.chosen().duration_steps == 1000
    assert any("T=550" in v for v in s.violations())


def test_early_instability_doubles_start_length():
    # start 8 and 16 blow up at the very beginning; 32 behaves monotonically
    def oracle(p):
        if p.start_length < 32:
            return DIVERGED, True
        return (STABLE, False) if p.duration_steps <= 600 else (FLUCTUATING, False)

    s = paper()
    run(s, oracle)
    assert s.chosen().start_length == 32
    assert 550 <= s.chosen().duration_steps <= 600
    assert any("doubling to 16" in n for n in s.notes) and any("doubling to 32" in n for n in s.notes)


def test_start_length_never_exceeds_max():
    s = paper(max_start=16)
    run(s, lambda p: (DIVERGED, True))
    assert s.chosen() is None
    assert all(o.probe.start_length <= 16 for o in s.outcomes)
    assert "forbids doubling" in s.notes[-1]


def test_late_instability_does_not_double_start():
    s = paper()
    run(s, lambda p: (FLUCTUATING, False))
    assert {o.probe.start_length for o in s.outcomes} == {8}


def test_failed_trial_is_unknown_not_unstable():
    s = paper()
    run(s, lambda p: (FAILED, False) if p.duration_steps == 1000 else (STABLE, False))
    # 1000 crashed: not counted as unstable, so the search still converges upward
    assert s.chosen().duration_steps >= 900


def test_max_rounds_bounds_the_search():
    s = paper(max_rounds=2, resolution=1)
    rounds = run(s, threshold_oracle(437))
    assert len(rounds) == 2


def test_probes_never_repeat_and_stay_in_range():
    s = paper(slots=4, resolution=1)
    run(s, threshold_oracle(333))
    seen = [(o.probe.start_length, o.probe.duration_steps) for o in s.outcomes]
    assert len(seen) == len(set(seen))
    assert all(100 <= t <= 1000 for _, t in seen)


def test_grid_is_one_round_of_the_product():
    g = GridSearch([16, 8], [200, 100])
    assert g.next_round() == [Probe(8, 100), Probe(8, 200), Probe(16, 100), Probe(16, 200)]
    assert g.next_round() == []


def test_paper_rule_prefers_smallest_start_then_largest_t():
    outcomes = [Outcome(Probe(8, 100), STABLE), Outcome(Probe(8, 300), STABLE), Outcome(Probe(8, 500), FLUCTUATING),
                Outcome(Probe(16, 900), STABLE)]
    assert choose_paper_rule(outcomes) == Probe(8, 300)
    assert choose_paper_rule([Outcome(Probe(8, 100), DIVERGED)]) is None


def test_start_length_choices():
    assert start_length_choices(8, 64) == [8, 16, 32, 64]


def test_make_search_builds_the_strategy_the_spec_names(tmp_path):
    kw = dict(study_name="s", default_storage=f"sqlite:///{tmp_path}/o.db")
    assert isinstance(make_search(load_spec("shakespeare-tiny"), **kw), PaperSearch)
    grid = load_spec("shakespeare-tiny", ["tuning.strategy=grid", "tuning.start_lengths=[8]", "tuning.durations=[10]"])
    assert isinstance(make_search(grid, **kw), GridSearch)
    assert isinstance(make_search(load_spec("shakespeare-tiny", ["tuning.strategy=optuna"]), **kw), OptunaSearch)


def test_diverged_at_small_t_is_a_lower_bound():
    # diverged below 300, stable 300-700, fluctuating above: round 1's ends settle nothing by themselves
    s = paper(t_min=50, t_max=800, max_rounds=4)
    run(s, lambda p: (DIVERGED, p.duration_steps < 150) if p.duration_steps < 300
        else ((FLUCTUATING, False) if p.duration_steps > 700 else (STABLE, False)))
    assert 650 <= s.chosen().duration_steps <= 700 and s.chosen().start_length == 8
    assert s.violations() == []


def test_diverged_above_a_stable_t_is_reported_and_bounds_the_search():
    s = paper(t_min=100, t_max=1000)
    s.tell([Outcome(Probe(8, 100), STABLE), Outcome(Probe(8, 1000), DIVERGED)])
    assert s.bounds() == (100, 1000)
    assert any("T=1000 was diverged above the stable T=100" in v for v in s.violations())


def test_no_stable_t_between_the_failure_ends_chooses_nothing_without_doubling():
    s = paper(t_min=100, t_max=1000, resolution=100)
    run(s, lambda p: (DIVERGED, False) if p.duration_steps < 500 else (FLUCTUATING, False))
    assert s.chosen() is None and {o.probe.start_length for o in s.outcomes} == {8}
