"""Tests for nanor1/latex.py: normalisation, parsing, evaluation and bracket-aware scanning, on their own."""
from fractions import Fraction

import pytest

from nanor1.latex import (N_POINTS, ParseError, canon, evaluate, find_top, match_brace, normalize, parse, split_rel,
                          split_top, wrapped)


@pytest.mark.parametrize("raw, norm", [
    ("$\\dfrac{1}{2}$", "\\frac{1}{2}"), ("\\left( 1, 2 \\right)", "( 1, 2 )"), ("90^{\\circ}", "90"),
    ("50\\%", "50%"), ("x \\leq 3", "x <= 3"), ("x \\neq 3", "x != 3"), ("−5", "-5"), ("10,\\!080", "10080"),
    ("\\boxed{\\mathbf{7}}", "7"), ("\\displaystyle 3 \\quad", "3"),
])
def test_normalize(raw, norm):
    assert normalize(raw) == norm


def test_canon_keeps_a_space_between_numbers():
    assert canon("2 3") == "2 3" and canon("2 + 3") == "2+3"


@pytest.mark.parametrize("text, value", [
    ("\\frac{1}{2}+\\frac13", Fraction(5, 6)), ("2^{10}", Fraction(1024)), ("\\frac12", Fraction(1, 2)),
    ("2\\frac{1}{3}", Fraction(7, 3)), ("-3!", Fraction(-6)), ("\\binom{5}{2}", Fraction(10)), ("6:3", Fraction(2)),
    ("\\sqrt[3]{27}", 3.0), ("\\log_2 8", 3.0), ("|-4|", 4.0), ("\\sin^{-1} 1", 1.5707963267948966),
])
def test_evaluate_numbers(text, value):
    values = evaluate(parse(text))
    assert len(values) == N_POINTS and len(set(values)) == 1
    assert (values[0] == value) if isinstance(value, Fraction) else abs(values[0] - value) < 1e-12


def test_evaluate_variables_at_distinct_points():
    x, y = evaluate(parse("x")), evaluate(parse("(x-2)(x+2)"))
    assert len(set(x)) == N_POINTS and any(v.real < 0 for v in x)            # a negative point tells |x| from x
    assert all(abs(b - (a * a - 4)) < 1e-12 for a, b in zip(x, y))


@pytest.mark.parametrize("text", ["1 +", "\\frac{1}{", "\\foo{1}", "x^^2", "(" * 100 + "1" + ")" * 100, "2 3"])
def test_parse_errors(text):
    with pytest.raises(ParseError):
        parse(text)


@pytest.mark.parametrize("text", ["\\frac{1}{0}", "9^{9^{9}}", "0^{-1}"])
def test_evaluate_refuses_undefined_or_huge(text):
    with pytest.raises(ArithmeticError):
        evaluate(parse(text))


def test_bracket_scanning():
    assert match_brace("\\frac{a\\}{b}}c", 5) == 13 and match_brace("{", 0) == -1
    assert split_top("(1, 2), [3, 4]", ",") == ["(1, 2)", " [3, 4]"]
    assert find_top("(a \\cup b) \\cup c", "\\cup") == [11]
    assert split_rel("-2 <= x < 7") == (["-2 ", " x ", " 7"], ["<=", "<"])
    assert wrapped("(1, 2)", "(", ")") and not wrapped("(1) + (2)", "(", ")")
