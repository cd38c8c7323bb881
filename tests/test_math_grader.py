"""Tests for nanor1/math_grader.py: extraction, equivalence, answer families written another way, refusals that keep
the reward unhackable, and agreement with answer-grading cases taken from public grader test suites
(shared/data/math_equal_cases.jsonl). nanor1/latex.py, which it parses with, has its own tests/test_latex.py."""
import json
import os
import re
from pathlib import Path

import pytest

from nanor1.math_grader import MAX_PRED_CHARS, _equal, _parse_gold, extract_answer, grade, math_equal

DATA = Path(os.environ.get("NANOR1_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _jsonl(name: str) -> list[dict]:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found (set NANOR1_DATA)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- extraction -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, expected", [
    ("<think> 6 * 7 </think> <answer> 42 </answer>", "42"),
    ("<answer>1</answer> wait, no. <answer>2</answer>", "2"),                 # the last tag wins
    ("<think>..</think><answer> so it is \\boxed{7} </answer>", "7"),          # a box inside the tag is unwrapped
    ("We get $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("so $\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),                              # escaped braces do not end the box
    ("\\fbox{3}", "3"),
    ("roots \\boxed{1} and \\boxed{-2}.", "1, -2"),                          # adjacent boxes form a list
    ("\\boxed{5} is wrong, after much more work we find \\boxed{6}", "6"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("So the answer is 5.", "5"),
    ("Final Answer: The final answer is $28\\%$. I hope it is correct.", "$28\\%$"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("\\boxed{200} first CD. Second: \\boxed{255}. In total we have 10,455. The final answer is $10,455$.",
     "$10,455$"),                                                          # a later answer phrase beats a box
    ("I think the answer is correct.", None),                                # prose after "answer is" is not an answer
    ("no answer here", None),
    ("\\boxed{unclosed", None),
    ("", None),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("text, expected", [
    ("Therefore the probability is $\\frac{2}{3}$, as claimed", "\\frac{2}{3}"),
    ("so there are 12 distinct sequences. I hope it is correct.", "12"),
    ("\\frac{10}{9}", "\\frac{10}{9}"),                                      # a bare answer is its own answer
])
def test_extract_answer_loose(text, expected):
    assert extract_answer(text) is None  # none of these has an answer marker
    assert extract_answer(text, loose=True) == expected


# ---- equivalence ------------------------------------------------------------------------------------------------

EQUAL = [
    ("26", "26"), ("26.0", "26"), ("$26$", "26"), ("\\boxed{26}", "26"), ("x = 26", "26"), ("26", "x=26"),
    ("-26", "−26"), ("1,000,000", "1000000"), ("10,\\!080", "10080"), ("14{,}916", "14916"),
    ("\\frac{1}{2}", "0.5"), ("1/2", "\\frac12"), ("0.5", "\\dfrac{1}{2}"), ("\\tfrac34", "\\frac{3}{4}"),
    ("\\frac{-3}{8}", "-\\frac{3}{8}"), ("-0.375", "-\\frac 38"), ("2\\frac{1}{3}", "\\frac{7}{3}"),
    ("2 1/3", "7/3"), ("7/3", "2\\frac{1}{3}"), ("137.5", "137 \\frac{1}{2}"), ("0.0833333333333333", "\\frac{1}{12}"),
    ("6.72\\times 10^{-5}", ".0000672"), ("6.72e-5", ".0000672"), ("\\$18.90", "18.9"), ("18.9", "\\$18.90"),
    ("90^\\circ", "90"), ("90", "90^{\\circ}"), ("50\\%", "50"), ("0.5", "50\\%"), ("10\\%", "0.1"),
    ("15\\text{ cm}^2", "15"), ("125 miles", "125"), ("5.4", "5.4 \\text{ cents}"),
    ("3\\sqrt{13}", "\\sqrt{117}"), ("\\sqrt 2+\\sqrt 5", "\\sqrt{2}+\\sqrt{5}"), ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\frac94\\pi", "\\frac{9}{4}\\pi"), ("6366.2", "\\frac{20000}{\\pi}"), ("-2+7i", "7i - 2"),
    ("x+1", "1+x"), ("(x-2)(x+2)", "x^2-4"), ("\\frac{x}{7}+\\frac{2}{7}", "\\frac{x+2}{7}"),
    ("\\sec^2 y", "\\tan^2(y)+1"), ("\\frac{\\cos x}{\\sin x}", "\\cot x"), ("x^{2/3}", "\\sqrt[3]{x}^2"),
    ("(1, 4.5)", "\\left( 1, \\frac{9}{2} \\right)"), ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("[-1, -\\tfrac12) \\cup (0, \\infty)", "[-1,-\\frac{1}{2})\\cup(0,\\infty)"),
    ("(3, \\infty) \\cup (-\\infty, 2)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("\\{1, 2\\}", "2, 1"), ("-2, 1", "1,-2"), ("1, 2 and 3", "3, 2, 1"), ("6 \\text{ and } 8", "8, 6"),
    ("\\{1+\\sqrt5, -2, 1-\\sqrt{5}\\}", "\\{1\\pm\\sqrt{5},-2\\}"),
    ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("(2, 2), (1, 3)", "(1,3),(2,2)"), ("(p, q) = (3, 2)", "(3,2)"),
    ("\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}"),
    ("[-2, 7]", "-2 \\le x \\le 7"), ("x \\in [-2, 7]", "-2 \\leq x \\leq 7"), ("(5, \\infty)", "x > 5"),
    ("x \\geq 5", "x >= 5"), ("5 \\geq x", "x \\le 5"), ("-x > -1", "x < 1"), ("x \\neq 3", "x != 3"),
    ("y = 2x + 3", "2x - y + 3 = 0"), ("x^2/16 + y^2/12 = 1/4", "x^2/4+y^2/3=1"),
    ("\\text{(C)}", "C"), ("C", "\\text{(C)}"), ("\\text{Even}", "even"), ("2516_8", "2516_8"), ("12:00", "12:00"),
]

NOT_EQUAL = [
    ("27", "26"), ("25.9999", "26"), ("26.0001", "26"), ("16386.17", "16386.20"), ("0.33", "\\frac{1}{3}"),
    ("x", "2"), ("2x", "x"), ("|x|", "x"), ("x+1", "x+1.001"), ("e", "2.718281828"), ("1,2", "1.2"),
    ("32, 349", "32349"), ("(1, 2]", "(1, 2)"), ("[5, \\infty)", "(5, \\infty)"), ("(2, 1)", "(1, 2)"),
    ("\\{1,3\\}", "(1,3)"), ("x > 5", "x < 5"), ("x \\le 5", "x < 5"), ("x + y - z + 2 = 0", "5x - 7y + 11z + 4 = 0"),
    ("0 = 0", "x = 5"), ("x = x", "x = 5"), ("1 = 1", "1"), ("11a+c", "7 = 11a+c"), ("0", "a + 3z = 0"),
    ("-2 \\le x \\le 7", "x \\in [-2,7]"),   # a relation does not answer a set (a set may answer a relation)
    ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}"), ("2021", "\\pm 2021"), ("1, 2", "1, 2, 3"), ("\\text{E}", "d"),
    ("1112122_3", "1112112_3"), ("1:00", "12:00"), ("f(y)", "f(x)"), ("(+5)(b+2)", "(a+5)(b+2)"),
]


@pytest.mark.parametrize("pred, gold", EQUAL)
def test_equal(pred, gold):
    assert math_equal(pred, gold) is True


@pytest.mark.parametrize("pred, gold", NOT_EQUAL)
def test_not_equal(pred, gold):
    assert math_equal(pred, gold) is False


@pytest.mark.parametrize("pred, gold", [
    ("26 or 27", "26"), ("26, 27", "26"), ("26 and 27", "26"), ("\\boxed{26}\\boxed{27}", "26"),
    ("26\\text{ or 27}", "26"), ("26 27", "26"), ("x = 26 \\text{ or } x = 27", "x = 26"), ("\\text{(C) or (D)}", "C"),
])
def test_hedged_answers_rejected(pred, gold):
    """Several guesses are a set, and a set of guesses is not the answer."""
    assert math_equal(pred, gold) is False


@pytest.mark.parametrize("pred, gold", [
    ("3 + 7 - 5", "5"), ("2 \\cdot 13", "26"), ("52/2", "26"), ("\\frac{52}{2}", "26"), ("30 - 4", "26"),
    ("\\sqrt{676}", "26"), ("26^1", "26"), ("\\frac{28}{2}", "14"), ("13+13", "26"), ("2 \\cdot 2^{9}", "1024"),
])
def test_plain_number_gold_needs_a_plain_number(pred, gold):
    """Copying the question's arithmetic into <answer> must not pay: a plain-number gold needs a number back."""
    assert math_equal(pred, gold) is False


# ---- answer families written another way: (pred, gold, expected) ------------------------------------------------
# Each family has rows that must be accepted and rows that must stay rejected (another value, a hedge, a word that
# changes the meaning, another variable).

FAMILIES = {
    "power": [  # an integer to a literal integer power answers an integer gold
        ("2^{10}", "1024", True), ("2^10", "1024", True), ("10^6", "1000000", True), ("10^{6}", "1,000,000", True),
        ("3^4", "81", True), ("4^5", "1024", True), ("-2^{3}", "-8", True), ("(-2)^{3}", "-8", True),
        ("1024", "2^{10}", True), ("2^{10}", "x = 1024", True), ("x = 2^{10}", "1024", True),
        ("2^{10}", "1000", False), ("2^{10}", "1025", False), ("2^{11}", "1024", False), ("10^{2}", "1000", False),
        ("2^{10}", "-1024", False), ("(-2)^{10}", "-1024", False), ("2^{10}", "1024.5", False),
        ("26^1", "26", False), ("2^{10} - 1", "1023", False), ("2 \\cdot 2^{9}", "1024", False),
        ("2^{9+1}", "1024", False), ("2^{10}, 1024", "1024", True), ("2^{10} or 2^{11}", "1024", False),
    ],
    "fraction": [  # an unsimplified fraction answers its simplified form, unless it is a division left undone
        ("\\frac{6}{8}", "\\frac34", True), ("4/6", "2/3", True), ("6/8", "3/4", True), ("\\frac{6}{8}", "0.75", True),
        ("-\\frac{6}{8}", "-\\frac{3}{4}", True), ("\\frac{-4}{6}", "-\\frac23", True),
        ("\\dfrac{10}{4}", "\\frac{5}{2}", True), ("\\frac{10}{4}", "2.5", True), ("\\frac{3}{4}", "\\frac{6}{8}", True),
        ("\\frac{12}{16}", "\\frac{3}{4}", True), ("\\frac{28}{6}", "\\frac{14}{3}", True),
        ("\\frac{50}{100}", "50\\%", True), ("\\frac{14}{6}", "2\\frac{1}{3}", True),
        ("\\frac{6}{8}", "\\frac23", False), ("4/6", "3/4", False), ("\\frac{6}{8}", "-\\frac34", False),
        ("\\frac{7}{8}", "\\frac34", False), ("\\frac{6}{8}", "0.7", False), ("\\frac{52}{2}", "26", False),
        ("\\frac{10}{2}", "5", False), ("\\frac{0}{4}", "0", False), ("\\frac{6}{8} \\cdot 1", "\\frac34", False),
        ("\\frac{6}{8} + \\frac{0}{8}", "\\frac34", False), ("\\frac{6}{8}, \\frac{2}{3}", "\\frac34", False),
    ],
    "unit": [  # a trailing unit word is dropped, a word that changes the value is not
        ("12 cm", "12", True), ("5 apples", "5", True), ("3 hours", "3", True), ("45^\\circ", "45", True),
        ("45 degrees", "45", True), ("45°", "45", True), ("45 degrees", "45^\\circ", True),
        ("5 red apples", "5", True),
        ("7 marbles", "7", True), ("18 \\text{ apples}", "18", True), ("\\frac{3}{4} cup", "\\frac34", True),
        ("2.5 liters", "2.5", True), ("12 cm", "12 \\text{ cm}", True), ("40 mph", "40", True),
        ("1,200 tickets", "1200", True), ("x = 5 apples", "5", True), ("5 Apples", "5", True),
        ("5 thousand", "5", False), ("5 thousand", "5000", False), ("3 dozen", "3", False), ("2 pi", "2", False),
        ("5 squared", "5", False), ("5 million", "5", False), ("3 halves", "3", False), ("5 apples", "6", False),
        ("5 apples or 6", "5", False), ("5 or more", "5", False), ("5 and 6", "5", False), ("5 x", "5", False),
        ("5 ab", "5", False), ("5 is not right", "5", False), ("5\\text{ thousand}", "5", False),
        ("5 more apples", "5", False), ("5 factorial", "5", False), ("12 cm", "13", False), ("2 sin", "2", False),
        ("5 apples", "5x", False), ("3 tens", "3", False), ("5 fewer", "5", False),
    ],
    "equation": [  # "a = b" chains: the last side is the answer; a name answers only an equation for that name
        ("x = 2 + 3 = 5", "5", True), ("\\frac{10}{2} = 5", "5", True), ("2 + 3 = 5", "5", True),
        ("6 \\times 7 = 42", "42", True), ("48/2 = 24", "24", True), ("x = \\frac{10}{2} = 5", "x = 5", True),
        ("\\frac{6}{8} = \\frac{3}{4}", "\\frac34", True), ("2^{10} = 1024", "1024", True), ("x = 5", "5", True),
        ("5", "x = 5", True), ("a = 5", "a=5", True), ("a_{1} = 5", "a_1 = 5", True), ("f(x) = x^2", "f(x)=x^2", True),
        ("y = 2x+3", "y = 3 + 2x", True),
        ("\\frac{10}{2} = 5", "10", False), ("x = 2 + 3 = 5", "6", False), ("2 + 3 = 6", "5", False),
        ("5 = 2 + 3", "5", False), ("x = 5", "y = 5", False), ("y = 5", "x = 5", False), ("k = 5", "n = 5", False),
        ("1 = 1", "1", False), ("5 = 5", "5", False), ("x = 5", "x = 6", False), ("x = 5 = 6", "5", False),
        ("10/2 = 5, 6", "5", False), ("y = 2x+3", "x = 2y+3", False),
    ],
}


@pytest.mark.parametrize("pred, gold, expected", [row for rows in FAMILIES.values() for row in rows])
def test_answer_families(pred, gold, expected):
    assert math_equal(pred, gold) is expected


def test_expression_gold_accepts_equivalent_expressions():
    assert math_equal("\\sqrt{52}", "2\\sqrt{13}") and math_equal("2 \\cdot 13 + x", "26 + x")
    assert math_equal("0.5774", "\\frac{\\sqrt{3}}{3}")           # a decimal is an approximation: 1e-4 relative
    assert not math_equal("\\frac{20001}{\\pi}", "\\frac{20000}{\\pi}")   # an exact expression must be exact


@pytest.mark.parametrize("gold", ["", "   ", "\\frac{1}{", "\\frac{1}{0}", "2 3", "x^^2", "\\foo{1}", "1 +", None,
                                  "1" * 6000])
def test_unparseable_gold_raises(gold):
    with pytest.raises(ValueError, match="gold"):
        math_equal("1", gold)


@pytest.mark.parametrize("pred", [
    None, 26, "", "1e9999", "\\frac{1}{0}", "0^{-1}", "9^{9^{9}}", "9^9^9^9", "10^{10^{10}}", "(-1)^{0.5} + \\log 0",
    "(" * 10_000 + "1" + ")" * 10_000, "\\sqrt" * 300 + "{2}", "1+" * 400 + "1", "\\pm" * 100 + "1",
    "1," * 400 + "1", "x" * (MAX_PRED_CHARS + 1), "9" * 100_000, "\x00\ud7ff🙂中文", "\\begin{pmatrix}" * 50,
    "1000!!!", "\\binom{10^{9}}{3}",
])
def test_adversarial_pred_is_just_wrong(pred):
    assert math_equal(pred, "26") is False
    assert grade(str(pred), "26") in (True, False)


def test_grade_extracts_from_free_text():
    assert grade("Thus the area is $\\boxed{15\\mbox{ cm}^2}$.", "$15\\mbox{ cm}^2$")
    assert grade("so $x \\geq 5$ is the solution.", "$x >= 5$")
    assert not grade("The final answer is $(0, 1)$. I hope it is correct.", "$[0,1)$")


# ---- real data --------------------------------------------------------------------------------------------------

def test_math_equal_cases_agreement():
    """Agreement with the verdicts of public grader test suites; no caveat-free wrong answer may be accepted."""
    cases = _jsonl("math_equal_cases.jsonl")
    agree, clean, clean_agree, accepted_false = 0, 0, 0, []
    for case in cases:
        try:
            verdict = (grade(case["pred"], case["gold"]) if case["kind"] == "extract_and_compare"
                       else math_equal(case["pred"], case["gold"]))
        except ValueError:  # a gold in notation we do not parse (\sum, ...): not equal
            verdict = False
        ok = verdict == case["equal"]
        agree += ok
        if not case["caveats"]:
            clean += 1
            clean_agree += ok
            if verdict and not case["equal"]:
                accepted_false.append(case["id"])
    print(f"agreement: all {agree}/{len(cases)}, caveat-free {clean_agree}/{clean}")
    assert not accepted_false, f"accepted answers the suites call wrong: {accepted_false}"
    assert clean_agree / clean >= 0.94   # measured 252/261 = 0.966


def test_benchmark_golds_parse_and_equal_themselves():
    for name in ("gsm8k_test.jsonl", "math500.jsonl", "aime2024.jsonl"):
        for r in _jsonl(name):
            _, node = _parse_gold(r["answer"])          # raises ValueError if it does not parse
            assert _equal(node, node), r["answer"]     # structurally, not only as the same string
            assert math_equal(f"$\\boxed{{{r['answer']}}}$", r["answer"]), r["answer"]


def test_benchmark_golds_with_one_digit_or_sign_changed_are_rejected():
    golds = sorted({r["answer"] for r in _jsonl("math500.jsonl")})
    accepted = []
    for gold in golds:
        if "\\text" in gold or "\\mbox" in gold:  # units are ignored: cm^3 for cm^2 would pass
            continue
        mutants = [gold[:m.start()] + str((int(m.group()) + 1) % 10) + gold[m.end():]
                   for m in re.finditer(r"\d", gold)]
        mutants += [gold[:m.start()] + {"+": "-", "-": "+"}[m.group()] + gold[m.end():]
                    for m in re.finditer(r"[+-]", gold)]
        accepted += [(m, gold) for m in mutants if math_equal(m, gold)]
    assert not accepted


def test_benchmark_solutions_grade_correct():
    """Each MATH-500 reference solution (its \\boxed{}) and GSM8K solution ("#### n") grades correct; raw
    GSM8K answers with thousands commas and zero-padded AIME answers equal the canonical ones."""
    math500 = _jsonl("math500.jsonl")
    assert all(grade(r["solution"], r["answer"]) for r in math500)
    # ... and a solution checked against another problem's answer is rejected unless the answers coincide
    shifted = [(r, math500[(i + 7) % len(math500)]) for i, r in enumerate(math500)]
    wrong = [(r["answer"], o["answer"]) for r, o in shifted if grade(r["solution"], o["answer"])
             and not math_equal(r["answer"], o["answer"])]
    assert not wrong
    gsm8k = _jsonl("gsm8k_test.jsonl")
    assert all(grade(r["solution"], r["answer"]) and math_equal(r["answer_raw"], r["answer"]) for r in gsm8k)
    assert all(math_equal(r["answer_raw"], r["answer"]) for r in _jsonl("aime2024.jsonl"))
