import pytest

from slwtune.pacing import (
    fixed_discrete_length,
    fixed_linear_length,
    fixed_root_length,
    make_pacing,
    steps_to_full_length,
)
from slwtune.spec import SlwSpec


def test_fixed_linear_golden_vector():
    # DeepSpeed's own unit test vector (slw-spec section 2).
    got = [fixed_linear_length(t, s=2, e=10, T=8, k=2) for t in range(1, 11)]
    assert got == [2, 4, 4, 6, 6, 8, 8, 10, 10, 10]


def test_fixed_discrete_golden_vector():
    got = [fixed_discrete_length(t, [1, 2, 3, 4, 5], [2, 4, 6, 8]) for t in range(1, 10)]
    assert got == [1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_fixed_root_grows_faster_early_than_linear():
    linear = [fixed_root_length(t, 8, 1024, 1000, 8, 1.0) for t in range(1, 1001)]
    root2 = [fixed_root_length(t, 8, 1024, 1000, 8, 2.0) for t in range(1, 1001)]
    assert all(r >= l for r, l in zip(root2, linear))
    assert root2[99] > linear[99]


def test_lengths_are_multiples_of_step_and_within_bounds():
    for t in range(1, 500):
        length = fixed_root_length(t, 64, 1024, 400, 8, 1.5)
        assert length % 8 == 0 and 64 <= length <= 1024


def test_length_is_non_decreasing_and_stays_full():
    got = [fixed_linear_length(t, 8, 128, 100, 8) for t in range(1, 300)]
    assert got == sorted(got)
    assert set(got[99:]) == {128}


def test_exact_integer_boundaries():
    # 3/10 * 10 + 0 must give 3, not 2 from 0.30000000000000004 rounding the other way
    assert fixed_linear_length(3, 0, 10, 10, 1) == 3


def test_step_zero_rejected():
    with pytest.raises(ValueError, match="t=0"):
        fixed_linear_length(0, 8, 128, 10, 8)


def test_discrete_wrong_list_lengths_rejected():
    with pytest.raises(ValueError, match="len"):
        fixed_discrete_length(1, [1, 2, 3], [2, 4, 6])


def test_make_pacing_disabled_is_constant_full_length():
    pacing = make_pacing(SlwSpec(enabled=False, full_length=64))
    assert {pacing(t) for t in range(1, 50)} == {64}


def test_make_pacing_discrete():
    spec = SlwSpec(pacing="fixed_discrete", discrete_lengths=[8, 16, 32], discrete_max_steps=[2, 4], full_length=32)
    assert [make_pacing(spec)(t) for t in range(1, 7)] == [8, 8, 16, 16, 32, 32]


def test_steps_to_full_length():
    pacing = make_pacing(SlwSpec(start_length=8, full_length=128, duration_steps=100, step_size=8))
    n = steps_to_full_length(pacing, 128)
    assert pacing(n) == 128 and pacing(n - 1) < 128
