"""
Rule-based math answer checking: the accuracy reward of R1-Zero (paper sec. 2.2.2).

R1-Zero learns from rule rewards only: "for math problems with deterministic results, the model is required to
provide the final answer in a specified format, enabling reliable rule-based verification of correctness". The
paper avoids neural reward models because they get hacked; a rule is only as good as its worst case, so this grader
is written to never pay for a wrong answer, and never to crash or hang on what a model writes.

    extract_answer(completion)   the final answer: last <answer>...</answer>, else the later of the last \\boxed{}
                                 and the last "answer is ..." / "#### ..." phrase; None if there is none
    math_equal(pred, gold)       normalise LaTeX, parse both with a small hand-written parser (no eval, no sympy),
                                 then compare: as strings, exact rationals, numbers with a tolerance, expressions
                                 evaluated at fixed points, tuples / intervals / sets / matrices, equations and
                                 inequalities (same solution set: the two sides' differences are proportional)
    grade(text, gold_text)       extract (loosely, also from bare "$...$" or a last number) from both, then compare;
                                 for grading free text (evaluation, grader test suites), not for rewards

Choices, several of them stricter on purpose than graders that evaluate anything (e.g. Math-Verify):
- A gold written as a plain number (26, -3, 0.15, \\frac{3}{56}, 2\\frac{1}{3}, 12%) needs a plain number back:
  "2 \\cdot 13", "30 - 4" or "52/2" for 26 are refused, and fractions must be in lowest terms, so a policy cannot
  earn reward by copying the question's arithmetic into <answer>.
- Integer golds compare exactly; a decimal gold accepts only values within half a unit of its last digit (and
  1e-4 relative); a decimal pred of another gold is an approximation (1e-4 relative), while two exact forms must
  agree to 1e-9 (\\frac{20001}{\\pi} is not \\frac{20000}{\\pi}); formulas are compared at 4 fixed points.
- Several answers ("26 or 27", "26, 27", \\boxed{26}\\boxed{27}, 1 \\pm 2) form a set that must equal the gold's set.
- A percentage may be written with or without its sign: 28% matches 28 and 0.28 (and 28 matches 28%).
- An interval answer may match a gold inequality ("-2 <= x <= 7"), not the other way round (as Math-Verify).
- A pred longer than MAX_PRED_CHARS is refused; nesting, list sizes and exact powers are capped, no regex can
  backtrack badly, and any error on the pred side means "not equal". Only an unparseable gold raises (ValueError).
"""
import cmath
import math
import re
import zlib
from fractions import Fraction
from functools import lru_cache

MAX_PRED_CHARS = 1000      # an extracted answer longer than this is refused: no real final answer is this long
MAX_GOLD_CHARS = 5000
MAX_SCAN_CHARS = 20_000    # extraction looks at the tail of a completion only
MAX_DEPTH = 40             # bracket / parser nesting
MAX_ITEMS = 64             # elements of one list, set, tuple or matrix
MAX_EXACT_BITS = 4096      # exact rational powers bigger than this fall back to floats (and may overflow -> refused)
REL_TOL = 1e-4             # numbers
EXPR_TOL = 1e-6            # expressions with variables, compared at N_POINTS fixed points
N_POINTS = 4


class _ParseError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# 1. Extraction: where is the final answer?

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_PHRASE_RE = re.compile(r"(?i)\banswer\s*(?:is\b|:)|####")
_PHRASE_END_RE = re.compile(r"\n|\.(?=\s|$)|\bI hope\b")
_IS_RE = re.compile(r"\s(?:is|are|was|be)\s")
_GAP_NOISE_RE = re.compile(r"\\[()\[\]]|\$|\\q?quad|\\text\w*|\\[,;:! ]|\\\\|[{},;.&:]|\b(?:and|or)\b")
_TEXT_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?: ?/ ?\d+)?%?")


def _match_brace(s: str, i: int) -> int:
    """Index just past the '}' closing the '{' at s[i] (escaped braces skipped), or -1 if unbalanced."""
    depth = 0
    for m in _BRACE_RE.finditer(s, i):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.end()
    return -1


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
            end = _match_brace(text, j)
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


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    """$...$, $$...$$, \\(...\\), \\[...\\] spans in order; inline ones may not cross a newline (as in Math-Verify)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("\\$", i):
            i += 2
        elif text.startswith("$$", i) or text.startswith("\\[", i):
            close = "$$" if text[i] == "$" else "\\]"
            j = text.find(close, i + 2)
            if j < 0:
                break
            out.append((i, j + 2, text[i + 2:j]))
            i = j + 2
        elif text[i] == "$" or text.startswith("\\(", i):
            close, skip = ("$", 1) if text[i] == "$" else ("\\)", 2)
            j = text.find(close, i + skip)
            while close == "$" and j > 0 and text[j - 1] == "\\":
                j = text.find(close, j + 1)
            if j < 0:
                break
            if "\n" in text[i:j]:
                i += skip
                continue
            out.append((i, j + len(close), text[i + skip:j]))
            i = j + len(close)
        else:
            i += 1
    return out


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
    spans = [s for s in _math_spans(text) if s[2].strip()]
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
# 2. Normalisation: LaTeX spelling variants -> one spelling

_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "≈": "\\approx ", "°": "^\\circ", "²": "^2",
            "³": "^3", "∪": "\\cup ", "∈": "\\in ", "±": "\\pm ", "∓": "\\mp ", "\u00a0": " ", "，": ","}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SUBS = [  # (pattern, replacement), applied in order
    (r"(?<!\\)\\\\(?=[a-zA-Z])", r"\\"),                          # "\\frac" written with a doubled backslash
    (r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])\.?", ""),
    (r"\\(?:displaystyle|textstyle|limits|nolimits)(?![a-zA-Z])", " "),
    (r"(\d)\s*\{\s*,\s*\}\s*(?=\d)", r"\1"),                      # 14{,}916
    (r"(\d),\\!\s*(?=\d)", r"\1"),                                # 10,\!080
    (r"\\q?quad(?![a-zA-Z])|(?<!\\)\\[,;:! ]|~", " "),
    (r"\\[dtc]frac(?![a-zA-Z])", r"\\frac"),
    (r"\\dbinom(?![a-zA-Z])", r"\\binom"),
    (r"\\(?:textbf|textnormal|textrm|textit|textup|mbox|hbox)(?![a-zA-Z])", r"\\text"),
    (r"\\operatorname\{(\w+)\}", r"\\\1"),
    (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])|\bdegrees?\b", ""),
    (r"\s*(?:\\%|%|\bpercent(?:age)?\b|\bpct\b)", "%"),
    (r"\\\$|\$", ""),
    (r"(?<!\\)\\[()\[\]]", " "),
    (r"\\text\{\s*(and|or|,)\s*\}", r" \1 "),
    (r"\\(?:leqslant|leq|le)(?![a-zA-Z])", "<="),
    (r"\\(?:geqslant|geq|ge)(?![a-zA-Z])", ">="),
    (r"\\(?:neq|ne)(?![a-zA-Z])", "!="),
    (r"\\lt(?![a-zA-Z])", "<"),
    (r"\\gt(?![a-zA-Z])", ">"),
    (r"\\(?:approx|simeq|thickapprox)(?![a-zA-Z])", "≈"),
    (r"\\langle(?![a-zA-Z])", "("),
    (r"\\rangle(?![a-zA-Z])", ")"),
    (r"\\(?:infinity|inf)(?![a-zA-Z])|\binfinity\b", r"\\infty"),
    (r"\\(?:lvert|rvert|vert)(?![a-zA-Z])|\\\|", "|"),
    (r"\\ast(?![a-zA-Z])", "*"),
    (r"\\emptyset(?![a-zA-Z])|\\varnothing(?![a-zA-Z])", r"\\{\\}"),
    (r"\s+", " "),
]
_SUBS = [(re.compile(p), r) for p, r in _SUBS]
_UNWRAP = ("\\boxed", "\\fbox", "\\mathrm", "\\mathbf", "\\mathit", "\\boldsymbol", "\\mathsf", "\\textsf")


def _unwrap(s: str, cmd: str) -> str:
    """Replace every cmd{X} by X (balanced braces)."""
    for _ in range(50):
        i = s.find(cmd + "{")
        if i < 0 or (i + len(cmd) < len(s) and s[i + len(cmd)].isalpha()):
            return s
        j = _match_brace(s, i + len(cmd))
        if j < 0:
            return s
        s = s[:i] + s[i + len(cmd) + 1:j - 1] + s[j:]
    return s


def _normalize(s: str) -> str:
    """One spelling per answer: no delimiters, spacing, \\left/\\right, \\dfrac, degrees; relations as <= >= != ≈."""
    s = re.sub(r"\s+", " ", _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], s))
    for cmd in _UNWRAP:
        s = _unwrap(s, cmd)
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    return s.strip().rstrip(".,;").strip()


def _canon(s: str) -> str:
    """Whitespace-free form for string comparison (a space is kept between two alphanumerics: "2 3" != "23")."""
    return re.sub(r"(?<=[\w]) (?=[\w])", "\x00", s).replace(" ", "").replace("\x00", " ")


# ---------------------------------------------------------------------------------------------------------------
# 3. Expressions: tokenizer, recursive-descent parser, evaluation at fixed points
#
# AST nodes are tuples: ("num", Fraction, text) ("mixed", Fraction) ("var", name) ("const", complex)
# ("neg", a) ("sum", ((sign, a), ...)) ("prod", ((is_div, a), ...)) ("pow", a, b) ("root", n, a) ("fn", name, a)
# ("log", base, a) ("binom", n, k) ("fact", a). Sums and products are n-ary so that "1+1+...+1" stays shallow.

_TOKEN_RE = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<cmd>\\[a-zA-Z]+|\\[{}])"
                       r"|(?P<id>[a-zA-Z])|(?P<op>[-+*/^()\[\]{}|!:_']))")
_FUNCS = {
    "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "sec": lambda z: 1 / cmath.cos(z),
    "csc": lambda z: 1 / cmath.sin(z), "cot": lambda z: 1 / cmath.tan(z), "arcsin": cmath.asin,
    "arccos": cmath.acos, "arctan": cmath.atan, "sinh": cmath.sinh, "cosh": cmath.cosh, "tanh": cmath.tanh,
    "ln": cmath.log, "exp": cmath.exp, "abs": abs,
    "floor": lambda z: math.floor(z.real) if isinstance(z, complex) else math.floor(z),
    "ceil": lambda z: math.ceil(z.real) if isinstance(z, complex) else math.ceil(z),
}
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan"}
_GREEK = set("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma "
             "tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega".split())
_DECOR = {"vec", "overline", "bar", "hat", "overrightarrow", "widehat", "tilde", "widetilde", "text"}  # \vec{a} = a
_MUL_CMDS = {"\\cdot": False, "\\times": False, "\\div": True}


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks, pos, n = [], 0, len(s)
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if m is None or m.lastgroup is None:
            if s[pos:].strip() == "":
                break
            raise _ParseError(f"unexpected character {s[pos]!r}")
        toks.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return toks


class _Parser:
    """Recursive descent: expr = term (+|- term)*, term = unary ((*|/|:|implicit) unary)*, unary = -unary | power."""

    def __init__(self, text: str):
        self.toks, self.i, self.depth = _tokenize(text), 0, 0

    def peek(self):
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def kind(self):
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self):
        if self.i >= len(self.toks):
            raise _ParseError("unexpected end")
        self.i += 1
        return self.toks[self.i - 1][1]

    def expect(self, tok):
        if self.take() != tok:
            raise _ParseError(f"expected {tok!r}")

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise _ParseError(f"unexpected {self.peek()!r}")
        return node

    def expr(self):
        terms = [(1, self.term())]
        while self.peek() in ("+", "-"):
            terms.append((1 if self.take() == "+" else -1, self.term()))
        return terms[0][1] if len(terms) == 1 else ("sum", tuple(terms))

    def starts_factor(self):  # may an implicit product continue here? (never before a bare number: "2 3")
        k, t = self.kind(), self.peek()
        if k == "id" or t in ("(", "{"):
            return True
        return k == "cmd" and t not in _MUL_CMDS and t[1:] not in ("pm", "mp", "cup", "in", "infty", "rfloor",
                                                                    "rceil", "}")

    def term(self):
        factors = [(False, self.unary())]
        while True:
            t = self.peek()
            if t in ("*", "/", ":") or t in _MUL_CMDS:
                self.take()
                factors.append((t in ("/", ":") or _MUL_CMDS.get(t, False), self.unary()))
            elif t is not None and self.starts_factor():
                factors.append((False, self.power()))
            else:
                break
        return factors[0][1] if len(factors) == 1 else ("prod", tuple(factors))

    def unary(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ParseError("nested too deeply")
        try:
            if self.peek() in ("+", "-"):
                neg = self.take() == "-"
                node = self.unary()
                return ("neg", node) if neg else node
            return self.power()
        finally:
            self.depth -= 1

    def power(self):
        base, exps = self.postfix(), []
        while self.peek() == "^":  # a^b^c = a^(b^c): a bounded chain (each level nests the AST)
            self.take()
            exps.append(self.arg(split_digits=False, signed=True))
            if len(exps) > 8:
                raise _ParseError("power chain too long")
        node = None
        for e in reversed(exps):
            node = e if node is None else ("pow", e, node)
        return base if node is None else ("pow", base, node)

    def postfix(self):
        node = self.atom()
        for _ in range(3):
            if self.peek() != "!":
                return node
            self.take()
            node = ("fact", node)
        raise _ParseError("factorial chain too long")

    def arg(self, split_digits: bool, signed: bool = False):
        """A LaTeX argument: {group}, one digit of a number (\\frac12) or the whole number (x^10), or one atom."""
        t, k = self.peek(), self.kind()
        if signed and t in ("-", "+"):
            self.take()
            node = self.arg(split_digits, signed)
            return ("neg", node) if t == "-" else node
        if t == "{":
            self.take()
            node = self.expr()
            self.expect("}")
            return node
        if k == "num" and split_digits and len(t) > 1 and t.isdigit():
            self.toks[self.i:self.i + 1] = [("num", t[0]), ("num", t[1:])]
        return self.atom()

    def atom(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ParseError("nested too deeply")
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self):
        k, t = self.kind(), self.take()
        if k == "num":
            return self.number(t)
        if k == "id":
            name = t
            if self.peek() == "_":
                self.take()
                name += "_" + self.raw_arg()
            while self.peek() == "'":
                name += self.take()
            return ("var", name)
        if t in ("(", "[", "{"):
            node = self.expr()
            self.expect({"(": ")", "[": "]", "{": "}"}[t])
            return node
        if t == "|":
            node = self.expr()
            self.expect("|")
            return ("fn", "abs", node)
        if k == "cmd":
            return self.command(t[1:])
        raise _ParseError(f"unexpected {t!r}")

    def number(self, text: str):
        if len(text) > 60 or ("e" in text.lower() and abs(int(re.split("[eE]", text)[1])) > 300):
            raise _ParseError("number too long")
        value = Fraction(text)
        if self.peek() == "\\frac" and text.isdigit():  # 2\frac{1}{3}: a mixed number
            save = self.i
            self.take()
            a, b = self.arg(True), self.arg(True)
            if a[0] == b[0] == "num" and a[2].isdigit() and b[2].isdigit() and 0 < a[1] < b[1] \
                    and math.gcd(int(a[1]), int(b[1])) == 1:
                return ("mixed", value + a[1] / b[1])
            self.i = save  # a product, 2 * \frac{x}{3}: left to term()
        return ("num", value, text)

    def raw_arg(self) -> str:
        """A subscript's text, kept as part of a variable name: x_1, a_{37}."""
        if self.peek() != "{":
            return self.take()
        self.take()
        parts, depth = [], 1
        while True:
            t = self.take()
            depth += (t == "{") - (t == "}")
            if depth == 0:
                return "".join(parts)
            parts.append(t)

    def command(self, name: str):
        if name == "frac":
            a, b = self.arg(True), self.arg(True)
            return ("prod", ((False, a), (True, b)))
        if name == "binom":
            return ("binom", self.arg(True), self.arg(True))
        if name == "sqrt":
            n = ("num", Fraction(2), "2")
            if self.peek() == "[":
                self.take()
                n = self.expr()
                self.expect("]")
            return ("root", n, self.arg(split_digits=False))
        if name == "pi":
            return ("const", complex(math.pi))
        if name in ("lfloor", "lceil"):
            node = self.expr()
            self.expect("\\r" + name[1:])
            return ("fn", name[1:], node)
        if name in _GREEK:
            return ("var", name)
        if name in _DECOR:
            return self.arg(split_digits=False)
        if name in _FUNCS or name == "log":
            power = None
            if self.peek() == "^":
                self.take()
                power = self.arg(split_digits=False, signed=True)
            base = None
            if name == "log" and self.peek() == "_":
                self.take()
                base = self.arg(split_digits=False)
            node = self.func_arg()
            if power is not None and power == ("neg", ("num", Fraction(1), "1")) and name in _INVERSE:
                return ("fn", _INVERSE[name], node)  # \sin^{-1} x
            node = ("log", base, node) if name == "log" else ("fn", name, node)
            return ("pow", node, power) if power is not None else node
        raise _ParseError(f"unsupported command \\{name}")

    def func_arg(self):
        """\\sin(x), \\sin{x}, or \\sin 2x / \\cos a: a run of numbers and letters."""
        if self.peek() in ("(", "{", "["):
            return self.atom()
        factors = []
        while self.kind() in ("num", "id") or (self.kind() == "cmd" and self.peek()[1:] in _GREEK | {"pi"}):
            if factors and self.kind() == "num":
                break
            factors.append((False, self.postfix()))
        if not factors:
            raise _ParseError("function without argument")
        return factors[0][1] if len(factors) == 1 else ("prod", tuple(factors))


def _check(x):
    """Keep exact rationals exact; refuse non-finite or absurdly large floats."""
    if isinstance(x, (Fraction, int)):
        return Fraction(x)
    x = complex(x)
    if not (math.isfinite(x.real) and math.isfinite(x.imag)) or abs(x) > 1e250:
        raise ArithmeticError("non-finite value")
    return x


def _pow(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction) and b.denominator == 1:
        bits = max(a.numerator.bit_length(), a.denominator.bit_length(), 1)
        if abs(b.numerator) * bits <= MAX_EXACT_BITS:
            return a ** b.numerator  # ZeroDivisionError for 0^-1
    a, b = complex(a), complex(b)
    if a == 0:
        if b.real > 0:
            return 0j
        raise ZeroDivisionError("0 to a non-positive power")
    return _check(a ** b)  # OverflowError for 9^(9^9)


def _var_value(name: str, k: int) -> complex:
    """A fixed pseudo-random value per variable and point; point 2 is negative (tells |x| from x)."""
    u = zlib.crc32(f"{name}#{k}".encode()) / 2**32
    return complex((1.2 + 1.6 * u) * (-1 if k == 2 else 1))


def _eval(node, k: int):
    tag = node[0]
    if tag in ("num", "mixed", "const"):
        return node[1]
    if tag == "var":
        return _var_value(node[1], k)
    if tag == "neg":
        return -_eval(node[1], k)
    if tag == "sum":
        acc = Fraction(0)
        for sign, t in node[1]:
            v = _eval(t, k)
            acc = _check(acc + v if sign > 0 else acc - v)
        return acc
    if tag == "prod":
        acc = Fraction(1)
        for is_div, f in node[1]:
            v = _eval(f, k)
            acc = _check(acc / v if is_div else acc * v)
        return acc
    if tag == "pow":
        return _pow(_eval(node[1], k), _eval(node[2], k))
    if tag == "root":
        return _pow(_eval(node[2], k), 1 / _check(_eval(node[1], k)))
    if tag == "fn":
        return _check(_FUNCS[node[1]](_eval(node[2], k)))
    if tag == "log":
        base = 10 if node[1] is None else _eval(node[1], k)
        return _check(cmath.log(_eval(node[2], k)) / cmath.log(base))
    if tag in ("fact", "binom"):
        args = [_eval(a, k) for a in node[1:]]
        if not all(isinstance(a, Fraction) and a.denominator == 1 and 0 <= a <= 1000 for a in args):
            raise ArithmeticError(f"{tag} needs small non-negative integers")
        return Fraction(math.factorial(int(args[0])) if tag == "fact" else math.comb(int(args[0]), int(args[1])))
    raise _ParseError(f"unknown node {tag}")


def _has_vars(node) -> bool:
    if node[0] == "var":
        return True
    for c in node[1:]:
        if isinstance(c, tuple) and c:
            if _has_vars(c) if isinstance(c[0], str) else any(_has_vars(n) for _, n in c):
                return True
    return False


def _plain_number(node) -> bool:
    """Is this written as a number (not an expression)? 26, -3, 0.15, 6.7e-5, 2\\frac13, reduced a/b, a\\times10^k."""
    if node[0] == "neg":
        node = node[1]
    if node[0] in ("num", "mixed"):
        return True
    if node[0] == "prod" and len(node[1]) == 2:
        (d0, a), (d1, b) = node[1]
        a_int = a[0] == "num" or (a[0] == "neg" and a[1][0] == "num")
        if not d0 and d1 and a_int and b[0] == "num":
            num, den = (a[1] if a[0] == "num" else a[1][1]), b[1]
            return num.denominator == den.denominator == 1 and den > 1 and math.gcd(int(num), int(den)) == 1
        if not d0 and not d1 and a[0] == "num" and b[0] == "pow" and b[1][:2] == ("num", 10):  # 6.72 \times 10^{-5}
            e = b[2][1] if b[2][0] == "neg" else b[2]
            return e[0] == "num" and e[1].denominator == 1
    return False


# ---------------------------------------------------------------------------------------------------------------
# 4. Answers: lists, sets, tuples/intervals, unions, matrices, relations, text; each scalar parsed as above
#
# Nodes: ("scalar", src, ast, values, has_vars, pct, plain, tol, approx) ("text", s) ("raw", s) ("inf", ±1)
# ("base", digits, base) ("list", items) ("set", items) ("tuple", open, close, items) ("union", items)
# ("matrix", rows) ("assign", lhs, rhs) ("rel", op, lhs, rhs) ("chain", ops, parts)

_OPEN, _CLOSE = "([{", ")]}"
_RELS = ("<=", ">=", "!=", "=", "<", ">", "≈")
_UNIT_WORDS = re.compile(
    r"(?<=[\d}\) ])\s*(?:square\s+|sq\.?\s+|cubic\s+)?(?:units?|cm|centimeters?|mm|millimeters?|km|kilometers?|meters?|"
    r"metres?|inch(?:es)?|ft|feet|foot|yards?|miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|"
    r"months?|years?|dollars?|cents?|yuan|euros?|kg|kilograms?|grams?|lbs?|pounds?|ounces?|oz|liters?|litres?|"
    r"ml|mph|radians?|people|persons?|students?|ways|times)(?:\^\{?\d\}?)?\s*$")
# a unit in \text{}: up to three words ("cm", "square units"), never "or 27" or "and"
_UNIT_TEXT = re.compile(r"(?i)\s*(?:(?!.*\b(?:or|and|not|no)\b)[a-z]+(?:[\s./]+[a-z]+){0,2})?\s*")
_THOUSANDS_RE = re.compile(r"\s*[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|\s*[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?(?![\d.])")


def _split_top(s: str, seps: str) -> list[str]:
    """Split at separator characters outside any bracket."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and c in seps:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    if len(parts) > MAX_ITEMS:
        raise _ParseError("too many elements")
    return parts


def _find_top(s: str, word: str) -> list[int]:
    """Positions of a command (\\cup, \\in, \\pm) outside brackets, not followed by a letter."""
    out, depth = [], 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(word, i) and not s[i + len(word):i + len(word) + 1].isalpha():
            out.append(i)
    return out


def _split_rel(s: str) -> tuple[list[str], list[str]]:
    """Split "a <= b < c" at top-level relation operators: (["a", "b", "c"], ["<=", "<"])."""
    parts, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0:
            op = next((r for r in _RELS if s.startswith(r, i)), None)
            if op:
                parts.append(s[start:i])
                ops.append(op)
                i += len(op)
                start = i
                continue
        i += 1
    parts.append(s[start:])
    return parts, ops


def _wrapped(s: str, open_: str, close: str) -> bool:
    """Is s one bracket group open_ ... close (the first bracket closes at the very end)?"""
    if not (s.startswith(open_) and s.endswith(close)) or len(s) < len(open_) + len(close):
        return False
    depth = 0
    for i, c in enumerate(s[:-1]):
        depth += (c in _OPEN) - (c in _CLOSE)
        if depth == 0 and i >= len(open_) - 1:
            return False
    return True


def _symbolic(lhs: str) -> bool:
    """A name being assigned ("x", "a_{37}", "f(x)", "(p,q)", "|AB|", "V_1:V_2"): letters, no digits."""
    bare = re.sub(r"_\{[^{}]*\}|_\w", "", lhs)
    return bool(re.search(r"[A-Za-z]", bare)) and not re.search(r"\d|\\infty", bare)


def _parse_answer(s: str, depth: int = 0):
    """A normalised answer string -> answer node (see the list above)."""
    if depth > MAX_DEPTH:
        raise _ParseError("nested too deeply")
    s = s.strip().rstrip(".;").strip()
    if not s:
        raise _ParseError("empty answer")
    if _wrapped(s, "\\text{", "}"):
        return ("text", _canon_text(s[6:-1]))
    s = re.sub(r"\b(?:and|or)\b", ",", s)
    m = _THOUSANDS_RE.match(s)
    if m and not re.search(r"[\d,.]", s[m.end():]):  # 58,500 and 1 000 are numbers, not lists
        s = re.sub(r"[, ]", "", m.group()) + s[m.end():]
    parts = [p for p in _split_top(s, ",;") if p.strip()]
    if not parts:
        raise _ParseError("empty list")
    if len(parts) > 1:
        return ("list", _items(parts, depth))
    return _parse_element(parts[0], depth + 1)


def _items(parts: list[str], depth: int) -> tuple:
    """Parse list elements; a "1 \\pm 2" element contributes both of its values."""
    out = []
    for p in parts:
        node = _parse_element(p, depth + 1)
        out.extend(node[1] if node[0] == "list" else [node])
    if len(out) > MAX_ITEMS:
        raise _ParseError("too many elements")
    return tuple(out)


def _parse_element(e: str, depth: int):
    if depth > MAX_DEPTH:
        raise _ParseError("nested too deeply")
    e = e.strip().rstrip(".").strip()
    if not e:
        raise _ParseError("empty element")
    if _wrapped(e, "\\text{", "}"):
        return ("text", _canon_text(e[6:-1]))
    for _ in range(3):  # trailing units: "15\text{ cm}^2", "125 miles"
        i = e.rfind("\\text{")
        j = _match_brace(e, i + 5) if i > 0 and e[:i].strip() else -1
        if j > 0 and _UNIT_TEXT.fullmatch(e[i + 6:j - 1]) and re.fullmatch(r"\s*(\^\{?\d\}?)?", e[j:]):
            e = e[:i].strip()
        else:
            break
    e = _UNIT_WORDS.sub("", e).strip()
    pct = e.endswith("%")
    e = e.rstrip("%").strip()
    if not e:
        raise _ParseError("empty element")
    if m := re.fullmatch(r"(-?\d+) (\d+)/(\d+)", e):  # 2 1/3: a mixed number
        e = f"{m[1]}\\frac{{{m[2]}}}{{{m[3]}}}"
    if re.fullmatch(r"\d{1,2}:\d\d", e):  # a time of day, 12:00
        return ("text", e)
    if m := re.fullmatch(r"(\d+)_\{?(\d+)\}?", e):
        return ("base", m.group(1), m.group(2))
    if e in ("\\infty", "+\\infty", "-\\infty"):
        return ("inf", -1 if e[0] == "-" else 1)
    if ins := _find_top(e, "\\in"):
        if _symbolic(e[:ins[0]]):
            return _parse_element(e[ins[0] + 3:], depth + 1)
        raise _ParseError("\\in after a non-name")
    parts, ops = _split_rel(e)
    if ops:
        return _relation(parts, ops, depth)
    if cups := _find_top(e, "\\cup"):
        bounds = [0] + [c + 4 for c in cups]
        pieces = [e[a:b] for a, b in zip(bounds, cups + [len(e) + 4])]
        return ("union", tuple(_parse_element(p, depth + 1) for p in pieces))
    if _wrapped(e, "\\{", "\\}"):
        inner = [p for p in _split_top(e[2:-2], ",;") if p.strip()]
        return ("set", _items(inner, depth))
    if e[0] in "([{" and e[-1] in ")]}" and _wrapped(e, e[0], e[-1]):
        inner = [p for p in _split_top(e[1:-1], ",;") if p.strip()]
        if len(inner) > 1 and e[0] == "{":  # {1,3}: TeX grouping around a list
            return ("list", _items(inner, depth))
        if len(inner) > 1 and e[-1] != "}":
            return ("tuple", e[0], e[-1], tuple(_parse_element(p, depth + 1) for p in inner))
        if len(inner) == 1 and (e[0] + e[-1] in ("()", "{}") or "\\begin" in e):
            node = _parse_element(inner[0], depth + 1)
            if node[0] != "raw":
                return node
    if m := re.fullmatch(r"\\begin\{([a-zA-Z]*matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", e, re.DOTALL):
        rows = [r for r in m.group(2).split("\\\\") if r.strip()]
        if not rows or len(rows) > MAX_ITEMS:
            raise _ParseError("bad matrix")
        return ("matrix", tuple(tuple(_parse_element(c, depth + 1) for c in r.split("&")) for r in rows))
    if "\\pm" in e or "\\mp" in e:  # 1 \pm \sqrt{2}: both values (at most 3 signs, 8 values)
        if e.count("\\pm") + e.count("\\mp") > 3:
            raise _ParseError("too many \\pm")
        i = min(p for p in (e.find("\\pm"), e.find("\\mp")) if p >= 0)
        signs = "+-" if e[i:i + 3] == "\\pm" else "-+"
        return ("list", tuple(_parse_element(e[:i] + sgn + e[i + 3:], depth + 1) for sgn in signs))
    if re.fullmatch(r"\(?[A-Ea-e]\)?", e):  # a multiple-choice letter
        return ("text", e.strip("()").lower())
    try:
        return _scalar(e, pct)
    except (_ParseError, ArithmeticError, ZeroDivisionError, OverflowError, ValueError, KeyError, IndexError):
        return ("raw", _canon(e))


def _relation(parts: list[str], ops: list[str], depth: int):
    if any(not p.strip() for p in parts):
        raise _ParseError("relation with an empty side")
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
            return ("assign", _canon(parts[0]), _parse_element(parts[1], depth + 1))
        return ("rel", "=", _scalar(parts[0], False), _scalar(parts[1], False))
    if "=" in ops or len(ops) > 2:
        raise _ParseError("mixed relation chain")
    sides = tuple(_scalar(p, False) for p in parts)
    if len(ops) == 1:
        return ("rel", ops[0], sides[0], sides[1])
    return ("chain", tuple(ops), sides)


def _canon_text(s: str) -> str:
    return re.sub(r"\s+", "", s).strip("()").lower()


def _scalar(e: str, pct: bool):
    ast = _Parser(e).parse()
    has_vars = _has_vars(ast)
    values = []
    for k in range(N_POINTS if has_vars else 1):
        try:
            values.append(_eval(ast, k))
        except (ArithmeticError, ValueError, OverflowError, ZeroDivisionError, TypeError):
            values.append(None)
    if all(v is None for v in values):
        raise ArithmeticError(f"cannot evaluate {e!r}")
    values = tuple(values) * (1 if has_vars else N_POINTS)
    plain = _plain_number(ast)
    # the tolerance this scalar asks for when it is the gold
    node = ast[1] if ast[0] == "neg" else ast
    if plain and isinstance(values[0], Fraction) and values[0].denominator == 1 and node[0] == "num" \
            and "." not in node[2] and "e" not in node[2].lower():
        tol = ("exact", 0)
    elif plain and node[0] == "num" and "." in node[2] and "e" not in node[2].lower():
        tol = ("dec", len(node[2].split(".")[1]))
    else:
        tol = ("rel", 0)
    approx = "." in e  # written with a decimal: an approximation, compared with REL_TOL
    return ("scalar", _canon(e), ast, values, has_vars, pct, plain, tol, approx)


def _has_raw(node) -> bool:
    """Does an answer node contain an unparsed piece? (scalars are not descended into)"""
    if not isinstance(node, tuple) or not node or node[0] == "scalar":
        return False
    return node[0] == "raw" or any(_has_raw(c) for c in node if isinstance(c, tuple))


# ---------------------------------------------------------------------------------------------------------------
# 5. Comparison

def _close(p, g, tol: tuple) -> bool:
    """Is pred value p equal to gold value g under the gold's tolerance?"""
    kind, dp = tol
    if isinstance(p, Fraction) and isinstance(g, Fraction) and p == g:
        return True
    try:
        diff, size = abs(complex(p) - complex(g)), abs(complex(g))
    except OverflowError:
        return False
    if kind == "exact":
        return not isinstance(p, Fraction) and diff <= 1e-12 * max(1.0, size)
    if kind == "tight":
        return diff <= 1e-9 * max(size, 1e-300)
    if kind == "dec":  # a decimal gold: within half a unit of its last digit, and 1e-4 relative
        return diff <= max(min(0.5 * 10.0 ** -dp, REL_TOL * size), 1e-12 * size) * (1 + 1e-9)
    return diff <= REL_TOL * size if size > 0 else diff <= 1e-12


def _scalar_equal(p, g) -> bool:
    _, _, _, pv, p_vars, p_pct, p_plain, _, p_approx = p
    _, _, _, gv, g_vars, g_pct, g_plain, tol, _ = g
    if g_plain and not p_plain:
        return False  # a plain-number gold needs a plain number, not an expression that evaluates to it
    if p_vars or g_vars:
        ok = 0
        for a, b in zip(pv, gv):
            if a is None and b is None:
                continue
            if a is None or b is None or abs(complex(a) - complex(b)) > EXPR_TOL * max(1.0, abs(complex(b))):
                return False
            ok += 1
        return ok >= 2
    a, b = pv[0], gv[0]
    if a is None or b is None:
        return False
    if tol[0] == "rel" and not p_approx:
        tol = ("tight", 0)  # exact pred, exact gold: \frac{20001}{\pi} is not \frac{20000}{\pi}
    candidates = [(a, b, tol)]
    if p_pct != g_pct:  # 28% may be written 28 or 0.28
        candidates.append((a / 100, b, tol) if p_pct else (a, b / 100, (tol[0], tol[1] + 2)))
    return any(_close(x, y, t) for x, y, t in candidates)


def _differences(rel):
    """Values of (greater side - lesser side) of a relation at the fixed points, and its normalised operator."""
    _, op, lhs, rhs = rel
    flip = op in (">", ">=")
    hi, lo = (lhs, rhs) if flip else (rhs, lhs)
    op = {">": "<", ">=": "<="}.get(op, op)
    vals = tuple(None if a is None or b is None else complex(a) - complex(b) for a, b in zip(hi[3], lo[3]))
    return op, vals, hi[4] or lo[4]


def _rel_equal(p, g) -> bool:
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


def _as_rel(a):
    """An assignment x = v with scalar sides as an equation, or None."""
    try:
        return ("rel", "=", _scalar(a[1], False), a[2]) if a[2][0] == "scalar" else None
    except (_ParseError, ArithmeticError, ValueError, ZeroDivisionError, OverflowError):
        return None


def _gold_interval(g):
    """A gold inequality in one variable ("-2 <= x <= 7", "x > 5") as the interval it describes, or None."""
    inf = {1: ("inf", 1), -1: ("inf", -1)}
    if g[0] == "chain":
        (op1, op2), (a, x, b) = g[1], g[2]
        if not x[4] or a[4] or b[4]:
            return None
        if {op1, op2} <= {"<", "<="}:
            return ("tuple", "(" if op1 == "<" else "[", ")" if op2 == "<" else "]", (a, b))
        if {op1, op2} <= {">", ">="}:
            return ("tuple", "(" if op2 == ">" else "[", ")" if op1 == ">" else "]", (b, a))
        return None
    _, op, l, r = g
    if op not in ("<", "<=", ">", ">="):
        return None
    if r[4] and not l[4]:  # "5 >= x" -> "x <= 5"
        l, r, op = r, l, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    if not l[4] or r[4]:
        return None
    strict = op in ("<", ">")
    if op in ("<", "<="):
        return ("tuple", "(", ")" if strict else "]", (inf[-1], r))
    return ("tuple", "(" if strict else "[", ")", (r, inf[1]))


def _set_equal(ps, gs) -> bool:
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
    kp, kg = p[0], g[0]
    if kp == "assign" and kg == "assign":
        if _equal(p[2], g[2]):
            return True
        rp, rg = _as_rel(p), _as_rel(g)
        return bool(rp and rg and _rel_equal(rp, rg))
    if kp == "assign" or kg == "assign":
        a, other, pred_side = (p, g, True) if kp == "assign" else (g, p, False)
        if other[0] == "rel":
            rel = _as_rel(a)
            return bool(rel and (_rel_equal(rel, other) if pred_side else _rel_equal(other, rel)))
        return _equal(a[2], g) if pred_side else _equal(p, a[2])
    if kp == "text" or kg == "text":
        texts = [_canon_text(x[1]) for x in (p, g) if x[0] in ("text", "scalar", "raw")]
        return len(texts) == 2 and texts[0] == texts[1]
    if kp == "raw" or kg == "raw":
        return False
    if kp == kg == "scalar":
        return _scalar_equal(p, g)
    if kg == "base":
        return (kp == "base" and p[1:] == g[1:]) or (kp == "scalar" and p[1] == g[1])  # 2516 for 2516_8
    if kp == kg == "inf":
        return p[1] == g[1]
    if kp == kg == "rel":
        return _rel_equal(p, g)
    if kp == kg == "chain":
        return p[1] == g[1] and all(_equal(a, b) for a, b in zip(p[2], g[2]))
    if kg in ("rel", "chain") and kp in ("tuple", "union"):  # a set may answer a relation, not the reverse
        interval = _gold_interval(g)
        return interval is not None and _equal(p, interval)
    if kp == kg == "tuple":
        return p[1:3] == g[1:3] and len(p[3]) == len(g[3]) and all(map(_equal, p[3], g[3]))
    if kp == kg == "matrix":
        return len(p[1]) == len(g[1]) and all(len(a) == len(b) and all(map(_equal, a, b)) for a, b in zip(p[1], g[1]))
    if {kp, kg} == {"list", "tuple"}:  # "1, 3" against (1, 3): in order
        t = p if kp == "tuple" else g
        lst = g if kp == "tuple" else p
        return t[1:3] == ("(", ")") and len(t[3]) == len(lst[1]) and all(map(_equal, *((t[3], lst[1]) if kp == "tuple"
                                                                                        else (lst[1], t[3]))))
    if kp in ("list", "set", "union") or kg in ("list", "set", "union"):
        if "tuple" in (kp, kg) and "union" not in (kp, kg) or "matrix" in (kp, kg):
            return False
        ps = p[1] if kp in ("list", "set", "union") else (p,)
        gs = g[1] if kg in ("list", "set", "union") else (g,)
        return _set_equal(ps, gs)
    return False


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer must be a non-empty string, got {gold!r}")
    if len(gold) > MAX_GOLD_CHARS:
        raise ValueError(f"gold answer is {len(gold)} chars, more than {MAX_GOLD_CHARS}")
    norm = _normalize(gold)
    try:
        node = _parse_answer(norm)
    except Exception as e:  # ParseError, overflow, recursion: all mean "not a usable gold"
        raise ValueError(f"cannot parse gold answer {gold!r}: {e}") from None
    if _has_raw(node):
        raise ValueError(f"cannot parse gold answer {gold!r} (unsupported notation)")
    return _canon(norm), node


@lru_cache(maxsize=4096)
def _parse_pred(pred: str):
    """(canonical string, answer node or None): a pred that does not parse can still match a gold string."""
    norm = _normalize(pred)
    try:
        return _canon(norm), _parse_answer(norm)
    except Exception:
        return _canon(norm), None


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
