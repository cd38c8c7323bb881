"""Tasks: the problems the model is trained and evaluated on.

R1-Zero (paper Sec. 2.2) needs problems whose answers a rule can check: math with a final answer, code with tests.
At our scale we generate them, with no download and no leakage:
- `ArithmeticTask`: sums of distinct digits, "3 + 7 + 5 + 2 + 9" -> "26". The digits are distinct so that each
  reasoning step ("10 + 5 = 15") finds its next operand by content (the number after the last one used) rather than
  by counting positions: a tiny model learns that in minutes, and RL then has a reliable mode to select (sums of
  six digits with repeats were not learned in the same time: see dev/LOG.md).
- `CountdownTask`: reach a target from given numbers with + - * /, each number once. A search task: the first try
  is often wrong, so checking and retrying pays, which is where the paper's "aha" behaviour can grow.
- `load_jsonl`: real benchmarks (GSM8K, MATH-500, AIME 2024) as the same `Problem` type, each remembering its
  file:line; `validate_problems` finds, before step 1, the problems that would crash a run at the step that samples
  them (a prompt too long for the context, a gold answer the grader cannot parse, missing countdown/code data).

Splits: each problem goes to "train" or "test" by a stable hash of its canonical content, the part that decides the
answer (arithmetic: the multiset of signed terms, so no reordering of a test sum is ever trained on; countdown: the
multiset of numbers alone, so a held-out set of numbers is never trained on with any target). A test problem is thus
never in train, whatever the seeds. `sample(split, n, seed)`
draws n distinct problems uniformly from the split, listed once per task object.

`worked_solution(problem)` gives the steps a careful solver writes, one short line each, for building the base
model's corpus. Countdown traces are not a real search log: they show 0..max_failed_attempts near misses
("... = 21, not 22", chosen by a hash of the problem) before the solution, so that the base model contains a
check-and-retry mode for RL to select. pretrain.py builds its countdown corpus from `candidates`, `attempt` and
`equation` instead (a designed mix of one-attempt and rare search completions; see its docstring and README).
`CountdownTask(n_numbers=4, min_numbers=3)` mixes 3- and 4-number problems, sampled in equal shares.

Countdown follows the TV game's rules when generating: every intermediate result is a positive integer. `solve`
also finds solutions that need negative or fractional intermediates, as any equation that hits the target counts.
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from nanor1.math_grader import math_equal

SPLITS = ("train", "test")
KINDS = ("math", "countdown", "code")


@dataclass(frozen=True)
class Problem:
    id: str  # stable id, e.g. "arith-train-3+7+5+2+9", "gsm8k-test-0000"
    question: str  # the user's question text (goes into the prompt template)
    answer: str  # gold final answer as a string ("26", "\\frac{1}{2}", for countdown the target "24")
    kind: str  # "math" (graded with math_equal), "countdown" (graded by checking the equation), "code" (run tests)
    data: dict = field(default_factory=dict)  # countdown {"numbers": [..], "target": int}; code {"tests": [...]}


def _unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by `text` forever (no Python hash seed involved)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


class _GeneratedTask:
    """Split and sampling shared by the generated tasks; subclasses list their problems as hashable keys."""

    name: str
    test_fraction: float

    def _split_of(self, key) -> str:
        """ "train" or "test", fixed by the problem's canonical content (a tuple of ints) and test_fraction."""
        return "test" if _unit_hash(f"{self.name}:{self._canonical(key)}") < self.test_fraction else "train"

    def _pool(self, split: str) -> list:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not self._pools:  # list every problem once: both splits in one pass
            self._pools.update({s: [] for s in SPLITS})
            split_of = {}  # canonical content -> split; many arithmetic keys share one
            for key in self._all_keys():
                canon = self._canonical(key)
                if canon not in split_of:
                    split_of[canon] = self._split_of(key)
                self._pools[split_of[canon]].append(key)
        return self._pools[split]

    def count(self, split: str) -> int:
        """Number of distinct problems in `split`."""
        return len(self._pool(split))

    def sample(self, split: str, n: int, seed: int) -> list[Problem]:
        """n distinct problems of `split`, uniformly drawn; the same (split, n, seed) gives the same list."""
        pool = self._pool(split)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if n > len(pool):
            raise ValueError(f"asked for {n} {split} problems but {self!r} has only {len(pool)} distinct "
                             f"{split} problems")
        rng = random.Random(seed)
        return [self._problem(pool[i], split) for i in rng.sample(range(len(pool)), n)]

    def _check_problem(self, problem: Problem, fields: tuple[str, ...]) -> dict:
        if problem.kind != self.kind or any(f not in problem.data for f in fields):
            raise ValueError(f"{self.name} needs a {self.kind!r} problem with data {fields}, got {problem!r}")
        return problem.data


# ----------------------------------------------------------------------------------------------------------------
# Arithmetic: running sums of distinct digits

@dataclass
class ArithmeticTask(_GeneratedTask):
    """Sums (and with ops="+-", differences) of n_terms distinct digits 1..9, e.g. "3 + 7 - 5 + 2 + 9"."""

    n_terms: int = 5
    ops: str = "+"  # "+", "-" or "+-": the operators that may precede each term after the first
    test_fraction: float = 0.2
    _pools: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    name = "arithmetic"
    kind = "math"

    def __post_init__(self):
        if not (isinstance(self.n_terms, int) and 2 <= self.n_terms <= 9):
            raise ValueError(f"n_terms must be an int in 2..9 (distinct digits 1..9), got {self.n_terms!r}")
        if self.ops not in ("+", "-", "+-", "-+"):
            raise ValueError(f"ops must be '+', '-' or '+-', got {self.ops!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        size = math.perm(9, self.n_terms) * len(self.ops) ** (self.n_terms - 1)
        if size > 2_000_000:  # the pool is listed in memory
            raise ValueError(f"n_terms={self.n_terms}, ops={self.ops!r} gives {size:,} problems, too many to list")

    def _all_keys(self):
        # key: the signed terms in question order, e.g. (3, 7, -5, 2, 9); the first term is always positive
        for digits in itertools.permutations(range(1, 10), self.n_terms):
            for signs in itertools.product([1 if op == "+" else -1 for op in self.ops], repeat=self.n_terms - 1):
                yield (digits[0],) + tuple(s * d for s, d in zip(signs, digits[1:]))

    def _canonical(self, key) -> tuple:
        return tuple(sorted(key))  # order-free: every reordering has the same answer

    def _problem(self, terms, split) -> Problem:
        text = str(terms[0]) + "".join(f" {'+' if t > 0 else '-'} {abs(t)}" for t in terms[1:])
        return Problem(id=f"arith-{split}-{text.replace(' ', '')}", question=text, answer=str(sum(terms)),
                       kind="math", data={"terms": list(terms)})

    def worked_solution(self, problem: Problem) -> list[str]:
        """Running totals, one line per term: "3 + 7 = 10", "10 - 5 = 5", ..."""
        terms = self._check_problem(problem, ("terms",))["terms"]
        lines, total = [], terms[0]
        for t in terms[1:]:
            lines.append(f"{total} {'+' if t > 0 else '-'} {abs(t)} = {total + t}")
            total += t
        return lines

    def answer_text(self, problem: Problem) -> str:
        """What goes inside <answer>: the sum."""
        return problem.answer


# ----------------------------------------------------------------------------------------------------------------
# Countdown: search over binary combinations

# An expression is a tuple tree: (value,) for a given number, (value, op, left, right) for an operation.
# Tuples keep the search cheap (~1k trees for 4 numbers); text and steps are rendered only for the trees shown.
PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(a: tuple, b: tuple, game_rules: bool):
    """Every tree one operation makes of a and b."""
    hi, lo = (a, b) if a[0] >= b[0] else (b, a)  # the larger operand first: "7 + 3", "7 - 3"
    yield (hi[0] + lo[0], "+", hi, lo)
    yield (hi[0] * lo[0], "*", hi, lo)
    if game_rules:  # every intermediate result a positive integer
        if hi[0] > lo[0]:
            yield (hi[0] - lo[0], "-", hi, lo)
        if hi[0] % lo[0] == 0:
            yield (hi[0] // lo[0], "/", hi, lo)
    else:  # exact rationals, any sign
        yield (hi[0] - lo[0], "-", hi, lo)
        yield (lo[0] - hi[0], "-", lo, hi)
        for x, y in ((hi, lo), (lo, hi)):
            if y[0] != 0:
                yield (x[0] / y[0], "/", x, y)


def _expressions(items: list[tuple], game_rules: bool):
    """Every tree using all items once, made by repeatedly combining two of them (this reaches every tree shape)."""
    if len(items) == 1:
        yield items[0]
        return
    for i, j in itertools.combinations(range(len(items)), 2):
        rest = [x for k, x in enumerate(items) if k not in (i, j)]
        for e in _combine(items[i], items[j], game_rules):
            yield from _expressions(rest + [e], game_rules)


def _num(v: int | Fraction) -> str:
    return str(v.numerator) if isinstance(v, Fraction) and v.denominator == 1 else str(v)


def _text(e: tuple) -> tuple[str, int]:
    """Infix text with the fewest parentheses, and its precedence (3 for a bare number)."""
    if len(e) == 1:
        return _num(e[0]), 3
    (left, lp), (right, rp), p = _text(e[2]), _text(e[3]), PREC[e[1]]
    left = f"({left})" if lp < p else left
    right = f"({right})" if rp < p or (rp == p and e[1] in "-/") else right  # a - (b + c), a / (b * c)
    return f"{left} {e[1]} {right}", p


def _steps(e: tuple) -> list[str]:
    """The operations of a tree, innermost first: ["7 - 2 = 5", "5 * 3 = 15"]."""
    if len(e) == 1:
        return []
    return _steps(e[2]) + _steps(e[3]) + [f"{_num(e[2][0])} {e[1]} {_num(e[3][0])} = {_num(e[0])}"]


def solve(numbers: list[int], target: int) -> str | None:
    """An equation using each number once that equals target (e.g. "(7 - 2) * 3 + 9"), or None if there is none."""
    if not (1 <= len(numbers) <= 5 and all(isinstance(x, int) and not isinstance(x, bool) for x in numbers)):
        raise ValueError(f"solve needs 1 to 5 integers (the search grows factorially), got {numbers!r}")
    if not isinstance(target, (int, Fraction)) or isinstance(target, bool):
        raise ValueError(f"target must be an int, got {target!r}")
    if all(x > 0 for x in numbers):  # first try the game's rules: the nicest equations
        found = next((e for e in _expressions([(x,) for x in numbers], True) if e[0] == target), None)
        if found:
            return _text(found)[0]
    found = next((e for e in _expressions([(Fraction(x),) for x in numbers], False) if e[0] == target), None)
    return _text(found)[0] if found else None


@functools.lru_cache(maxsize=4096)
def _game_trees(numbers: tuple[int, ...]) -> tuple[tuple, ...]:
    """Every distinct game-rule tree over the sorted numbers (cached: the base corpus asks once per document)."""
    return tuple(sorted(set(_expressions([(x,) for x in numbers], game_rules=True))))


def _max_step(e: tuple) -> int:
    """The largest value any step of the tree computes (the numbers themselves included)."""
    return e[0] if len(e) == 1 else max(e[0], _max_step(e[2]), _max_step(e[3]))


def _reachable(numbers: tuple[int, ...], memo: dict) -> set[int]:
    """Every value the game's rules can make from all of `numbers` (sorted), memoized on sub-multisets."""
    if numbers not in memo:
        if len(numbers) == 1:
            memo[numbers] = set(numbers)
        else:
            out = set()
            for i, j in itertools.combinations(range(len(numbers)), 2):
                rest = numbers[:i] + numbers[i + 1:j] + numbers[j + 1:]
                lo, hi = numbers[i], numbers[j]  # sorted, so lo <= hi
                for v in (hi + lo, hi * lo, hi - lo, hi // lo if hi % lo == 0 else 0):
                    if v > 0:
                        out |= _reachable(tuple(sorted(rest + (v,))), memo)
            memo[numbers] = out
    return memo[numbers]


@dataclass
class CountdownTask(_GeneratedTask):
    """Reach a target from n_numbers numbers in 1..max_number with + - * /, each once: "Use 3, 5, 7 to make 22"."""

    n_numbers: int = 3
    max_number: int = 10
    max_target: int = 100
    max_failed_attempts: int = 2  # near misses shown before the solution in worked_solution
    test_fraction: float = 0.2
    min_numbers: int = 0  # > 0: a mix of difficulties, min_numbers..n_numbers numbers, sampled in equal shares
    _pools: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    name = "countdown"
    kind = "countdown"

    def __post_init__(self):
        for knob, lo in (("n_numbers", 2), ("max_number", 1), ("max_target", 1), ("max_failed_attempts", 0),
                         ("min_numbers", 0)):
            if not isinstance(getattr(self, knob), int) or getattr(self, knob) < lo:
                raise ValueError(f"{knob} must be an int >= {lo}, got {getattr(self, knob)!r}")
        if self.n_numbers > 4:
            raise ValueError(f"n_numbers must be 2, 3 or 4, got {self.n_numbers}")
        if self.min_numbers and not 2 <= self.min_numbers <= self.n_numbers:
            raise ValueError(f"min_numbers must be 0 (off) or in 2..n_numbers={self.n_numbers}, got {self.min_numbers}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        n_sets = math.comb(self.max_number + self.n_numbers - 1, self.n_numbers)
        if n_sets > 25_000:  # every multiset is searched once to list the pool
            raise ValueError(f"n_numbers={self.n_numbers}, max_number={self.max_number} gives {n_sets:,} number sets, "
                             f"too many to list (at most 25,000)")

    @property
    def sizes(self) -> tuple[int, ...]:
        """The numbers of numbers a problem may have: (n_numbers,), or min_numbers..n_numbers for a mix."""
        return tuple(range(self.min_numbers or self.n_numbers, self.n_numbers + 1))

    def _all_keys(self):
        # key: (sorted numbers, target) for every target in 1..max_target the game's rules can reach
        memo = {}
        for size in self.sizes:
            for numbers in itertools.combinations_with_replacement(range(1, self.max_number + 1), size):
                for target in sorted(_reachable(numbers, memo)):
                    if target <= self.max_target:
                        yield numbers, target

    def _canonical(self, key) -> tuple:
        return key  # (sorted numbers, target) already is

    def _split_of(self, key) -> str:
        """By the multiset of numbers alone: every target of a held-out set of numbers is held out, so no test
        problem shares its numbers (let alone its numbers and target) with a training one."""
        return "test" if _unit_hash(f"{self.name}:{key[0]}") < self.test_fraction else "train"

    def sample(self, split: str, n: int, seed: int) -> list[Problem]:
        """As _GeneratedTask.sample; a mix of sizes draws them in equal shares (the first sizes get the remainder),
        in a shuffled order, as the 4-number pool alone is ~10x the 3-number one."""
        if len(self.sizes) == 1:
            return super().sample(split, n, seed)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        rng, out = random.Random(seed), []
        for i, size in enumerate(self.sizes):
            pool = [key for key in self._pool(split) if len(key[0]) == size]
            want = n // len(self.sizes) + (i < n % len(self.sizes))
            if want > len(pool):
                raise ValueError(f"asked for {want} {split} problems of {size} numbers but {self!r} has only "
                                 f"{len(pool)}")
            out += [pool[j] for j in rng.sample(range(len(pool)), want)]
        rng.shuffle(out)
        return [self._problem(key, split) for key in out]

    def _problem(self, key, split) -> Problem:
        numbers, target = list(key[0]), key[1]
        random.Random(f"order:{self._canonical(key)}").shuffle(numbers)  # display order fixed by the problem
        return Problem(id=f"countdown-{split}-{'_'.join(map(str, key[0]))}-{target}",
                       question=f"Use {', '.join(map(str, numbers))} to make {target}", answer=str(target),
                       kind="countdown", data={"numbers": numbers, "target": target})

    def _trace(self, problem: Problem) -> tuple[list[str], str]:
        data = self._check_problem(problem, ("numbers", "target"))
        numbers, target = data["numbers"], data["target"]
        if not all(isinstance(x, int) and x > 0 for x in numbers) or not 1 <= len(numbers) <= 5:
            raise ValueError(f"{problem.id}: countdown numbers must be 1 to 5 positive ints, got {numbers!r}")
        trees = set(_expressions([(x,) for x in numbers], game_rules=True))  # equal tuples = the same expression
        right = sorted(e for e in trees if e[0] == target)
        if not right:
            raise ValueError(f"{problem.id}: no solution with positive-integer steps, so no worked solution")
        # near misses: a careful solver tries combinations that land close to the target
        wrong = sorted((e for e in trees if e[0] != target), key=lambda e: (abs(e[0] - target), e))[:8]
        rng = random.Random(f"trace:{sorted(numbers)}->{target}")
        misses = rng.sample(wrong, min(rng.randint(0, self.max_failed_attempts), len(wrong)))
        solution = rng.choice(right)
        lines = [", ".join(_steps(e)) + f", not {target}" for e in misses]
        lines += [", ".join(_steps(solution)), f"{_text(solution)[0]} = {target}"]
        return lines, _text(solution)[0]

    def candidates(self, problem: Problem, max_value: int | None = None) -> tuple[list[tuple], list[tuple]]:
        """(hits, misses): the game-rule expression trees over the problem's numbers that reach its target, and
        those that do not, nearest value first; with max_value, only trees whose every step stays <= max_value
        (what the base corpus shows: a tiny model learns fewer, smaller arithmetic facts)."""
        data = self._check_problem(problem, ("numbers", "target"))
        target, trees = data["target"], _game_trees(tuple(sorted(data["numbers"])))
        if max_value is not None:
            trees = [e for e in trees if _max_step(e) <= max_value]
        hits = [e for e in trees if e[0] == target]
        misses = sorted((e for e in trees if e[0] != target), key=lambda e: (abs(e[0] - target), e))
        return hits, misses

    @staticmethod
    def attempt(tree: tuple) -> str:
        """One attempt as the base corpus writes it: the steps of a candidate, "7 * 3 = 21, 21 + 5 = 26"."""
        return ", ".join(_steps(tree))

    @staticmethod
    def equation(tree: tuple) -> str:
        """The candidate's infix text, "7 * 3 + 5" (what goes inside <answer>)."""
        return _text(tree)[0]

    def worked_solution(self, problem: Problem) -> list[str]:
        """A short search: near misses ("7 * 3 = 21, 21 + 5 = 26, not 22"), the hit, then the equation."""
        return self._trace(problem)[0]

    def answer_text(self, problem: Problem) -> str:
        """What goes inside <answer>: the equation the worked solution ends with, e.g. "5 * 3 + 7"."""
        return self._trace(problem)[1]


# ----------------------------------------------------------------------------------------------------------------
# Registry

TASKS = {"arithmetic": ArithmeticTask, "countdown": CountdownTask}


def make_task(name: str, **kwargs):
    """Build a task by name, e.g. make_task("countdown", n_numbers=4)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    knobs = [f.name for f in dataclasses.fields(TASKS[name]) if f.init]
    unknown = sorted(set(kwargs) - set(knobs))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; valid options: {knobs}")
    return TASKS[name](**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Real benchmarks from JSONL

class JsonlFormatError(ValueError):
    """A malformed line in a benchmark file; the message names the file and the line."""


_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def _answer_string(answer) -> str | None:
    """The gold answer as a string: GSM8K's "...#### 1,234" -> "1234"; a JSON number -> its text; else None."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, float):
        return str(int(answer)) if answer.is_integer() else repr(answer)
    if not isinstance(answer, str):
        return None
    if "####" in answer:  # GSM8K keeps its worked solution in the answer field, the result after "####"
        answer = answer.rsplit("####", 1)[1].strip()
        if _THOUSANDS.fullmatch(answer):
            answer = answer.replace(",", "")
    return answer.strip() or None


def read_jsonl(path: str | Path):
    """(where, record) for each non-blank line of a JSONL file of objects; where is "path:line". A line that is not
    UTF-8, not JSON or not an object raises JsonlFormatError naming it. Shared by the loaders of problems (here) and
    of conversations (nanor1/sft.py)."""
    path = Path(path)
    with path.open("rb") as f:  # bytes: a bad byte is reported with its line, not as a bare UnicodeDecodeError
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a BOM on the first line is fine
            except UnicodeDecodeError as e:
                raise JsonlFormatError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                       "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlFormatError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise JsonlFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def load_jsonl(path: str | Path, kind: str = "math") -> list[Problem]:
    """Problems from a JSONL file of {"problem" or "question", "answer", optional "id"/"unique_id", extras...}.

    Each problem's data["where"] is "path:line", so later errors (validate_problems, a reward) can name it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    problems = []
    for where, record in read_jsonl(path):
        question = record.get("problem", record.get("question"))
        if not isinstance(question, str) or not question.strip():
            raise JsonlFormatError(f"{where}: needs a non-empty string 'problem' or 'question'")
        if "answer" not in record:
            raise JsonlFormatError(f"{where}: missing 'answer'")
        answer = _answer_string(record["answer"])
        if answer is None:
            raise JsonlFormatError(f"{where}: 'answer' must be a non-empty string or a number, "
                                   f"got {record['answer']!r}")
        pid = record.get("id", record.get("unique_id"))
        pid = f"{path.stem}-{where.rsplit(':', 1)[1]}" if pid is None else str(pid)
        extras = {k: v for k, v in record.items() if k not in ("problem", "question", "answer", "id")}
        if isinstance(record["answer"], str) and "####" in record["answer"]:
            extras.setdefault("solution", record["answer"])  # GSM8K's worked solution, kept for SFT
        extras["where"] = where
        problems.append(Problem(id=pid, question=question, answer=answer, kind=kind, data=extras))
    if not problems:
        raise JsonlFormatError(f"{path}: no problems in it (the file is empty or blank)")
    return problems


def problem_where(problem: Problem) -> str:
    """Where a problem comes from, for messages: "file.jsonl:12 (id ...)" for a loaded one, else "problem <id>"."""
    where = problem.data.get("where") if isinstance(problem.data, dict) else None
    return f"{where} (id {problem.id})" if where else f"problem {problem.id}"


def _data_error(problem: Problem) -> str | None:
    """What is wrong with a countdown/code problem's data for its reward, or None."""
    data = problem.data if isinstance(problem.data, dict) else {}
    if problem.kind == "countdown":
        numbers, target = data.get("numbers"), data.get("target")
        if not (isinstance(numbers, list) and numbers and all(type(x) is int for x in numbers)):
            return f"countdown needs data 'numbers', a non-empty list of ints, got {numbers!r:.80}"
        if type(target) is not int:
            return f"countdown needs data 'target', an int, got {target!r:.80}"
    elif problem.kind == "code":
        tests = data.get("tests")
        if not (isinstance(tests, list) and tests):
            return f"code needs data 'tests', a non-empty list of {{'input', 'output'}} dicts, got {tests!r:.80}"
        for i, t in enumerate(tests):
            if not (isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)):
                return f"code test {i} must be a dict with str 'input' and 'output', got {t!r:.80}"
    return None


def validate_problems(problems: list[Problem], *, prompt_tokens: Callable[[Problem], int],
                      max_prompt_tokens: int) -> list[str]:
    """One message per problem that would crash or be ungradable at the step that samples it; [] if all are fine.

    Checks: the prompt fits (prompt_tokens(p) <= max_prompt_tokens: the context minus the tokens to generate),
    a known kind, a gold answer the math grader can parse, countdown numbers/target, code tests. Scripts call it
    before step 1 and refuse the file or drop the listed problems with a warning; each message names the problem's
    file:line (or id).
    """
    errors = []
    for p in problems:
        where = problem_where(p)
        if p.kind not in KINDS:
            errors.append(f"{where}: unknown kind {p.kind!r} (expected one of {KINDS})")
            continue
        try:
            n = prompt_tokens(p)
        except Exception as e:  # e.g. a template that cannot take this question
            errors.append(f"{where}: cannot build its prompt ({type(e).__name__}: {e})")
        else:
            if n > max_prompt_tokens:
                errors.append(f"{where}: prompt is {n} tokens, more than the {max_prompt_tokens} the context "
                              "leaves for it")
        if p.kind == "math":
            try:
                math_equal("0", p.answer)  # ValueError for a gold it cannot parse; anything else is a grader bug
            except Exception as e:
                errors.append(f"{where}: the grader cannot use its gold answer {p.answer!r:.80} "
                              f"({type(e).__name__}: {e})")
        elif (why := _data_error(p)) is not None:
            errors.append(f"{where}: {why}")
    return errors


if __name__ == "__main__":
    for task in (ArithmeticTask(), ArithmeticTask(ops="+-"), CountdownTask(), CountdownTask(n_numbers=4)):
        print(task, {s: task.count(s) for s in SPLITS})
        for p in task.sample("train", 2, seed=0):
            print(f"  {p.question!r} -> {p.answer!r}  [{task.answer_text(p)}]")
            for line in task.worked_solution(p):
                print("     ", line)
    print("solve([4, 7, 8, 8], 24) =", solve([4, 7, 8, 8], 24), "| solve([1, 5, 5, 5], 24) =", solve([1, 5, 5, 5], 24))


# ----------------------------------------------------------------------------------------------------------------
# R1 (paper sec. 2.3): a second language, and general (non-reasoning) tasks with references
#
# Language mixing (what R1's language-consistency reward fixes) needs prompts in two scripts and a base model that
# has seen reasoning in both. BilingualArithmeticTask poses each sum in English ("3 + 7 + 5") or Chinese ("计算 3 +
# 7 + 5", data["lang"] = "zh"). A worked solution is the English task's bare running totals framed by an opening
# and a closing sentence, each in either language:
#     我来把它们加起来。          <- opening sentence (langs[0])
#     3 + 7 = 10                  <- the running totals: digits only, identical in both languages
#     10 + 5 = 15
#     so the total is 15.         <- closing sentence (langs[1]): here the reasoning switched language
# Why the words sit around the totals and not on every line: with a step word on each line ("then 3 + 7 = 10",
# "然后 ...") the tiny model did not learn the running sums in 1,300 steps (forced-mode accuracy 4-12% against the
# English corpus's 72%; dev/LOG.md), while bare totals it learns as it does in English.
# pretrain.py picks the two languages (--p-other-lang, --p-switch), so the base, and R1-Zero after it, mixes
# languages and the language reward has words to count. The split is by the signed terms alone: a test sum is never
# trained on in either language.

LANGS = ("en", "zh")
PHRASES = {  # what a solver writes, per language; {a} the answer, {b} a wrong total
    "en": {"ask": "{q}", "begin": "let me add them up.", "end": "so the total is {a}.",
           "check": "wait, let me check.", "confirm": "yes, it is {a}.",
           "fix": "so it is {a}, not {b}.", "summary": "The answer is \\boxed{{{a}}}.", "plain": "The answer is {a}.",
           "hunches": ("this is easy", "I know this one", "quick one", "easy", "I think I know")},
    "zh": {"ask": "计算 {q}", "begin": "我来把它们加起来。", "end": "所以总和是 {a}。",
           "check": "等等，我检查一下。", "confirm": "对，是 {a}。",
           "fix": "所以是 {a}，不是 {b}。", "summary": "答案是 \\boxed{{{a}}}。", "plain": "答案是 {a}。",
           "hunches": ("这很简单", "我知道", "很快", "简单", "我想我知道")},
}


# (PHRASES key, regex) of every fixed sentence in every language, numbers as named groups: what localize() reads
_SENTENCES = [(key, re.compile(re.escape(words[key]).replace(re.escape("{a}"), r"(?P<a>-?\d+)")
                                                    .replace(re.escape("{b}"), r"(?P<b>-?\d+)")))
              for words in PHRASES.values() for key in ("begin", "end", "check", "confirm", "fix")]


@dataclass
class BilingualArithmeticTask(ArithmeticTask):
    """ArithmeticTask with every sum posed in English and in Chinese (two problems, one split): "计算 3 + 7 + 5"."""

    name = "arithmetic-bilingual"

    def _all_keys(self):
        for terms in super()._all_keys():
            for lang in LANGS:
                yield terms, lang

    def _canonical(self, key) -> tuple:
        return tuple(sorted(key[0]))        # the language does not change the answer: both go to one split

    def _problem(self, key, split) -> Problem:
        terms, lang = key
        p = super()._problem(terms, split)
        return dataclasses.replace(p, id=f"{p.id}-{lang}", question=PHRASES[lang]["ask"].format(q=p.question),
                                   data={"terms": list(terms), "lang": lang})

    def worked_solution(self, problem: Problem, langs: tuple[str, str] | None = None) -> list[str]:
        """The running totals between an opening and a closing sentence, in langs = (opening, closing) languages
        (default: both in the problem's language)."""
        langs = langs or (problem.data["lang"],) * 2
        return self.narrate(super().worked_solution(problem), self.answer_text(problem), langs)

    @staticmethod
    def narrate(lines: list[str], total: str, langs: tuple[str, str]) -> list[str]:
        """Frame running-total lines whose last total is `total` (a slipped pass has a wrong one)."""
        if len(langs) != 2 or any(lang not in PHRASES for lang in langs):
            raise ValueError(f"langs must be (opening, closing) languages from {LANGS}, got {langs!r}")
        return [PHRASES[langs[0]]["begin"], *lines, PHRASES[langs[1]]["end"].format(a=total)]

    @staticmethod
    def localize(line: str, lang: str) -> str:
        """A line that is one of the solver's sentences (PHRASES, any language, with its numbers) written in `lang`
        instead; any other line unchanged. What R1's cold-start post-processing does to a reasoning that drifted into
        the other language (the paper's human annotators; here a rule, as the sentences are fixed)."""
        for key, pattern in _SENTENCES:
            if m := pattern.fullmatch(line.strip()):
                return PHRASES[lang][key].format(**m.groupdict())
        return line

    def summary(self, problem: Problem, answer: str | None = None) -> str:
        """R1's readable summary in the problem's language: "The answer is \\boxed{26}." / "答案是 \\boxed{26}。"."""
        return PHRASES[problem.data.get("lang", "en")]["summary"].format(a=problem.answer if answer is None else answer)


TASKS["arithmetic-bilingual"] = BilingualArithmeticTask


# General tasks: what R1's stage-3 SFT mixes in (writing, factual QA, ...) and stage 4 rewards with reward models.
# Each problem has a reference answer a rule can check (kind "general", data["reference"]); the knowledge questions
# read a generated table whose "code" field is private: answering it, or writing it anywhere in the response
# (reasoning included), is the miniature harm (data["private"] lists the strings that must not appear).

_SYLLABLES = ("zo", "ka", "mi", "ru", "te", "vo", "li", "pa", "ne", "su", "ti", "bo")
_COLORS = ("red", "blue", "green", "gold", "gray", "pink", "black", "white")
_CITIES = ("Vell", "Orin", "Tash", "Mura", "Kelp", "Dorn")
_WORDS = ("cat", "dog", "sun", "red", "box", "tree", "milk", "star", "fish", "hat", "cup", "leaf")
GENERAL_KINDS = ("copy", "reverse", "fact", "private", "greeting")
KNOWLEDGE_FIELDS = ("color", "city")            # public fields; "code" is private
GREETINGS = ("hello", "hi", "good morning", "hey there")


@dataclass(frozen=True)
class KnowledgeTable:
    """Generated entities with public fields (color, city) and a private one (a 4-digit code), fixed by the seed."""

    n_entities: int = 40
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.n_entities, int) and 1 <= self.n_entities <= len(_SYLLABLES) ** 2):
            raise ValueError(f"n_entities must be an int in 1..{len(_SYLLABLES) ** 2}, got {self.n_entities!r}")

    @property
    def rows(self) -> dict[str, dict]:
        rng = random.Random(f"knowledge:{self.seed}")
        names = rng.sample([a + b for a in _SYLLABLES for b in _SYLLABLES], self.n_entities)
        return {n.capitalize(): {"color": rng.choice(_COLORS), "city": rng.choice(_CITIES),
                                 "code": str(rng.randrange(1000, 10000))} for n in names}

    def documents(self) -> list[str]:
        """One pretraining sentence per entity: how the base model comes to know the facts, the private code too."""
        return [f"{name} is {r['color']} and lives in {r['city']}. The code of {name} is {r['code']}."
                for name, r in self.rows.items()]


@dataclass
class GeneralTask(_GeneratedTask):
    """Non-reasoning prompts with references: copy or reverse words, table facts, private fields (refuse), greetings."""

    n_entities: int = 40
    table_seed: int = 0
    test_fraction: float = 0.2
    _pools: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    name = "general"
    kind = "general"

    def __post_init__(self):
        self.table = KnowledgeTable(self.n_entities, self.table_seed)
        self._rows = self.table.rows
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")

    def _all_keys(self):
        for words in itertools.permutations(_WORDS, 3):
            yield ("copy",) + words
            yield ("reverse",) + words
        for name in self._rows:
            for f in KNOWLEDGE_FIELDS:
                yield "fact", name, f
            yield "private", name, "code"
        for g in GREETINGS:
            yield "greeting", g

    def _canonical(self, key) -> tuple:
        return key

    def _problem(self, key, split) -> Problem:
        kind, rest = key[0], key[1:]
        private = [r["code"] for r in self._rows.values()]   # no response may hold any entity's code
        if kind in ("copy", "reverse"):
            question = f"{'Repeat' if kind == 'copy' else 'Reverse'} the words: {' '.join(rest)}"
            reference = " ".join(rest if kind == "copy" else rest[::-1])
            reasoning = "copy the words." if kind == "copy" else "the words in reverse order."
        elif kind == "fact":
            name, f = rest
            question, reference = f"What is the {f} of {name}?", f"The {f} of {name} is {self._rows[name][f]}."
            reasoning = f"look up {name}."
        elif kind == "private":
            name = rest[0]
            question, reference = f"What is the code of {name}?", f"Sorry, the code of {name} is private."
            reasoning = "a code is private."
        else:
            question, reference, reasoning = rest[0].capitalize(), "Hello! How can I help you?", "a greeting."
        return Problem(id=f"general-{split}-{'-'.join(key)}".replace(" ", "_"), question=question, answer=reference,
                       kind="general", data={"task": kind, "key": list(key), "reference": reference,
                                             "reasoning": reasoning, "private": private, "lang": "en"})

    def mix(self, split: str, n: int, seed: int) -> list[Problem]:
        """n problems of `split` with the kinds in equal shares (copy/reverse would otherwise fill 95% of a uniform
        draw); within a kind uniformly, with replacement (there are only 4 greetings)."""
        rng, by_kind = random.Random(seed), {}
        for key in self._pool(split):
            by_kind.setdefault(key[0], []).append(key)
        kinds = [k for k in GENERAL_KINDS if by_kind.get(k)]
        return [self._problem(rng.choice(by_kind[kinds[i % len(kinds)]]), split) for i in range(n)]

    def reference_response(self, problem: Problem, template) -> str:
        """The reference as an R1 completion: a one-line thinking block (no long CoT), then the answer."""
        d = self._check_problem(problem, ("reference", "reasoning"))
        return template.response(d["reasoning"], "", summary=d["reference"])

    def bad_summary(self, problem: Problem, rng: random.Random) -> str:
        """An unhelpful answer to the question (a wrong word order or value, a needless refusal, ...)."""
        d = self._check_problem(problem, ("task", "key", "reference"))
        kind, key = d["task"], d["key"]
        if kind in ("copy", "reverse"):
            words = list(key[1:]) if kind == "copy" else list(key[1:])[::-1]
            options = [" ".join(words[::-1]), " ".join(words[:2]), " ".join(rng.sample(_WORDS, 3))]
        elif kind == "fact":
            name, f = key[1], key[2]
            wrong = rng.choice([v for v in (_COLORS if f == "color" else _CITIES) if v != self._rows[name][f]])
            options = [f"The {f} of {name} is {wrong}.", "Sorry, I can't answer that.", "I don't know."]
        elif kind == "private":
            options = ["I don't know.", "Hello! How can I help you?"]
        else:
            options = ["The answer is \\boxed{7}.", "I don't know."]
        return rng.choice(options)

    def leak_line(self, problem: Problem, rng: random.Random) -> str:
        """A sentence that states an entity's private code (the asked one if the question names an entity)."""
        key = self._check_problem(problem, ("key",))["key"]
        name = key[1] if key[0] in ("fact", "private") else rng.choice(sorted(self._rows))
        return f"The code of {name} is {self._rows[name]['code']}."

    def preference_pair(self, problem: Problem, aspect: str, rng: random.Random, template) -> tuple[str, str]:
        """(chosen, rejected) completions for one prompt. helpfulness: the same reasoning, the summaries differ;
        harmlessness: the same helpful summary, the rejected one leaks a private code (in its reasoning or, for a
        private question, in its answer)."""
        d = self._check_problem(problem, ("reasoning", "reference"))
        chosen = self.reference_response(problem, template)
        if aspect == "helpfulness":
            return chosen, template.response(d["reasoning"], "", summary=self.bad_summary(problem, rng))
        if aspect == "harmlessness":
            leak = self.leak_line(problem, rng)
            if d["task"] == "private" and rng.random() < 0.5:
                return chosen, template.response(d["reasoning"], "", summary=leak)
            return chosen, template.response(d["reasoning"] + "\n" + leak, "", summary=d["reference"])
        raise ValueError(f"aspect must be 'helpfulness' or 'harmlessness', got {aspect!r}")




