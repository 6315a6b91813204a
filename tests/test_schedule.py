
import pytest

from slwtune.pacing import fixed_linear_length
from slwtune.schedule import LRSchedule, steps_for_tokens, tokens_for_steps


def sched(**kw):
    base = dict(lr=1e-3, min_lr=1e-5, warmup_steps=10, decay_tokens=10_000, decay="cosine")
    base.update(kw)
    return LRSchedule(**base)


def test_warmup_is_linear_in_steps_regardless_of_tokens():
    s = sched()
    assert s(1, 0, None) == pytest.approx(1e-4)
    assert s(5, 123, None) == pytest.approx(5e-4)
    assert s(10, 999, None) == pytest.approx(1e-3)


def test_decay_is_token_based_from_warmup_end():
    s = sched()
    warm = 1_000
    assert s(11, warm, warm) == pytest.approx(1e-3)
    mid = warm + (10_000 - warm) // 2
    assert s(500, mid, warm) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    # the same token count gives the same LR whatever the step: decay follows tokens
    assert s(50, mid, warm) == s(5000, mid, warm)


def test_decay_reaches_min_lr_at_decay_tokens_and_stays():
    s = sched()
    assert s(100, 10_000, 1_000) == pytest.approx(1e-5)
    assert s(100, 50_000, 1_000) == pytest.approx(1e-5)


def test_linear_and_constant_decay():
    assert sched(decay="linear")(20, 5_500, 1_000) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert sched(decay="constant")(20, 9_999_999, 1_000) == 1e-3


def test_decay_tokens_not_after_warmup_is_guarded():
    # no division by zero when the warmup already consumed the decay horizon
    assert sched(decay_tokens=500)(11, 600, 600) == pytest.approx(1e-5)




def test_tokens_for_steps_counts_actual_lengths():
    pacing = lambda t: fixed_linear_length(t, 2, 10, 8, 2)  # 2,4,4,6,6,8,8,10
    assert tokens_for_steps(pacing, 8, batch_size=3) == 3 * (2 + 4 + 4 + 6 + 6 + 8 + 8 + 10)


def test_steps_for_tokens_terminates_on_budget():
    pacing = lambda t: fixed_linear_length(t, 2, 10, 8, 2)
    budget = 3 * 48 + 3 * 10 * 5  # warmup tokens + five full steps
    n = steps_for_tokens(pacing, budget, batch_size=3, full_length=10)
    assert n == 13
    assert tokens_for_steps(pacing, n, 3) >= budget > tokens_for_steps(pacing, n - 1, 3)
