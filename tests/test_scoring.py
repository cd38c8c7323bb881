"""Tests for nanor1/scoring.py: pass@k against brute-force enumeration, pass@1 averaging, majority vote, cons@k
(ties, no answers, equivalent spellings), and bootstrap intervals that cover a known truth at the nominal rate."""
import itertools

import numpy as np
import pytest

from nanor1.scoring import (bootstrap_ci, cons_at_k, cons_score, curve_ks, majority_vote, mean_pass_at_1,
                            mean_with_ci, pass_at_k, pass_at_k_curve, pass_at_k_scores, vote_groups)


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
    # 1/2 wins 2-1; a three-way tie with one correct group scores 1/3; nobody answered: 0; x+1 wins 2-1
    assert cons_at_k(answers, ["\\frac12", "9", "1", "x + 1"]) == pytest.approx((1 + 1 / 3 + 0 + 1) / 4)
    with pytest.raises(ValueError):
        cons_at_k(answers, ["1"])


@pytest.mark.parametrize("answers, gold, expected", [
    (["1/2", "2", "0.5", "2"], "0.5", 0.5),                 # 2-2 tie, one side correct: half a point, either order
    (["2", "2", "1/2", "0.5"], "0.5", 0.5),
    (["1", "2", "3", "4"], "4", 0.25),                      # four-way tie
    (["1", "2", "3", "3"], "4", 0.0),
    ([None, None, None, "4"], "4", 1.0),                    # one answer among no-answers wins alone
    ([None, None], "4", 0.0), ([], "4", 0.0),               # nobody answered: wrong, not skipped
    (["\\frac{1}{2}", "0.50", "2", None, "2", None, "1/2"], "\\frac12", 1.0),   # 3 spellings of 1/2 beat 2 x "2"
])
def test_cons_score_ties_and_no_answers(answers, gold, expected):
    from nanor1.math_grader import math_equal
    assert cons_score(answers, lambda a: math_equal(a, gold)) == pytest.approx(expected)
    # the score never depends on the order of the samples
    assert cons_score(answers[::-1], lambda a: math_equal(a, gold)) == pytest.approx(expected)


def test_vote_groups_counts_equivalent_spellings():
    assert vote_groups(["0.5", "1/2", None, "2", "\\frac{1}{2}", "2"]) == [("0.5", 3), ("2", 2)]
    # a custom equality (exact strings, e.g. for equations)
    assert vote_groups(["x=1", "x = 1", "x=1"], same=lambda a, b: a == b) == [("x=1", 2), ("x = 1", 1)]


# ---- pass@k curve ----

def test_curve_ks():
    assert curve_ks(1) == [1] and curve_ks(8) == [1, 2, 4, 8] and curve_ks(6) == [1, 2, 4, 6]


def test_pass_at_k_curve_matches_enumeration():
    rng = np.random.default_rng(0)
    correct = (rng.random((7, 6)) < rng.random((7, 1))).tolist()   # 7 problems x 6 samples
    curve = pass_at_k_curve(correct)
    assert list(curve) == [1, 2, 4, 6]
    for k, v in curve.items():
        brute = np.mean([brute_pass_at_k(len(row), sum(row), k) for row in correct])
        assert v == pytest.approx(brute, abs=1e-12)
        assert pass_at_k_scores(correct, k) == pytest.approx([brute_pass_at_k(6, sum(r), k) for r in correct])
    assert curve[1] == pytest.approx(mean_pass_at_1(correct))
    assert all(a <= b for a, b in zip(list(curve.values()), list(curve.values())[1:]))  # never falls with k
    # problems with different sample counts: the curve stops at the smallest n
    assert list(pass_at_k_curve([[True, False], [False] * 5])) == [1, 2]


# ---- bootstrap confidence intervals ----

def test_bootstrap_is_deterministic_and_sane():
    scores = np.random.default_rng(1).random(50)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    lo, hi = bootstrap_ci(scores)
    assert lo < scores.mean() < hi
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)                     # no spread, no width
    assert bootstrap_ci(np.full((3, 10), 0.25)) == (0.25, 0.25)
    assert mean_with_ci([0, 1, 1, 0])["mean"] == 0.5
    for bad in ([], [[[0.5]]]):
        with pytest.raises(ValueError):
            bootstrap_ci(bad)


def simulate_coverage(n_sets, n_seeds, rng):
    """Share of simulated evaluations whose 95% CI covers the true pass@1. Each: 60 problems whose accuracies q are
    drawn from Beta(2, 3) (mean p = 0.4), then n_seeds x 4 samples of each problem."""
    covered = 0
    for i in range(n_sets):
        q = rng.beta(2, 3, size=60)                                          # [P]
        samples = rng.random((n_seeds, 60, 4)) < q[None, :, None]           # [S, P, k]
        lo, hi = bootstrap_ci(samples.mean(-1), n_boot=500, seed=i)        # scores [S, P]
        covered += lo <= 0.4 <= hi
    return covered / n_sets


def test_bootstrap_covers_known_p_at_nominal_rate():
    rng = np.random.default_rng(0)
    one_seed = simulate_coverage(200, 1, rng)
    assert 0.90 <= one_seed <= 0.99, one_seed     # too narrow or too wide both fail
    three_seeds = simulate_coverage(200, 3, rng)
    assert 0.90 <= three_seeds <= 0.99, three_seeds


def test_bootstrap_over_seeds_sees_seed_noise():
    """With one problem and many seeds, only the seed resampling can give the interval a width."""
    scores = np.random.default_rng(2).random((8, 1))    # [S=8, P=1]
    lo, hi = bootstrap_ci(scores)
    assert hi - lo > 0.1 and lo < scores.mean() < hi
