"""
LaTeX math, read by a small hand-written parser: normalisation, tokenizer, recursive-descent parser, evaluation.

Nothing here knows about answers or rewards (that is math_grader.py); this is the part any LaTeX-reading tool needs:

    normalize(s)        one spelling per formula: unicode -> LaTeX, no $ / \\left / \\displaystyle / spacing commands,
                        \\dfrac -> \\frac, degrees dropped, % kept as "%", relations written <= >= != ≈
    canon(s)            the whitespace-free form used for string comparison
    parse(s)            a normalised expression -> AST (tuples, listed below); ParseError if it is not one
    evaluate(ast)       its value at N_POINTS fixed points (each variable gets a fixed pseudo-random value per point)
    split_top, find_top, split_rel, wrapped, match_brace, math_spans: bracket-aware scanning of answers and text

No eval, no sympy. Everything is bounded: nesting depth (MAX_DEPTH), list sizes (MAX_ITEMS), exact rational powers
(MAX_EXACT_BITS, then floats), number lengths; a non-finite or absurdly large value raises ArithmeticError.
"""
import cmath
import math
import re
import zlib
from fractions import Fraction

MAX_DEPTH = 40             # bracket / parser nesting
MAX_ITEMS = 64             # elements of one list, set, tuple or matrix
MAX_EXACT_BITS = 4096      # exact rational powers bigger than this fall back to floats (and may overflow -> refused)
N_POINTS = 4               # expressions with variables are evaluated at this many fixed points


class ParseError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# 1. Bracket-aware scanning

_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_OPEN, _CLOSE = "([{", ")]}"
RELS = ("<=", ">=", "!=", "=", "<", ">", "≈")


def match_brace(s: str, i: int) -> int:
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


def split_top(s: str, seps: str) -> list[str]:
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
        raise ParseError("too many elements")
    return parts


def find_top(s: str, word: str) -> list[int]:
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


def split_rel(s: str) -> tuple[list[str], list[str]]:
    """Split "a <= b < c" at top-level relation operators: (["a", "b", "c"], ["<=", "<"])."""
    parts, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0:
            op = next((r for r in RELS if s.startswith(r, i)), None)
            if op:
                parts.append(s[start:i])
                ops.append(op)
                i += len(op)
                start = i
                continue
        i += 1
    parts.append(s[start:])
    return parts, ops


def wrapped(s: str, open_: str, close: str) -> bool:
    """Is s one bracket group open_ ... close (the first bracket closes at the very end)?"""
    if not (s.startswith(open_) and s.endswith(close)) or len(s) < len(open_) + len(close):
        return False
    depth = 0
    for i, c in enumerate(s[:-1]):
        depth += (c in _OPEN) - (c in _CLOSE)
        if depth == 0 and i >= len(open_) - 1:
            return False
    return True


def math_spans(text: str) -> list[tuple[int, int, str]]:
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
        j = match_brace(s, i + len(cmd))
        if j < 0:
            return s
        s = s[:i] + s[i + len(cmd) + 1:j - 1] + s[j:]
    return s


def normalize(s: str) -> str:
    """One spelling per answer: no delimiters, spacing, \\left/\\right, \\dfrac, degrees; relations as <= >= != ≈."""
    s = re.sub(r"\s+", " ", _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], s))
    for cmd in _UNWRAP:
        s = _unwrap(s, cmd)
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    return s.strip().rstrip(".,;").strip()


def canon(s: str) -> str:
    """Whitespace-free form for string comparison (a space is kept between two alphanumerics: "2 3" != "23")."""
    return re.sub(r"(?<=[\w]) (?=[\w])", "\x00", s).replace(" ", "").replace("\x00", " ")


# ---------------------------------------------------------------------------------------------------------------
# 3. Expressions: tokenizer and recursive-descent parser
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
            raise ParseError(f"unexpected character {s[pos]!r}")
        toks.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return toks


class Parser:
    """Recursive descent: expr = term (+|- term)*, term = unary ((*|/|:|implicit) unary)*, unary = -unary | power."""

    def __init__(self, text: str):
        self.toks, self.i, self.depth = _tokenize(text), 0, 0

    def peek(self):
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def kind(self):
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self):
        if self.i >= len(self.toks):
            raise ParseError("unexpected end")
        self.i += 1
        return self.toks[self.i - 1][1]

    def expect(self, tok):
        if self.take() != tok:
            raise ParseError(f"expected {tok!r}")

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise ParseError(f"unexpected {self.peek()!r}")
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
            raise ParseError("nested too deeply")
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
                raise ParseError("power chain too long")
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
        raise ParseError("factorial chain too long")

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
            raise ParseError("nested too deeply")
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
        raise ParseError(f"unexpected {t!r}")

    def number(self, text: str):
        if len(text) > 60 or ("e" in text.lower() and abs(int(re.split("[eE]", text)[1])) > 300):
            raise ParseError("number too long")
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
        raise ParseError(f"unsupported command \\{name}")

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
            raise ParseError("function without argument")
        return factors[0][1] if len(factors) == 1 else ("prod", tuple(factors))


def parse(text: str):
    """A normalised expression -> AST; ParseError if it is not one (trailing tokens, bad nesting, unknown command)."""
    return Parser(text).parse()


# ---------------------------------------------------------------------------------------------------------------
# 4. Evaluation: exact rationals where possible, complex floats otherwise, variables at fixed points

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
    raise ParseError(f"unknown node {tag}")


def has_vars(node) -> bool:
    if node[0] == "var":
        return True
    for c in node[1:]:
        if isinstance(c, tuple) and c:
            if has_vars(c) if isinstance(c[0], str) else any(has_vars(n) for _, n in c):
                return True
    return False


def evaluate(ast) -> tuple:
    """Values at the N_POINTS fixed points (one value repeated if there are no variables); None where undefined.

    ArithmeticError if the expression is undefined at every point."""
    n = N_POINTS if has_vars(ast) else 1
    values = []
    for k in range(n):
        try:
            values.append(_eval(ast, k))
        except (ArithmeticError, ValueError, OverflowError, ZeroDivisionError, TypeError):
            values.append(None)
    if all(v is None for v in values):
        raise ArithmeticError("cannot evaluate the expression at any point")
    return tuple(values) * (N_POINTS // n)
