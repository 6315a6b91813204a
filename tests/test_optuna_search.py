"""Optuna's TPE through the Search protocol: scoring, ask/tell rounds, the study in an RDB."""

import optuna

from slwtune.metrics import DIVERGED, FAILED, FLUCTUATING, STABLE
from slwtune.spec import load_spec
from slwtune.tuning.optuna_search import OptunaSearch, probe_score, search_space
from slwtune.tuning.strategies import Outcome, Probe


def score(verdict, start, t, ppl=None):
    return probe_score(Outcome(Probe(start, t), verdict, best_val_ppl=ppl), base_start=8, t_max=1000)


def test_score_orders_verdicts():
    assert score(STABLE, 8, 100) > score(FLUCTUATING, 8, 900) > score(DIVERGED, 8, 900) > score(FAILED, 8, 900)


def test_score_prefers_larger_t_then_smaller_start():
    assert score(STABLE, 8, 800) > score(STABLE, 8, 400)
    assert score(STABLE, 8, 800) > score(STABLE, 32, 800)


def test_score_breaks_ties_by_lower_val_ppl_and_ignores_nan():
    assert score(STABLE, 8, 800, ppl=20.0) > score(STABLE, 8, 800, ppl=40.0)
    assert score(STABLE, 8, 800, ppl=float("nan")) == score(STABLE, 8, 800)


def spec(n_trials=5, per_round=2):
    return load_spec("shakespeare-tiny", ["tuning.strategy=optuna", f"tuning.n_trials={n_trials}",
                                          f"tuning.max_concurrent_trials={per_round}"])


def drive(search, oracle):
    rounds = []
    while probes := search.next_round():
        rounds.append(probes)
        search.tell(Outcome(p, oracle(p)) for p in probes)
    return rounds


def test_rounds_ask_n_trials_in_batches_and_choose_the_best_stable(tmp_path):
    s = OptunaSearch(spec(), study_name="t", storage_url=f"sqlite:///{tmp_path}/o.db")
    rounds = drive(s, lambda p: STABLE if p.duration_steps <= 300 else FLUCTUATING)
    assert [len(r) for r in rounds] == [2, 2, 1]
    stable = [o for o in s.outcomes if o.verdict == STABLE]
    assert stable, "TPE's random start-up trials cover T <= 300 with this seed"
    best = max(stable, key=lambda o: probe_score(o, base_start=8, t_max=spec().tuning.duration_max))
    assert s.chosen() == best.probe
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in s.study.trials)


def test_no_stable_probe_chooses_nothing(tmp_path):
    s = OptunaSearch(spec(n_trials=3), study_name="t", storage_url=f"sqlite:///{tmp_path}/o.db")
    drive(s, lambda p: DIVERGED)
    assert s.chosen() is None and s.violations() == []


def test_seeded_study_proposes_what_a_fresh_sampler_proposes(tmp_path):
    sp = spec(n_trials=2)
    s = OptunaSearch(sp, study_name="t", storage_url=f"sqlite:///{tmp_path}/o.db")
    fresh = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=sp.seed))
    expected = [(t.params["start_length"], t.params["duration_steps"])
                for t in (fresh.ask(search_space(sp)) for _ in range(2))]
    assert [(p.start_length, p.duration_steps) for p in s.next_round()] == expected


def test_a_restarted_search_loads_the_study_from_its_storage(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    first = OptunaSearch(spec(), study_name="t", storage_url=url)
    first.tell(Outcome(p, STABLE) for p in first.next_round())
    again = OptunaSearch(spec(), study_name="t", storage_url=url)
    assert len(again.study.trials) == 2


def test_search_space_bounds_come_from_the_spec():
    sp = load_spec("shakespeare-tiny", ["tuning.duration_min=30", "tuning.duration_max=90",
                                        "tuning.max_start_length=32"])
    space = search_space(sp)
    assert (space["duration_steps"].low, space["duration_steps"].high) == (30, 90)
    assert list(space["start_length"].choices) == [8, 16, 32]
