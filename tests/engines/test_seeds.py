"""Multi-seed comparison: mean ± sd and paired differences with Student-t intervals."""

from __future__ import annotations

import math

import pytest

from eqmar.engines.seeds import format_seed_table, mean_sd, paired_difference


def test_paired_difference_matches_the_textbook_t_interval() -> None:
    a = [31.0, 31.5, 30.8, 31.2, 31.1]
    b = [30.0, 30.9, 30.5, 30.4, 30.6]
    d = paired_difference(a, b)
    diffs = [1.0, 0.6, 0.3, 0.8, 0.5]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, df=4)
    assert d.mean == pytest.approx(mean) and d.sd == pytest.approx(sd)
    assert (d.low, d.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert d.wins == 5 and d.n == 5 and d.resolved


def test_an_interval_across_zero_is_not_resolved_and_one_seed_resolves_nothing() -> None:
    d = paired_difference([1.0, 2.0, 3.0], [2.0, 1.0, 3.5])
    assert d.low < 0 < d.high and not d.resolved and d.wins == 1
    single = paired_difference([2.0], [1.0])
    assert single.sd == 0 and math.isinf(single.low) and not single.resolved
    assert mean_sd([4.0]) == (4.0, 0.0)


def test_paired_difference_refuses_unpaired_input() -> None:
    with pytest.raises(ValueError, match="same non-zero number of seeds"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [1.0, 1.5], confidence=1.0)


def test_seed_table_shows_arms_baseline_and_differences() -> None:
    table = format_seed_table({"aug": [31.0, 32.0], "eqreg": [31.5, 31.9]}, [("eqreg", "aug")], baseline=30.0)
    assert "| aug | 31.00 / 32.00 | 31.50 ± 0.71 | +1.50 |" in table
    assert "| eqreg − aug | +0.20 ± 0.42 |" in table and "(includes 0)" in table and "1 of 2" in table
