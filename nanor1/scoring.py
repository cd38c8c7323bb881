"""
Scoring as R1 reports it (paper sec. 3.1, "Evaluation Setup"): k samples per problem at temperature 0.6, then

    pass@1 = (1/k) * sum_i p_i          the mean correctness of the k samples, averaged over problems
    cons@k                              majority vote over the k answers (equivalent answers vote together)
    pass@k = 1 - C(n-c, k) / C(n, k)    the unbiased estimator of Chen et al. (2021) from n samples, c correct

pass_at_k uses the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
"""
import math

from nanor1.math_grader import math_equal


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn (without replacement) from n, c of them correct, is correct."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_1(correct: list[list[bool]]) -> float:
    """pass@1 averaged over k samples per problem, then over problems. correct[problem][sample]."""
    if not correct or any(len(row) == 0 for row in correct):
        raise ValueError("need at least one problem and one sample per problem")
    return sum(sum(map(bool, row)) / len(row) for row in correct) / len(correct)


def _same(a: str, b: str) -> bool:
    """Equivalent answers, both ways (math_equal treats its second argument as the gold, which can be stricter)."""
    try:
        return math_equal(a, b) and math_equal(b, a)
    except ValueError:  # one of them is not parseable as a gold: only identical strings agree
        return a.strip() == b.strip()


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common answer, grouping equivalent ones; None answers do not vote; ties go to the earliest answer."""
    groups: list[list] = []  # [first answer of the group, votes]
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if _same(a, g[0]):
                g[1] += 1
                break
        else:
            groups.append([a, 1])
    if not groups:
        return None
    return max(groups, key=lambda g: g[1])[0]  # max keeps the first of equal counts


def cons_at_k(answers_per_problem: list[list[str | None]], golds: list[str]) -> float:
    """Share of problems whose majority-vote answer equals the gold."""
    if len(answers_per_problem) != len(golds) or not golds:
        raise ValueError(f"{len(answers_per_problem)} answer lists for {len(golds)} golds")
    hits = 0
    for answers, gold in zip(answers_per_problem, golds):
        voted = majority_vote(answers)
        hits += voted is not None and math_equal(voted, gold)
    return hits / len(golds)


if __name__ == "__main__":
    print("pass@1 of 16 samples, 4 correct:", pass_at_k(16, 4, 1), " pass@8:", round(pass_at_k(16, 4, 8), 4))
    print("vote:", majority_vote(["1/2", "0.5", None, "2", "\\frac{1}{2}", "2"]))
    print("cons@3:", cons_at_k([["1/2", "0.5", "3"], ["7", "8", "9"]], ["\\frac12", "9"]))
