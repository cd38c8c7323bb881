"""Tests for nanor1/rewards.py: each rule reward on right, wrong, malformed and adversarial completions, the
composition used by the RL loops, and a fuzz test (no exception, bounded time per call, on any input)."""
import random
import time
from types import SimpleNamespace

import pytest

import nanor1.sandbox
from nanor1.math_grader import extract_answer, grade, math_equal
from nanor1.rewards import (REWARDS, accuracy_reward, compute_rewards, countdown_reward, format_reward,
                            language_consistency_reward)
from nanor1.templates import get_template

ZERO, R1 = get_template("r1-zero"), get_template("r1")


def problem(answer="26", kind="math", **data):
    return SimpleNamespace(id="p0", question="q", answer=answer, kind=kind, data=data)


def wrap(answer, think="reasoning"):
    return f"<think> {think} </think> <answer> {answer} </answer>"


# ---- format -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion", [
    "<think> 13 * 2 = 26 </think> <answer> 26 </answer>",
    "<think>a</think><answer>b</answer>",
    "\n <think>\nstep 1\nstep 2\n</think>\n\n<answer>\n26\n</answer>\n ",
])
def test_format_reward_accepts_exact_template(completion):
    assert format_reward(completion, ZERO) == 1.0


@pytest.mark.parametrize("completion", [
    "26", "<answer> 26 </answer>", "<think> hm </think>",                              # missing parts
    "<think>  </think> <answer> 26 </answer>", "<think> a </think> <answer>  </answer>",   # empty parts
    "<think> a </think> <think> b </think> <answer> 26 </answer>",                   # duplicated
    "<think> a <think> b </think> </think> <answer> 26 </answer>",                   # nested
    "<think> a <answer> 1 </answer> </think> <answer> 26 </answer>",
    "Sure! <think> a </think> <answer> 26 </answer>",                                # text before <think>
    "<think> a </think> <answer> 26 </answer> I hope it is correct.",                # text after </answer>
    "<think> a </think> so <answer> 26 </answer>",                                   # text between
    "<answer> 26 </answer> <think> a </think>",                                      # wrong order
    "<think> a </think> <answer> 26", None, 26,
])
def test_format_reward_rejects_everything_else(completion):
    assert format_reward(completion, ZERO) == 0.0


# ---- accuracy (math) --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, gold, expected", [
    (wrap("26"), "26", 1.0),
    (wrap("\\boxed{26}"), "26", 1.0),
    (wrap("$x = \\frac{1}{2}$"), "0.5", 1.0),
    (wrap("27"), "26", 0.0),
    (wrap("26 or 27"), "26", 0.0),
    (wrap("24, 25, 26, 27"), "26", 0.0),                   # a list of guesses
    (wrap("2 \\cdot 13"), "26", 0.0),                      # the question's arithmetic copied, not solved
    (wrap(""), "26", 0.0),
    ("<think> so the answer is \\boxed{26} </think>", "26", 0.0),   # accuracy reads the <answer> tag only
    ("The answer is 26.", "26", 0.0),
    ("<think> a </think> <answer> 26", "26", 0.0),         # unclosed tag
    (wrap("1e9999"), "26", 0.0), (wrap("\\frac{1}{0}"), "26", 0.0), (wrap("(" * 5000), "26", 0.0),
    (None, "26", 0.0),
])
def test_accuracy_reward_math(completion, gold, expected):
    assert accuracy_reward(completion, problem(gold), ZERO) == expected


def test_accuracy_reward_raises_on_malformed_problem_not_on_output():
    with pytest.raises(ValueError, match="gold"):
        accuracy_reward(wrap("26"), problem("\\frac{1}{"), ZERO)
    with pytest.raises(ValueError, match="unknown kind"):
        accuracy_reward(wrap("26"), problem("26", kind="chess"), ZERO)


def test_accuracy_reward_dispatches_code_to_sandbox(monkeypatch):
    calls = []
    monkeypatch.setattr(nanor1.sandbox, "code_reward", lambda completion, tests: calls.append(tests) or 0.5)
    tests = [{"input": "1\n", "output": "2\n"}]
    assert accuracy_reward(wrap("```python\nprint(2)\n```"), problem("", kind="code", tests=tests), ZERO) == 0.5
    assert calls == [tests]


# ---- accuracy (countdown) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, numbers, target, expected", [
    ("(6 - 2) * 3 + 12", [6, 2, 3, 12], 24, 1.0),
    ("12 + 3 * (6 - 2)", [2, 3, 6, 12], 24, 1.0),                    # any order of the numbers
    ("(6 - 2) * 3 + 12 = 24", [6, 2, 3, 12], 24, 1.0),               # "= target" is allowed
    ("6 / (1 - 3 / 4)", [1, 3, 4, 6], 24, 1.0),                      # exact rational intermediate
    ("2 * 2 * 3", [2, 2, 3], 12, 1.0),                               # a number given twice is used twice
    ("(6 - 2) * 3 + 12 = 25", [6, 2, 3, 12], 24, 0.0),
    ("(6 - 2) * 3 + 11", [6, 2, 3, 12], 23, 0.0),                    # a number not given
    ("(6 - 2) * 3", [6, 2, 3, 12], 12, 0.0),                         # a number unused
    ("6 * 2 + 6 * 2", [6, 2, 3, 12], 24, 0.0),                       # a number used twice
    ("2 * 3", [2, 2, 3], 6, 0.0),
    ("6 - 2 * 3 + 12 + 12", [6, 2, 3, 12], 24, 0.0),
    ("12 / (6 - 6) + 3 + 2", [6, 6, 12, 3, 2], 5, 0.0),              # division by zero
    ("-6 + 2 * 3 + 24", [6, 2, 3, 24], 24, 0.0),                     # no unary minus
    ("6.0 * 4", [6, 4], 24, 0.0), ("24", [24], 23, 0.0), ("", [1], 1, 0.0), ("24 24", [24, 24], 24, 0.0),
    ("__import__('os').system('ls')", [1], 1, 0.0), ("1e9999", [1], 1, 0.0), ("(" * 100 + "1" + ")" * 100, [1], 1, 0.0),
    ("1 + " * 3000 + "1", [1], 1, 0.0), ("２４", [24], 24, 0.0),
])
def test_countdown_reward(answer, numbers, target, expected):
    assert countdown_reward(answer, numbers, target) == expected
    assert accuracy_reward(f"<think> t </think> <answer> {answer} </answer>",
                           problem(str(target), kind="countdown", numbers=numbers, target=target), ZERO) == expected


def test_countdown_needs_answer_tag_and_dispatches():
    p = problem("24", kind="countdown", numbers=[6, 2, 3, 12], target=24)
    assert accuracy_reward("(6 - 2) * 3 + 12", p, ZERO) == 0.0                  # no answer tag
    assert accuracy_reward(wrap("(6 - 2) * 3 + 12"), p, ZERO) == 1.0
    assert accuracy_reward(wrap("24"), p, ZERO) == 0.0


# ---- the R1 format: <think> reasoning </think> then a summary whose \boxed{} holds the answer --------------------

def r1(reasoning="3 + 7 = 10\n10 + 5 = 15", summary="The sum is \\boxed{15}."):
    return f"<think>\n{reasoning}\n</think>\n{summary}"


@pytest.mark.parametrize("completion, fmt, acc", [
    (r1(), 1.0, 1.0),
    (r1(summary="Adding them gives 15, so the answer is \\boxed{15}."), 1.0, 1.0),
    (r1(summary="The answer is \\boxed{16}."), 1.0, 0.0),                            # well formed, wrong
    (r1(summary="The answer is 15."), 0.0, 0.0),                                     # no boxed answer
    (r1(reasoning="so \\boxed{15}", summary="The answer is 15."), 0.0, 0.0),       # a box in the reasoning earns nothing
    (r1(summary="\\boxed{14} or \\boxed{15}"), 0.0, 0.0),                          # two boxes: not one answer
    (r1(reasoning="  "), 0.0, 1.0),                                                  # empty reasoning
    ("The answer is \\boxed{15}.", 0.0, 0.0),                                       # no thinking block
    ("Sure! " + r1(), 0.0, 1.0),                                                     # text before <think>
    (r1() + "<think> more </think>", 0.0, 0.0),                                      # two thinking blocks
    ("<think> 15 </think> <answer> 15 </answer>", 0.0, 0.0),                         # R1-Zero's tags
])
def test_r1_format_and_accuracy(completion, fmt, acc):
    p = problem("15")
    assert format_reward(completion, R1) == fmt
    assert accuracy_reward(completion, p, R1) == acc
    total, parts = compute_rewards([completion], [p], {"accuracy": 1.0, "format": 0.1}, R1)
    assert parts == {"accuracy": [acc], "format": [fmt]} and total == [pytest.approx(acc + 0.1 * fmt)]


def test_r1_countdown_and_language_read_the_right_parts():
    p = problem("24", kind="countdown", numbers=[6, 2, 3, 12], target=24)
    assert accuracy_reward(r1(summary="So \\boxed{(6 - 2) * 3 + 12}."), p, R1) == 1.0
    assert accuracy_reward(r1(summary="So \\boxed{24}."), p, R1) == 0.0
    # the language reward reads the reasoning only, not the summary
    assert language_consistency_reward(r1(reasoning="我们先相加", summary="The answer is \\boxed{5}."), "zh", R1) == 1.0
    assert ZERO.final_answer(r1()) is None and R1.final_answer(wrap("15")) is None  # each reads only its own format


# ---- language consistency ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, lang, expected", [
    ("<think> first we add the two numbers </think> <answer> 5 </answer>", "en", 1.0),
    ("<think> 我们先把两个数相加 </think> <answer> 5 </answer>", "zh", 1.0),
    ("<think> 我们先把两个数相加 </think> <answer> 5 </answer>", "en", 0.0),
    ("<think> 我们 we add </think>", "zh", 0.5),                    # 2 CJK characters, 2 English words
    ("<think> 我们 we add </think>", "en", 0.5),
    ("<think> so $x^2 + 1 = 10$, \\frac{9}{3} = 3, x = 3 </think>", "en", 1.0),   # math and numbers are neutral
    ("<think> мы складываем числа then add </think>", "en", 0.4),  # 3 Cyrillic words, 2 English words
    ("<think> </think> <answer> many english words here </answer>", "en", 0.0),  # only the reasoning counts
    ("no tags at all here", "en", 1.0), ("", "en", 0.0), ("12 + 7 = 19 !!", "zh", 0.0),
])
def test_language_consistency_reward(completion, lang, expected):
    assert language_consistency_reward(completion, lang, ZERO) == pytest.approx(expected)


def test_language_consistency_rejects_unknown_language():
    with pytest.raises(ValueError, match="supported"):
        language_consistency_reward("hello there", "fr", ZERO)


# ---- composition ------------------------------------------------------------------------------------------------

def test_compute_rewards_weights_and_components():
    completions = [wrap("26"), wrap("27"), "26"]
    problems = [problem("26")] * 3
    total, parts = compute_rewards(completions, problems, {"accuracy": 1.0, "format": 0.5}, ZERO)
    assert parts == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}
    assert total == [1.5, 0.5, 0.0]
    total, parts = compute_rewards(completions, problems, {"accuracy": 1.0, "language": 0.1}, ZERO)
    assert total == pytest.approx([1.1, 0.1, 0.0]) and set(parts) == {"accuracy", "language"}


def test_compute_rewards_errors():
    with pytest.raises(ValueError, match="valid names.*accuracy"):
        compute_rewards([wrap("1")], [problem("1")], {"acuracy": 1.0}, ZERO)
    with pytest.raises(ValueError, match="completions"):
        compute_rewards([wrap("1")], [], {"accuracy": 1.0}, ZERO)


# ---- fuzz: any string, no exception, bounded time ---------------------------------------------------------------

PIECES = list("0123456789+-*/^()[]{}|!.,;:=<>_$%\\ xyzaei&#'\"\n") + [
    "\\frac", "\\sqrt", "\\boxed{", "\\pi", "\\infty", "\\pm", "\\left(", "\\right)", "\\text{", "\\cup", "\\in",
    "\\le", "\\cdot", "<answer>", "</answer>", "<think>", "</think>", "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\",
    "e9999", "9^9^9", "\\sin", "\\log_", " or ", "the answer is ", "####", "中", "Ж", "\x00", "\ud7ff", "🙂"]
ADVERSARIAL = [
    "(" * 5000 + "1" + ")" * 5000, "{" * 5000, "\\boxed{" * 3000, "$" * 10_000, "<answer>" * 3000, "9^" * 2000 + "9",
    "-" * 900 + "1", "\\sqrt" * 400 + "{2}", "1+" * 490 + "1", "\\pm" * 300 + "1", "1," * 499 + "1", "<=" * 400,
    "2^{2^{2^{2^{2^{2^{2^{2}}}}}}}", "99999999999999999999^99999", "\\text{" * 500, "|" * 900, "the answer is " * 2000,
    "\\begin{pmatrix}" + "1&" * 500 + "\\end{pmatrix}", "\\boxed{" + "1" * 100_000 + "}", "a" * 100_000,
    "<think>" + "word " * 20_000 + "</think><answer>1</answer>",
]


def test_fuzz_rewards_never_raise_and_stay_fast():
    rng = random.Random(0)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.choice([1, 5, 20, 80, 300]))) for _ in range(1500)]
    golds = ["26", "\\frac{1}{2}", "x^2+1", "(1,2)", "[-2,7]", "1 \\pm \\sqrt{19}", "\\text{(C)}", "y = 2x+3"]
    math_p = [problem(g) for g in golds]
    count_p = problem("24", kind="countdown", numbers=[6, 2, 3, 12], target=24)
    calls = [
        lambda s: format_reward(s, ZERO), lambda s: accuracy_reward(s, rng.choice(math_p), ZERO),
        lambda s: accuracy_reward(wrap(s), rng.choice(math_p), ZERO), lambda s: accuracy_reward(wrap(s), count_p, ZERO),
        lambda s: language_consistency_reward(s, "en", ZERO), lambda s: language_consistency_reward(s, "zh", ZERO),
        lambda s: format_reward(s, R1), lambda s: accuracy_reward(s, rng.choice(math_p), R1),
        lambda s: accuracy_reward(s, count_p, R1), lambda s: language_consistency_reward(s, "en", R1),
        lambda s: extract_answer(s, loose=True), lambda s: math_equal(s, rng.choice(golds)),
        lambda s: grade(s, rng.choice(golds)),
    ]
    worst = 0.0
    for s in texts + ADVERSARIAL:
        for call in calls:
            t = time.perf_counter()
            out = call(s)
            worst = max(worst, time.perf_counter() - t)
            assert out is None or isinstance(out, (bool, float, str))
    assert worst < 0.5, f"slowest call took {worst:.3f}s"  # a safety bound against hangs, not a speed target


def test_reward_table_names():
    assert set(REWARDS) == {"accuracy", "format", "language"}
