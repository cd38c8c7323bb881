"""
Scoring as R1 reports it (paper sec. 3.1, "Evaluation Setup"): k samples per problem at temperature 0.6, then

    pass@1 = (1/k) * sum_i p_i          the mean correctness of the k samples, averaged over problems
    cons@k                              majority vote over the k answers (equivalent answers vote together)
    pass@k = 1 - C(n-c, k) / C(n, k)    the unbiased estimator of Chen et al. (2021) from n samples, c correct

pass_at_k uses the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.

The vote's rules, which published evaluations rarely state:
  - a sample without an extracted answer (None) casts no vote; a problem where no sample answered scores 0;
  - equivalent answers (0.5, 1/2, \\frac{1}{2}) form one group, counted under the first spelling seen;
  - a tie between m top groups scores the share of them that are correct: the expected score of a uniformly random
    tie-break, so cons@k does not depend on the order of the samples. majority_vote, which must return one
    answer, returns the first-seen group of a tie.

Error bars (the paper reports none; "A Sober Look at Progress in LM Reasoning" finds 5-15 points of seed-to-seed
spread on small benchmarks): bootstrap_ci is a 95% percentile bootstrap of the mean over problems, with a fixed seed.
Given several seeds' scores [S, P] it resamples problems, then seeds within each resampled problem (a two-level
bootstrap), so the interval covers both which problems were drawn and which samples the model happened to draw.
"""
import math
from typing import Callable

import numpy as np

from nanor1.math_grader import math_equal


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn (without replacement) from n, c of them correct, is correct."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _check_rows(correct: list[list[bool]]):
    if not correct or any(len(row) == 0 for row in correct):
        raise ValueError("need at least one problem and one sample per problem")


def mean_pass_at_1(correct: list[list[bool]]) -> float:
    """pass@1 averaged over k samples per problem, then over problems. correct[problem][sample]."""
    _check_rows(correct)
    return sum(sum(map(bool, row)) / len(row) for row in correct) / len(correct)


def curve_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself: the points of a pass@k curve from n samples per problem."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def pass_at_k_scores(correct: list[list[bool]], k: int) -> list[float]:
    """Per-problem unbiased pass@k from each problem's samples. correct[problem][sample]."""
    _check_rows(correct)
    return [pass_at_k(len(row), sum(map(bool, row)), k) for row in correct]


def pass_at_k_curve(correct: list[list[bool]]) -> dict[int, float]:
    """{k: pass@k averaged over problems} for k in curve_ks(n), n the fewest samples any problem has."""
    _check_rows(correct)
    return {k: float(np.mean(pass_at_k_scores(correct, k))) for k in curve_ks(min(map(len, correct)))}


# ---- majority vote --------------------------------------------------------------------------------------------


def _same(a: str, b: str) -> bool:
    """Equivalent answers, both ways (math_equal treats its second argument as the gold, which can be stricter)."""
    try:
        return math_equal(a, b) and math_equal(b, a)
    except ValueError:  # one of them is not parseable as a gold: only identical strings agree
        return a.strip() == b.strip()


def vote_groups(answers: list[str | None], same: Callable[[str, str], bool] = _same) -> list[tuple[str, int]]:
    """(first spelling, votes) per group of equivalent answers, most votes first, ties in first-seen order."""
    groups: list[list] = []  # [first answer of the group, votes]
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if same(a, g[0]):
                g[1] += 1
                break
        else:
            groups.append([a, 1])
    return [(a, v) for a, v in sorted(groups, key=lambda g: -g[1])]  # sorted() is stable: ties keep their order


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common answer, grouping equivalent ones; None answers do not vote; ties go to the earliest answer."""
    groups = vote_groups(answers)
    return groups[0][0] if groups else None


def cons_score(answers: list[str | None], is_correct: Callable[[str], bool],
               same: Callable[[str, str], bool] = _same) -> float:
    """cons@k of one problem: 1 if the majority answer is correct, 0 if wrong or nobody answered; a tie between m
    groups scores (correct groups among them) / m."""
    groups = vote_groups(answers, same)
    if not groups:
        return 0.0
    top = [a for a, v in groups if v == groups[0][1]]
    return sum(bool(is_correct(a)) for a in top) / len(top)


def cons_at_k(answers_per_problem: list[list[str | None]], golds: list[str]) -> float:
    """Share of problems whose majority-vote answer equals the gold (ties: see cons_score)."""
    if len(answers_per_problem) != len(golds) or not golds:
        raise ValueError(f"{len(answers_per_problem)} answer lists for {len(golds)} golds")
    return sum(cons_score(answers, lambda a, g=gold: math_equal(a, g))
               for answers, gold in zip(answers_per_problem, golds)) / len(golds)


# ---- confidence intervals -------------------------------------------------------------------------------------


def bootstrap_ci(scores, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score. scores [P] (one per problem) or [S, P] (S seeds' scores of
    the same P problems): resample P problems with replacement, and for [S, P] also S seeds within each drawn
    problem, n_boot times; the interval is the (1-level)/2 and (1+level)/2 quantiles of the resampled means."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]                                                       # [1, P]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores must be [P] or [S, P] and non-empty, got shape {np.shape(scores)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    S, P = x.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (P * S))                                  # bound memory: chunk * P * S indices
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        problems = rng.integers(0, P, size=(b, 1, P))                     # [b, 1, P]
        seeds = rng.integers(0, S, size=(b, S, P)) if S > 1 else np.zeros((b, 1, P), dtype=np.int64)  # [b, S, P]
        means[start:start + b] = x[seeds, problems].mean(axis=(1, 2))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_with_ci(scores, **kwargs) -> dict:
    """{"mean", "lo", "hi"}: the mean score and its bootstrap_ci (see there for the shapes)."""
    lo, hi = bootstrap_ci(scores, **kwargs)
    return {"mean": float(np.mean(scores)), "lo": lo, "hi": hi}


if __name__ == "__main__":
    print("pass@1 of 16 samples, 4 correct:", pass_at_k(16, 4, 1), " pass@8:", round(pass_at_k(16, 4, 8), 4))
    print("vote:", majority_vote(["1/2", "0.5", None, "2", "\\frac{1}{2}", "2"]))
    print("cons@3:", cons_at_k([["1/2", "0.5", "3"], ["7", "8", "9"]], ["\\frac12", "9"]))
    rng = np.random.default_rng(0)
    correct = (rng.random((100, 8)) < rng.random((100, 1))).tolist()  # 100 problems of random difficulty, 8 samples
    print("pass@k curve:", {k: round(v, 3) for k, v in pass_at_k_curve(correct).items()})
    print("pass@1 with 95% CI:", mean_with_ci([sum(r) / 8 for r in correct]))
