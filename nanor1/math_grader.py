"""
Rule-based math answer checking: the accuracy reward of R1-Zero (paper sec. 2.2.2).

R1-Zero learns from rule rewards only: "for math problems with deterministic results, the model is required to
provide the final answer in a specified format, enabling reliable rule-based verification of correctness". The
paper avoids neural reward models because they get hacked; a rule is only as good as its worst case, so this grader
is written to never pay for a wrong answer, and never to crash or hang on what a model writes.

    extract_answer(completion)   the final answer: last <answer>...</answer>, else the later of the last \\boxed{}
                                 and the last "answer is ..." / "#### ..." phrase; None if there is none
    math_equal(pred, gold)       normalise LaTeX and parse both (latex.py: a small hand-written parser, no eval,
                                 no sympy) into answer nodes (the named tuples of section 2), then compare: as
                                 strings, exact rationals, numbers with a tolerance, expressions evaluated at fixed
                                 points, tuples / intervals / sets / matrices, equations and inequalities (same
                                 solution set: the two sides' differences are proportional)
    grade(text, gold_text)       extract (loosely, also from bare "$...$" or a last number) from both, then compare;
                                 for grading free text (evaluation, grader test suites), not for rewards

Choices, several of them stricter on purpose than graders that evaluate anything (e.g. Math-Verify):
- A gold written as a plain number (26, -3, 0.15, \\frac{3}{56}, 2\\frac{1}{3}, 12%) needs a number back:
  "2 \\cdot 13", "30 - 4" or "52/2" for 26 are refused, so a policy cannot earn reward by copying the question's
  arithmetic into <answer>. Numbers include unsimplified fractions that are not integers (\\frac{6}{8} for
  \\frac34, not \\frac{10}{2} for 5) and integer powers (2^{10} for 1024).
- The last side of an "=" chain is the answer (x = 2 + 3 = 5, \\frac{10}{2} = 5), as in Math-Verify; "x = 5"
  answers "5" and "x = 5", not "y = 5".
- A unit after a number is dropped (12 cm, 5 red apples, 45^\\circ), unless the word changes the value or hedges
  (5 thousand, 3 dozen, 2 pi, 5 or more): see _NOT_UNITS. Units are not compared: 12 cm answers 12 km.
- Integer golds compare exactly; a decimal gold accepts only values within half a unit of its last digit (and
  1e-4 relative); a decimal pred of another gold is an approximation (1e-4 relative), while two exact forms must
  agree to 1e-9 (\\frac{20001}{\\pi} is not \\frac{20000}{\\pi}); formulas are compared at 4 fixed points.
- Several answers ("26 or 27", "26, 27", \\boxed{26}\\boxed{27}, 1 \\pm 2) form a set that must equal the gold's set.
- A percentage may be written with or without its sign: 28% matches 28 and 0.28 (and 28 matches 28%).
- An interval answer may match a gold inequality ("-2 <= x <= 7"), not the other way round (as Math-Verify).
- A pred longer than MAX_PRED_CHARS is refused; nesting, list sizes and exact powers are capped, no regex can
  backtrack badly, and any error on the pred side means "not equal". Only an unparseable gold raises (ValueError).
"""
import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from nanor1.latex import (MAX_DEPTH, MAX_ITEMS, ParseError, canon, evaluate, find_top, has_vars, match_brace,
                          math_spans, normalize, parse, split_rel, split_top, wrapped)

MAX_PRED_CHARS = 1000      # an extracted answer longer than this is refused: no real final answer is this long
MAX_GOLD_CHARS = 5000
MAX_SCAN_CHARS = 20_000    # extraction looks at the tail of a completion only
REL_TOL = 1e-4             # numbers
EXPR_TOL = 1e-6            # expressions with variables, compared at latex.N_POINTS fixed points


# ---------------------------------------------------------------------------------------------------------------
# 1. Extraction: where is the final answer?

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_PHRASE_RE = re.compile(r"(?i)\banswer\s*(?:is\b|:)|####")
_PHRASE_END_RE = re.compile(r"\n|\.(?=\s|$)|\bI hope\b")
_IS_RE = re.compile(r"\s(?:is|are|was|be)\s")
_GAP_NOISE_RE = re.compile(r"\\[()\[\]]|\$|\\q?quad|\\text\w*|\\[,;:! ]|\\\\|[{},;.&:]|\b(?:and|or)\b")
_TEXT_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?: ?/ ?\d+)?%?")


def _is_prose(text: str) -> bool:
    """Three words in a row ("is the solution"): a sentence, not an answer."""
    run = 0
    for tok in re.split(r"[\s,]+", text):
        tok = tok.strip(".!?:;\"'()")
        run = run + 1 if len(tok) >= 2 and tok.isascii() and tok.isalpha() else 0
        if run >= 3:
            return True
    return False


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """The last few \\boxed{...} / \\fbox{...} groups as (start, end, content), in text order."""
    starts = [m for m in _BOX_RE.finditer(text)][-16:]
    out = []
    for m in starts:
        if out and m.start() < out[-1][1]:
            continue  # a box inside the previous box
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            end = match_brace(text, j)
            if end > 0:
                out.append((m.start(), end, text[j + 1:end - 1]))
        else:  # "\boxed 5": a single token
            tok = re.match(r"[^\s$]{1,50}", text[j:j + 50])
            if tok:
                out.append((m.start(), j + tok.end(), tok.group()))
    return out


def _joinable(gap: str) -> bool:
    """Two answers separated only by "and", ",", "\\quad", "$", or a couple of words ("papers and") form one list."""
    rest = _GAP_NOISE_RE.sub(" ", gap)
    return len(gap) <= 60 and len(rest.split()) <= 3


def _join_last(text: str, groups: list[tuple[int, int, str]]) -> tuple[int, str] | None:
    """(start, content) of the last group, joined with the groups before it when only separators lie between."""
    if not groups:
        return None
    parts, start = [groups[-1][2]], groups[-1][0]
    for prev, nxt in zip(reversed(groups[:-1]), reversed(groups[1:])):
        if not _joinable(text[prev[1]:nxt[0]]):
            break
        parts.append(prev[2])
        start = prev[0]
    return start, ", ".join(reversed(parts))


def _phrase(text: str) -> tuple[int, str] | None:
    """The value after the last "answer is" / "answer:" / "####", cut at the end of its sentence."""
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():last.end() + 400].lstrip(" \t*:")
    if last.group() == "####":
        value = rest.split("\n", 1)[0]
    else:
        end = _PHRASE_END_RE.search(rest)
        value = rest[:end.start()] if end else rest
        value = _IS_RE.split(value)[-1]  # "Final Answer: The volume of $V$ is 120" -> "120"
    value = re.sub(r'^\\?"|\\?"$', "", value.strip().strip("*")).strip()
    bare = re.sub(r"\\text\{[^{}]*\}|\$[^$]*\$", " ", value)
    if not value or _is_prose(bare) or not re.search(r"[\d\\$]|^\(?[A-Za-z]\)?$", value):
        return None  # prose ("the answer is correct"), not an answer
    return last.start(), value


def extract_answer(completion: str, loose: bool = False) -> str | None:
    """The final answer in a completion, or None.

    The last <answer>...</answer> wins (inside it a \\boxed{} is unwrapped); else the later of the last \\boxed{}
    (joined with boxes just before it: "\\boxed{1} and \\boxed{2}") and the last "answer is X" / "answer: X" /
    "#### X". loose=True (for grading free text, never for rewards) also falls back to the last $...$ span or
    the last number, or to the whole text when it is short and not prose.
    """
    if not isinstance(completion, str):
        return None
    text = completion[-MAX_SCAN_CHARS:]
    i = text.rfind("<answer>")
    if i >= 0 and (j := text.find("</answer>", i)) > 0:
        inner = text[i + len("<answer>"):j].strip()
        return (_marked(inner) or inner) or None
    found = _marked(text)
    if found is not None or not loose:
        return found
    return _loose(text)


def _marked(text: str) -> str | None:
    box = _join_last(text, _boxes(text))
    phrase = _phrase(text)
    if box and phrase:
        return (box if box[0] >= phrase[0] else phrase)[1].strip() or None
    found = box or phrase
    return (found[1].strip() or None) if found else None


def _loose(text: str) -> str | None:
    spans = [s for s in math_spans(text) if s[2].strip()]
    if not spans and len(text) <= 300 and not _is_prose(text):
        return text.strip() or None  # a bare answer: "\\frac{10}{9}", "28 percent"
    span = _join_last(text, spans)
    outside, prev = [], 0  # the text with math spans blanked out, same length
    for a, b, _ in spans:
        outside += [text[prev:a], " " * (b - a)]
        prev = b
    number = None
    for m in _TEXT_NUMBER_RE.finditer("".join(outside) + text[prev:]):
        number = (m.start(), m.group())
    if span and number:
        return (span if span[0] >= number[0] else number)[1]
    found = span or number
    return found[1] if found else None



# ---------------------------------------------------------------------------------------------------------------
# 2. Answers: what a final answer is (lists, sets, tuples/intervals, unions, matrices, relations, text), each
#    number or formula in it parsed and evaluated by latex.py

class Scalar(NamedTuple):
    """One number or formula, with how it was written (which decides what it may match)."""
    text: str              # canonical source text
    ast: tuple             # latex.parse(text)
    values: tuple          # latex.evaluate(ast): N_POINTS values, None where undefined
    has_vars: bool
    pct: bool              # written with a percent sign
    form: str              # how it is written (_form): "number", "power" (2^{10}) or "expr"
    tol: str               # the tolerance it asks for as a gold: "exact" (integer), "dec" (decimal), "rel"
    decimals: int          # digits after the point of a decimal gold
    approx: bool           # written with a decimal point: an approximation, compared with REL_TOL


class Text(NamedTuple):    # \text{even}, (C), 12:00
    text: str


class Raw(NamedTuple):     # an element that did not parse: equal to nothing (a gold may not contain one)
    text: str


class Inf(NamedTuple):     # \infty, -\infty
    sign: int


class Based(NamedTuple):   # 2516_8
    digits: str
    base: str


class List(NamedTuple):    # "1, 2", "1 or 2", 1 \pm 2: compared as a set
    items: tuple


class Set(NamedTuple):     # \{1, 2\}
    items: tuple


class Union(NamedTuple):   # [0, 1) \cup (2, \infty)
    items: tuple


class Tuple(NamedTuple):   # (1, 2), [0, 1): an ordered tuple or an interval, with its brackets
    open: str
    close: str
    items: tuple


class Matrix(NamedTuple):
    rows: tuple            # tuple of rows, each a tuple of answers


class Assign(NamedTuple):  # x = 5, (p, q) = (3, 2), f(x) = x^2: a name and its value
    lhs: str               # canonical text of the name
    rhs: tuple


class Rel(NamedTuple):     # y = 2x + 3 (not a plain assignment), x < 5
    op: str                # one of latex.RELS except ≈
    lhs: Scalar
    rhs: Scalar


class Chain(NamedTuple):   # -2 <= x < 7
    ops: tuple
    sides: tuple           # len(ops) + 1 scalars


_COLLECTIONS = (List, Set, Union)
_UNIT_WORDS = re.compile(
    r"(?<=[\d}\) ])\s*(?:square\s+|sq\.?\s+|cubic\s+)?(?:units?|cm|centimeters?|mm|millimeters?|km|kilometers?|meters?|"
    r"metres?|inch(?:es)?|ft|feet|foot|yards?|miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|"
    r"months?|years?|dollars?|cents?|yuan|euros?|kg|kilograms?|grams?|lbs?|pounds?|ounces?|oz|liters?|litres?|"
    r"ml|mph|radians?|people|persons?|students?|ways|times)(?:\^\{?\d\}?)?\s*$")
# words that change a number's value or hedge it: never dropped as a unit ("5 thousand", "3 dozen", "2 pi")
_NOT_UNITS = (r"(?:or|and|not|no|none|than|more|less|fewer|over|under|plus|minus|divided|squared|cubed|"
              r"factorial|roots?|sqrt|pi|inverse|reciprocal|power|mod|modulo|percent|hundreds?|thousands?|millions?|"
              r"billions?|trillions?|dozens?|score|tens|half|halves|thirds?|quarters?|fourths?|fifths?|sixths?|"
              r"sevenths?|eighths?|ninths?|tenths?|twelfths?|hundredths?|thousandths?|about|approximately|roughly|"
              r"nearly|almost|around|least|most|maybe|perhaps|sin|cos|tan|sec|csc|cot|log|exp|sinh|cosh|tanh)")
# a unit in \text{}: up to three words ("cm", "square units"), none of them one of _NOT_UNITS
_UNIT_TEXT = re.compile(rf"(?i)\s*(?:(?!.*\b{_NOT_UNITS}\b)[a-z]+(?:[\s./]+[a-z]+){{0,2}})?\s*")
# any other unit: one to three plain words of 3+ letters after a number ("5 apples", "3 red marbles")
_UNIT_ANY = re.compile(rf"(?i)(?<=[\d}}])\s+(?!.*\b{_NOT_UNITS}\b)[a-z]{{3,}}(?:\s+[a-z]{{3,}}){{0,2}}\s*$")
_THOUSANDS_RE = re.compile(r"\s*[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|\s*[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?(?![\d.])")


def _symbolic(lhs: str) -> bool:
    """A name being assigned ("x", "a_{37}", "f(x)", "(p,q)", "|AB|", "V_1:V_2"): letters, no digits."""
    bare = re.sub(r"_\{[^{}]*\}|_\w", "", lhs)
    return bool(re.search(r"[A-Za-z]", bare)) and not re.search(r"\d|\\infty", bare)


def _name(lhs: str) -> str:
    """An assigned name without braces: a_{1} and a_1 are one name."""
    return re.sub(r"[{}\s]", "", lhs)


def _canon_text(s: str) -> str:
    return re.sub(r"\s+", "", s).strip("()").lower()


def _parse_answer(s: str, depth: int = 0):
    """A normalised answer string -> answer node."""
    if depth > MAX_DEPTH:
        raise ParseError("nested too deeply")
    s = s.strip().rstrip(".;").strip()
    if not s:
        raise ParseError("empty answer")
    if wrapped(s, "\\text{", "}"):
        return Text(_canon_text(s[6:-1]))
    s = re.sub(r"\b(?:and|or)\b", ",", s)
    m = _THOUSANDS_RE.match(s)
    if m and not re.search(r"[\d,.]", s[m.end():]):  # 58,500 and 1 000 are numbers, not lists
        s = re.sub(r"[, ]", "", m.group()) + s[m.end():]
    parts = [p for p in split_top(s, ",;") if p.strip()]
    if not parts:
        raise ParseError("empty list")
    if len(parts) > 1:
        return List(_items(parts, depth))
    return _parse_element(parts[0], depth + 1)


def _items(parts: list[str], depth: int) -> tuple:
    """Parse list elements; a "1 \\pm 2" element contributes both of its values."""
    out = []
    for p in parts:
        node = _parse_element(p, depth + 1)
        out.extend(node.items if isinstance(node, List) else [node])
    if len(out) > MAX_ITEMS:
        raise ParseError("too many elements")
    return tuple(out)


def _strip_units(e: str) -> str:
    """ "15\\text{ cm}^2", "125 miles" -> the number alone."""
    for _ in range(3):
        i = e.rfind("\\text{")
        j = match_brace(e, i + 5) if i > 0 and e[:i].strip() else -1
        if j > 0 and _UNIT_TEXT.fullmatch(e[i + 6:j - 1]) and re.fullmatch(r"\s*(\^\{?\d\}?)?", e[j:]):
            e = e[:i].strip()
        else:
            break
    e = _UNIT_WORDS.sub("", e).strip()
    return _UNIT_ANY.sub("", e).strip()


def _parse_element(e: str, depth: int):
    if depth > MAX_DEPTH:
        raise ParseError("nested too deeply")
    e = e.strip().rstrip(".").strip()
    if not e:
        raise ParseError("empty element")
    if wrapped(e, "\\text{", "}"):
        return Text(_canon_text(e[6:-1]))
    e = _strip_units(e)
    pct = e.endswith("%")
    e = e.rstrip("%").strip()
    if not e:
        raise ParseError("empty element")
    if m := re.fullmatch(r"(-?\d+) (\d+)/(\d+)", e):  # 2 1/3: a mixed number
        e = f"{m[1]}\\frac{{{m[2]}}}{{{m[3]}}}"
    if re.fullmatch(r"\d{1,2}:\d\d", e):  # a time of day, 12:00
        return Text(e)
    if m := re.fullmatch(r"(\d+)_\{?(\d+)\}?", e):
        return Based(m.group(1), m.group(2))
    if e in ("\\infty", "+\\infty", "-\\infty"):
        return Inf(-1 if e[0] == "-" else 1)
    if ins := find_top(e, "\\in"):
        if _symbolic(e[:ins[0]]):
            return _parse_element(e[ins[0] + 3:], depth + 1)
        raise ParseError("\\in after a non-name")
    parts, ops = split_rel(e)
    if ops:
        return _relation(parts, ops, depth)
    if cups := find_top(e, "\\cup"):
        bounds = [0] + [c + 4 for c in cups]
        pieces = [e[a:b] for a, b in zip(bounds, cups + [len(e) + 4])]
        return Union(tuple(_parse_element(p, depth + 1) for p in pieces))
    if wrapped(e, "\\{", "\\}"):
        inner = [p for p in split_top(e[2:-2], ",;") if p.strip()]
        return Set(_items(inner, depth))
    if e[0] in "([{" and e[-1] in ")]}" and wrapped(e, e[0], e[-1]):
        inner = [p for p in split_top(e[1:-1], ",;") if p.strip()]
        if len(inner) > 1 and e[0] == "{":  # {1,3}: TeX grouping around a list
            return List(_items(inner, depth))
        if len(inner) > 1 and e[-1] != "}":
            return Tuple(e[0], e[-1], tuple(_parse_element(p, depth + 1) for p in inner))
        if len(inner) == 1 and (e[0] + e[-1] in ("()", "{}") or "\\begin" in e):
            node = _parse_element(inner[0], depth + 1)
            if not isinstance(node, Raw):
                return node
    if m := re.fullmatch(r"\\begin\{([a-zA-Z]*matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", e, re.DOTALL):
        rows = [r for r in m.group(2).split("\\\\") if r.strip()]
        if not rows or len(rows) > MAX_ITEMS:
            raise ParseError("bad matrix")
        return Matrix(tuple(tuple(_parse_element(c, depth + 1) for c in r.split("&")) for r in rows))
    if "\\pm" in e or "\\mp" in e:  # 1 \pm \sqrt{2}: both values (at most 3 signs, 8 values)
        if e.count("\\pm") + e.count("\\mp") > 3:
            raise ParseError("too many \\pm")
        i = min(p for p in (e.find("\\pm"), e.find("\\mp")) if p >= 0)
        signs = "+-" if e[i:i + 3] == "\\pm" else "-+"
        return List(tuple(_parse_element(e[:i] + sgn + e[i + 3:], depth + 1) for sgn in signs))
    if re.fullmatch(r"\(?[A-Ea-e]\)?", e):  # a multiple-choice letter
        return Text(e.strip("()").lower())
    try:
        return _scalar(e, pct)
    except (ParseError, ArithmeticError, ZeroDivisionError, OverflowError, ValueError, KeyError, IndexError):
        return Raw(canon(e))


def _relation(parts: list[str], ops: list[str], depth: int):
    if any(not p.strip() for p in parts):
        raise ParseError("relation with an empty side")
    if "≈" in ops:  # "x \approx 11" -> 11, "x = 1/3 \approx 0.33" -> x = 1/3
        i = ops.index("≈")
        left = "".join(p + o for p, o in zip(parts[:i], ops[:i])) + parts[i]
        if _symbolic(left):
            right = "".join(p + o for p, o in zip(parts[i + 1:], ops[i + 1:] + [""]))
            return _parse_element(right, depth + 1)
        return _parse_element(left, depth + 1)
    if set(ops) == {"="}:
        if len(ops) > 1:  # a chain "x = 5 + 6 = 11": its last value is the answer
            return _parse_element(parts[-1], depth + 1)
        if _symbolic(parts[0]):
            return Assign(canon(parts[0]), _parse_element(parts[1], depth + 1))
        lhs, rhs = _scalar(parts[0], False), _scalar(parts[1], False)
        if not (lhs.has_vars or rhs.has_vars) and lhs.text != rhs.text:  # "\\frac{10}{2} = 5": the last side, as
            return _parse_element(parts[1], depth + 1)                    # in a chain ("1 = 1" stays a relation)
        return Rel("=", lhs, rhs)
    if "=" in ops or len(ops) > 2:
        raise ParseError("mixed relation chain")
    sides = tuple(_scalar(p, False) for p in parts)
    if len(ops) == 1:
        return Rel(ops[0], sides[0], sides[1])
    return Chain(tuple(ops), sides)


def _is_int(node) -> bool:
    """An integer written in digits, maybe negative: 26, -3 (not 2.0)."""
    node = node[1] if node[0] == "neg" else node
    return node[0] == "num" and node[2].isdigit()


def _form(node) -> str:
    """How a scalar is written: "number" (26, -3, 0.15, 6.7e-5, 2\\frac13, a/b that is not an integer, a\\times10^k),
    "power" (an integer to a literal integer power >= 2: 2^{10}, (-3)^5), or "expr" (anything else: 52/2, 13+13)."""
    node = node[1] if node[0] == "neg" else node
    if node[0] in ("num", "mixed"):
        return "number"
    if node[0] == "pow" and _is_int(node[1]) and node[2][0] == "num" and node[2][2].isdigit() \
            and abs(node[1][1] if node[1][0] == "num" else node[1][1][1]) >= 2 and node[2][1] >= 2:
        return "power"
    if node[0] == "prod" and len(node[1]) == 2:
        (d0, a), (d1, b) = node[1]
        if not d0 and d1 and _is_int(a) and _is_int(b):  # \frac{6}{8} is a number, \frac{52}{2} a division left undone
            num, den = (a[1] if a[0] == "num" else a[1][1]), b[1]
            return "number" if den > 1 and num % den != 0 else "expr"
        if not d0 and not d1 and a[0] == "num" and b[0] == "pow" and b[1][:2] == ("num", 10):  # 6.72 \times 10^{-5}
            e = b[2][1] if b[2][0] == "neg" else b[2]
            return "number" if e[0] == "num" and e[1].denominator == 1 else "expr"
    return "expr"


def _scalar(e: str, pct: bool) -> Scalar:
    ast = parse(e)
    values = evaluate(ast)
    form = _form(ast)
    # the tolerance this scalar asks for when it is the gold
    node = ast[1] if ast[0] == "neg" else ast
    tol, decimals = "rel", 0
    if form == "number" and node[0] == "num" and "e" not in node[2].lower():
        if "." in node[2]:
            tol, decimals = "dec", len(node[2].split(".")[1])
        elif isinstance(values[0], Fraction) and values[0].denominator == 1:
            tol = "exact"
    return Scalar(canon(e), ast, values, has_vars(ast), pct, form, tol, decimals, approx="." in e)


def _has_raw(node) -> bool:
    """Does an answer node contain an unparsed piece?"""
    if isinstance(node, Raw):
        return True
    if isinstance(node, (List, Set, Union, Tuple)):
        return any(map(_has_raw, node.items))
    if isinstance(node, Matrix):
        return any(_has_raw(c) for row in node.rows for c in row)
    return isinstance(node, Assign) and _has_raw(node.rhs)


# ---------------------------------------------------------------------------------------------------------------
# 3. Comparison

def _close(p, g, tol: str, decimals: int) -> bool:
    """Is pred value p equal to gold value g under the gold's tolerance?"""
    if isinstance(p, Fraction) and isinstance(g, Fraction) and p == g:
        return True
    try:
        diff, size = abs(complex(p) - complex(g)), abs(complex(g))
    except OverflowError:
        return False
    if tol == "exact":
        return not isinstance(p, Fraction) and diff <= 1e-12 * max(1.0, size)
    if tol == "tight":
        return diff <= 1e-9 * max(size, 1e-300)
    if tol == "dec":  # a decimal gold: within half a unit of its last digit, and 1e-4 relative
        return diff <= max(min(0.5 * 10.0 ** -decimals, REL_TOL * size), 1e-12 * size) * (1 + 1e-9)
    return diff <= REL_TOL * size if size > 0 else diff <= 1e-12


def _scalar_equal(p: Scalar, g: Scalar) -> bool:
    if g.form == "number" and p.form == "expr":
        return False  # a plain-number gold needs a number (or a power) back, not an expression that evaluates to it
    if p.has_vars or g.has_vars:
        ok = 0
        for a, b in zip(p.values, g.values):
            if a is None and b is None:
                continue
            if a is None or b is None or abs(complex(a) - complex(b)) > EXPR_TOL * max(1.0, abs(complex(b))):
                return False
            ok += 1
        return ok >= 2
    a, b = p.values[0], g.values[0]
    if a is None or b is None:
        return False
    tol = "tight" if g.tol == "rel" and not p.approx else g.tol  # exact forms: \frac{20001}{\pi} != \frac{20000}{\pi}
    if _close(a, b, tol, g.decimals):
        return True
    if p.pct != g.pct:  # 28% may be written 28 or 0.28
        return _close(a / 100, b, tol, g.decimals) if p.pct else _close(a, b / 100, tol, g.decimals + 2)
    return False


def _differences(rel: Rel):
    """Values of (greater side - lesser side) of a relation at the fixed points, and its normalised operator."""
    flip = rel.op in (">", ">=")
    hi, lo = (rel.lhs, rel.rhs) if flip else (rel.rhs, rel.lhs)
    op = {">": "<", ">=": "<="}.get(rel.op, rel.op)
    vals = tuple(None if a is None or b is None else complex(a) - complex(b) for a, b in zip(hi.values, lo.values))
    return op, vals, hi.has_vars or lo.has_vars


def _rel_equal(p: Rel, g: Rel) -> bool:
    """Same relation: same operator and (greater - lesser) sides proportional by a constant (> 0 for inequalities)."""
    op_p, dp, vars_p = _differences(p)
    op_g, dg, vars_g = _differences(g)
    if op_p != op_g or not (vars_p or vars_g):
        return False
    ratios = [a / b for a, b in zip(dp, dg) if a is not None and b is not None and abs(b) > 1e-9 and abs(a) > 1e-9]
    if len(ratios) < 3:
        return False
    r0 = ratios[0]
    if any(abs(r - r0) > EXPR_TOL * abs(r0) for r in ratios):
        return False
    return op_p in ("=", "!=") or (abs(r0.imag) < 1e-9 and r0.real > 0)


def _as_rel(a: Assign) -> Rel | None:
    """An assignment x = v with a scalar value as an equation, or None."""
    try:
        return Rel("=", _scalar(a.lhs, False), a.rhs) if isinstance(a.rhs, Scalar) else None
    except (ParseError, ArithmeticError, ValueError, ZeroDivisionError, OverflowError):
        return None


def _gold_interval(g: Rel | Chain) -> Tuple | None:
    """A gold inequality in one variable ("-2 <= x <= 7", "x > 5") as the interval it describes, or None."""
    if isinstance(g, Chain):
        (op1, op2), (a, x, b) = g.ops, g.sides
        if not x.has_vars or a.has_vars or b.has_vars:
            return None
        if {op1, op2} <= {"<", "<="}:
            return Tuple("(" if op1 == "<" else "[", ")" if op2 == "<" else "]", (a, b))
        if {op1, op2} <= {">", ">="}:
            return Tuple("(" if op2 == ">" else "[", ")" if op1 == ">" else "]", (b, a))
        return None
    op, l, r = g.op, g.lhs, g.rhs
    if op not in ("<", "<=", ">", ">="):
        return None
    if r.has_vars and not l.has_vars:  # "5 >= x" -> "x <= 5"
        l, r, op = r, l, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    if not l.has_vars or r.has_vars:
        return None
    strict = op in ("<", ">")
    if op in ("<", "<="):
        return Tuple("(", ")" if strict else "]", (Inf(-1), r))
    return Tuple("(" if strict else "[", ")", (r, Inf(1)))


def _set_equal(ps: tuple, gs: tuple) -> bool:
    """Each pred element matches some gold element and each gold element is matched (duplicates collapse)."""
    hit = [False] * len(gs)
    for p in ps:
        found = False
        for j, g in enumerate(gs):
            if _equal(p, g):
                hit[j] = found = True
        if not found:
            return False
    return all(hit)


def _equal(p, g) -> bool:
    """Does pred answer node p answer gold node g? (not symmetric: the gold decides the tolerance and the form)"""
    if isinstance(p, Assign) and isinstance(g, Assign):  # x = 5 does not answer y = 5
        if _name(p.lhs) == _name(g.lhs) and _equal(p.rhs, g.rhs):
            return True
        rp, rg = _as_rel(p), _as_rel(g)
        return bool(rp and rg and _rel_equal(rp, rg))
    if isinstance(p, Assign) or isinstance(g, Assign):
        a, other = (p, g) if isinstance(p, Assign) else (g, p)
        if isinstance(other, Rel):
            rel = _as_rel(a)
            return bool(rel and (_rel_equal(rel, g) if a is p else _rel_equal(p, rel)))
        return _equal(p.rhs, g) if a is p else _equal(p, g.rhs)
    if isinstance(p, Text) or isinstance(g, Text):
        texts = [_canon_text(x.text) for x in (p, g) if isinstance(x, (Text, Scalar, Raw))]
        return len(texts) == 2 and texts[0] == texts[1]
    if isinstance(p, Raw) or isinstance(g, Raw):
        return False
    if isinstance(p, Scalar) and isinstance(g, Scalar):
        return _scalar_equal(p, g)
    if isinstance(g, Based):  # 2516 answers 2516_8
        return (isinstance(p, Based) and p == g) or (isinstance(p, Scalar) and p.text == g.digits)
    if isinstance(p, Inf) and isinstance(g, Inf):
        return p.sign == g.sign
    if isinstance(p, Rel) and isinstance(g, Rel):
        return _rel_equal(p, g)
    if isinstance(p, Chain) and isinstance(g, Chain):
        return p.ops == g.ops and all(map(_equal, p.sides, g.sides))
    if isinstance(g, (Rel, Chain)) and isinstance(p, (Tuple, Union)):  # a set may answer a relation, not the reverse
        interval = _gold_interval(g)
        return interval is not None and _equal(p, interval)
    if isinstance(p, Tuple) and isinstance(g, Tuple):
        return (p.open, p.close) == (g.open, g.close) and len(p.items) == len(g.items) \
            and all(map(_equal, p.items, g.items))
    if isinstance(p, Matrix) and isinstance(g, Matrix):
        return len(p.rows) == len(g.rows) and all(len(a) == len(b) and all(map(_equal, a, b))
                                                  for a, b in zip(p.rows, g.rows))
    if isinstance(p, List) and isinstance(g, Tuple) or isinstance(p, Tuple) and isinstance(g, List):
        t = p if isinstance(p, Tuple) else g  # "1, 3" against (1, 3): in order
        return (t.open, t.close) == ("(", ")") and len(p.items) == len(g.items) and all(map(_equal, p.items, g.items))
    if isinstance(p, _COLLECTIONS) or isinstance(g, _COLLECTIONS):
        if isinstance(p, Matrix) or isinstance(g, Matrix) or \
                (isinstance(p, Tuple) or isinstance(g, Tuple)) and not (isinstance(p, Union) or isinstance(g, Union)):
            return False
        return _set_equal(p.items if isinstance(p, _COLLECTIONS) else (p,),
                          g.items if isinstance(g, _COLLECTIONS) else (g,))
    return False


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer must be a non-empty string, got {gold!r}")
    if len(gold) > MAX_GOLD_CHARS:
        raise ValueError(f"gold answer is {len(gold)} chars, more than {MAX_GOLD_CHARS}")
    norm = normalize(gold)
    try:
        node = _parse_answer(norm)
    except Exception as e:  # ParseError, overflow, recursion: all mean "not a usable gold"
        raise ValueError(f"cannot parse gold answer {gold!r}: {e}") from None
    if _has_raw(node):
        raise ValueError(f"cannot parse gold answer {gold!r} (unsupported notation)")
    return canon(norm), node


@lru_cache(maxsize=4096)
def _parse_pred(pred: str):
    """(canonical string, answer node or None): a pred that does not parse can still match a gold string."""
    norm = normalize(pred)
    try:
        return canon(norm), _parse_answer(norm)
    except Exception:
        return canon(norm), None


def math_equal(pred: str | None, gold: str) -> bool:
    """Is the model's answer `pred` equivalent to `gold`? ValueError if gold cannot be parsed; never raises on pred."""
    gold_canon, gold_node = _parse_gold(gold)
    if not isinstance(pred, str) or not pred.strip() or len(pred) > MAX_PRED_CHARS:
        return False
    try:
        pred_canon, pred_node = _parse_pred(pred)
        return pred_canon == gold_canon or (pred_node is not None and _equal(pred_node, gold_node))
    except Exception:  # any failure on a model's output is a wrong answer, not a crash of the run
        return False


def grade(text: str, gold_text: str) -> bool:
    """Extract loosely from a free-text response and from the gold text (e.g. "$\\frac{1}{2}$"), then compare."""
    gold = extract_answer(gold_text, loose=True) or gold_text
    pred = extract_answer(text, loose=True)
    return pred is not None and math_equal(pred, gold)


if __name__ == "__main__":
    examples = [("<think> 13 * 2 </think> <answer> 26 </answer>", "26"),
                ("<think> ... </think> <answer> 2 \\cdot 13 </answer>", "26"),
                ("... so the answer is $\\boxed{\\dfrac{1}{2}}$.", "0.5"),
                ("<answer>26 or 27</answer>", "26"),
                ("<answer>x \\in [-2, 7]</answer>", "-2 \\le x \\le 7"),
                ("<answer>(2, 2), (1, 3)</answer>", "(1,3),(2,2)")]
    for completion, gold in examples:
        pred = extract_answer(completion)
        print(f"{completion!r:60} gold={gold!r:20} pred={pred!r:20} equal={math_equal(pred, gold)}")
