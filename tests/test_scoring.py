"""Tests for nanor1/scoring.py: pass@k against brute-force enumeration, pass@1 averaging, majority vote, cons@k."""
import itertools

import pytest

from nanor1.scoring import cons_at_k, majority_vote, mean_pass_at_1, pass_at_k


def brute_pass_at_k(n, c, k):
    """Share of the k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edges_and_stability():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 6, 5) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(0.25)                   # pass@1 is the fraction correct
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-9)     # no huge binomials, no cancellation
    assert pass_at_k(10_000, 3, 5_000) == pytest.approx(1 - (5000 * 4999 * 4998) / (10000 * 9999 * 9998), rel=1e-9)
    for bad in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_mean_pass_at_1():
    assert mean_pass_at_1([[True, False], [True, True, False, False]]) == pytest.approx(0.5)
    assert mean_pass_at_1([[True] * 3, [False] * 3, [True, False, False, False]]) == pytest.approx((1 + 0 + 0.25) / 3)
    with pytest.raises(ValueError):
        mean_pass_at_1([])
    with pytest.raises(ValueError):
        mean_pass_at_1([[True], []])


@pytest.mark.parametrize("answers, expected", [
    (["3", "2", "2"], "2"),
    (["1/2", "0.5", "2", "2", "\\frac{1}{2}"], "1/2"),       # equivalent spellings vote together
    (["1/2", "2", "0.5", "2"], "1/2"),                       # a tie goes to the first answer seen
    (["2", "1/2", "0.5", "2"], "2"),
    ([None, None, "7", None], "7"),                          # None does not vote
    ([None, None], None), ([], None),
    (["\\frac{1}{", "\\frac{1}{", "1"], "\\frac{1}{"),        # unparseable answers only match identical strings
    (["26 or 27", "26", "27", "26"], "26"),
])
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def test_cons_at_k():
    answers = [["1/2", "0.5", "3"], ["7", "8", "9"], [None, None, None], ["x+1", "1+x", "x"]]
    assert cons_at_k(answers, ["\\frac12", "9", "1", "x + 1"]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        cons_at_k(answers, ["1"])
