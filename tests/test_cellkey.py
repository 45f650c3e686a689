"""The cell-key perturbation module: properties of the table and of what it publishes."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch.analysis.cellkey import (
    BOUND,
    DEFAULT_TABLE,
    RECORD_KEY_MODULUS,
    PerturbationTable,
    new_record_key,
    protected_chao1,
    protected_rate,
    publish,
)
from swarmwatch.analysis.estimators import rate_per_100k

counts = st.integers(min_value=0, max_value=10**7)
sums = st.integers(min_value=0, max_value=RECORD_KEY_MODULUS * 10**7)
ks = st.integers(min_value=1, max_value=50)


@given(counts, sums, ks)
def test_same_inputs_same_output(n: int, rk: int, k: int) -> None:
    assert publish(n, rk, k) == publish(n, rk, k) == PerturbationTable().publish(n, rk, k)
    # Only the cell key matters: the same set of peers, however its sum was added up.
    assert publish(n, rk, k) == publish(n, rk % RECORD_KEY_MODULUS, k)


@given(counts, sums, ks)
def test_noise_within_bound_and_nothing_below_k(n: int, rk: int, k: int) -> None:
    value = publish(n, rk, k)
    if n == 0:
        assert value == 0
    elif n < k:
        assert value is None
    else:
        assert value is None or (value >= k and abs(value - n) <= BOUND)
    assert value is None or value == 0 or value >= k


@settings(max_examples=30)
@given(st.integers(min_value=1, max_value=10**6))
def test_each_row_is_zero_mean_with_the_stated_distribution(n: int) -> None:
    row = DEFAULT_TABLE.row(n)
    assert sum(row) == 0  # exactly zero mean over the cell keys
    tally = Counter(row)
    unit = RECORD_KEY_MODULUS // 16
    assert tally == {
        -3: unit,
        -2: 2 * unit,
        -1: 3 * unit,
        0: 4 * unit,
        1: 3 * unit,
        2: 2 * unit,
        3: unit,
    }
    assert sum(p * p for p in row) / len(row) == DEFAULT_TABLE.variance == 2.5
    assert DEFAULT_TABLE.p_zero == 0.25


def test_rows_are_laid_out_differently() -> None:
    # Two cells with the same key and different counts do not share their noise.
    assert DEFAULT_TABLE.row(10) != DEFAULT_TABLE.row(11)


def test_mean_is_near_zero_over_random_record_keys() -> None:
    rng = random.Random(15)
    noise = []
    for _ in range(20_000):
        n = rng.randint(5, 5000)
        keys = sum(rng.randrange(RECORD_KEY_MODULUS) for _ in range(min(n, 8)))
        noise.append(DEFAULT_TABLE.perturbation(n, keys))
    mean = sum(noise) / len(noise)
    assert abs(mean) < 4 * (2.5 / len(noise)) ** 0.5  # four standard errors
    assert max(noise) == BOUND and min(noise) == -BOUND


def test_record_keys_are_uniform_draws() -> None:
    keys = [new_record_key() for _ in range(4000)]
    assert all(0 <= key < RECORD_KEY_MODULUS for key in keys)
    assert len(set(keys)) > 2000


def test_bad_tables_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        PerturbationTable(weights=(1, 2, 3))
    with pytest.raises(ValueError, match="power of two"):
        PerturbationTable(modulus=1000)
    with pytest.raises(ValueError):
        publish(-1, 0, 5)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
)
def test_chao1_from_protected_inputs(s: int, f1: int, f2: int) -> None:
    estimate = protected_chao1(s, f1, f2)
    assert estimate is not None and estimate.estimate >= estimate.observed == s
    assert estimate.f1 + estimate.f2 <= s  # independent noise trimmed, never an error
    assert protected_chao1(None, f1, f2) is None and protected_chao1(s, None, f2) is None
    assert protected_chao1(s, f1, None) is None


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=10**9))
def test_rates_from_protected_counts_widen_the_interval(count: int, population: int) -> None:
    rate = protected_rate(count, population)
    plain = rate_per_100k(count, population)
    assert rate is not None and plain is not None
    assert rate.per_100k == plain.per_100k
    assert rate.ci_low <= plain.ci_low and rate.ci_high >= plain.ci_high
    assert protected_rate(None, population) is None and protected_rate(count, 0) is None


def test_describe_states_the_noise() -> None:
    text = str(DEFAULT_TABLE.describe())
    assert "[-3, 3]" in text and "mean 0" in text and "variance 2.5" in text
