"""Tasks: disjoint splits, determinism, correct worked solutions, a complete countdown solver, the JSONL loader."""

import ast
import itertools
import json
import operator
import os
import re
from fractions import Fraction
from pathlib import Path

import pytest

from nanor1.tasks import (TASKS, ArithmeticTask, CountdownTask, JsonlFormatError, Problem, load_jsonl, make_task,
                          solve, validate_problems)

DATA = Path(os.environ.get("NANOR1_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(equation: str) -> tuple[Fraction, list[int]]:
    """Exact value of an equation of + - * / and integers, and the sorted integers it uses (ast, no eval)."""
    used = []

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"not allowed in an equation: {ast.dump(node)}")

    return ev(ast.parse(equation, mode="eval").body), sorted(used)


def canonical(p: Problem):
    """What decides the answer: the signed terms or (numbers, target), order-free."""
    if p.kind == "countdown":
        return tuple(sorted(p.data["numbers"])), p.data["target"]
    return tuple(sorted(p.data["terms"]))


TASK_CONFIGS = [ArithmeticTask(), ArithmeticTask(n_terms=4, ops="+-"),
                CountdownTask(), CountdownTask(n_numbers=4, max_number=6)]


# ---------------------------------------------------------------------------------------------------------------
# Splits and sampling

@pytest.mark.parametrize("task", TASK_CONFIGS, ids=repr)
def test_splits_are_disjoint_whatever_the_seeds(task):
    train = [p for seed in range(3) for p in task.sample("train", 400, seed)]
    test = [p for seed in range(3) for p in task.sample("test", 400, seed + 100)]
    assert not {canonical(p) for p in train} & {canonical(p) for p in test}
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(p.id.startswith(("arith-train", "countdown-train")) for p in train)


def test_whole_splits_are_disjoint_and_cover_the_task():
    task = ArithmeticTask()  # every ordered choice of 5 distinct digits: 9*8*7*6*5 problems
    n_train, n_test = task.count("train"), task.count("test")
    assert n_train + n_test == 9 * 8 * 7 * 6 * 5 and 0.1 < n_test / (n_train + n_test) < 0.35
    train, test = task.sample("train", n_train, 0), task.sample("test", n_test, 0)
    assert len({p.question for p in train + test}) == n_train + n_test
    assert not {canonical(p) for p in train} & {canonical(p) for p in test}
    with pytest.raises(ValueError, match=str(n_test)):
        task.sample("test", n_test + 1, 0)


def test_sampling_is_deterministic_and_distinct():
    a = CountdownTask().sample("train", 200, seed=3)
    assert a == CountdownTask().sample("train", 200, seed=3)  # a fresh object lists the same pool
    assert a != CountdownTask().sample("train", 200, seed=4)
    assert len({p.id for p in a}) == 200 and len({canonical(p) for p in a}) == 200
    assert ArithmeticTask().sample("test", 0, seed=1) == []


def test_sample_errors():
    task = ArithmeticTask()
    for bad in ("valid", "Train", None):
        with pytest.raises(ValueError, match="split"):
            task.sample(bad, 5, 0)
    with pytest.raises(ValueError, match="n must"):
        task.sample("train", -1, 0)
    with pytest.raises(ValueError, match="seed"):
        task.sample("train", 1, None)
    tiny_test = ArithmeticTask(n_terms=2, test_fraction=0.001)  # 36 digit pairs, none of them hashed into test
    assert tiny_test.count("test") == 0 and tiny_test.count("train") == 72
    with pytest.raises(ValueError, match="only 0 distinct test"):
        tiny_test.sample("test", 1, 0)


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic

STEP = re.compile(r"^(-?\d+) ([+\-*/]) (\d+) = (-?\d+)$")


@pytest.mark.parametrize("task", [ArithmeticTask(), ArithmeticTask(n_terms=3, ops="+-"), ArithmeticTask(ops="-")],
                         ids=repr)
def test_arithmetic_worked_solution_is_a_correct_running_sum(task):
    for p in task.sample("train", 200, seed=1):
        question_numbers = [int(x) for x in re.findall(r"\d+", p.question)]
        assert len(question_numbers) == len(set(question_numbers)) == task.n_terms  # distinct digits
        assert int(p.answer) == evaluate(p.question)[0] and task.answer_text(p) == p.answer
        lines = task.worked_solution(p)
        assert len(lines) == task.n_terms - 1
        total = question_numbers[0]
        for line, digit in zip(lines, question_numbers[1:]):
            a, op, b, c = STEP.match(line).groups()
            # each step's operand is the next unused number of the question, with its operator
            assert int(a) == total and int(b) == digit and f"{op} {digit}" in p.question
            total = total + int(b) if op == "+" else total - int(b)
            assert int(c) == total
        assert total == int(p.answer)


def test_arithmetic_knobs_change_the_problems():
    base = ArithmeticTask().sample("train", 100, 0)
    assert all(len(p.data["terms"]) == 5 and "-" not in p.question for p in base)
    assert all(len(p.data["terms"]) == 3 for p in ArithmeticTask(n_terms=3).sample("train", 100, 0))
    mixed = ArithmeticTask(n_terms=4, ops="+-").sample("train", 100, 0)
    assert any("-" in p.question for p in mixed) and any("+" in p.question for p in mixed)
    assert all(int(p.answer) < 0 for p in ArithmeticTask(ops="-").sample("train", 100, 0))  # 9 - 1 - 2 - 3 - 4 < 0


# ---------------------------------------------------------------------------------------------------------------
# Countdown

def check_step_line(line: str, target: int, failed: bool):
    """A trace line "a op b = c, c op d = e[, not T]": every step's arithmetic is right; it ends at T unless failed."""
    steps = line.split(", ")
    if failed:
        assert steps.pop() == f"not {target}"
    for s in steps:
        a, op, b, c = STEP.match(s).groups()
        assert evaluate(f"{a} {op} {b}")[0] == int(c)
        assert int(c) > 0
    assert (int(c) != target) if failed else (int(c) == target)


@pytest.mark.parametrize("task", [CountdownTask(), CountdownTask(n_numbers=4)], ids=repr)
def test_countdown_worked_solution_reaches_the_target(task):
    n_failed = []
    for p in task.sample("train", 150, seed=2):
        numbers, target = p.data["numbers"], p.data["target"]
        assert len(numbers) == task.n_numbers and all(1 <= x <= task.max_number for x in numbers)
        assert 1 <= target <= task.max_target and p.answer == str(target)
        lines = task.worked_solution(p)
        *attempts, hit, equation = lines
        for line in attempts:
            check_step_line(line, target, failed=True)
        check_step_line(hit, target, failed=False)
        expr = task.answer_text(p)
        assert equation == f"{expr} = {target}"
        assert evaluate(expr) == (target, sorted(numbers))
        n_failed.append(len(attempts))
    assert max(n_failed) <= task.max_failed_attempts
    assert 0 in n_failed and any(k > 0 for k in n_failed)  # sometimes straight to the answer, sometimes a retry
    assert task.worked_solution(p) == lines  # deterministic


def test_countdown_knobs_change_the_problems():
    assert all(len(p.data["numbers"]) == 4 for p in CountdownTask(n_numbers=4).sample("test", 50, 0))
    small = CountdownTask(max_number=5, max_target=20).sample("train", 50, 0)
    assert all(max(p.data["numbers"]) <= 5 and p.data["target"] <= 20 for p in small)
    assert CountdownTask(max_number=5).count("train") < CountdownTask().count("train")
    quiet = CountdownTask(max_failed_attempts=0)
    assert all(len(quiet.worked_solution(p)) == 2 for p in quiet.sample("train", 50, 0))


def reachable(numbers: tuple[Fraction, ...]) -> set[Fraction]:
    """Reference solver, built differently: split the numbers into two groups, combine every pair of values."""
    if len(numbers) == 1:
        return {numbers[0]}
    out = set()
    idx = range(len(numbers))
    for r in range(1, len(numbers)):
        for left in itertools.combinations(idx, r):
            a = reachable(tuple(numbers[i] for i in left))
            b = reachable(tuple(numbers[i] for i in idx if i not in left))
            for x, y in itertools.product(a, b):
                out |= {x + y, x - y, x * y} | ({x / y} if y else set())
    return out


def test_solve_agrees_with_a_reference_solver():
    for numbers in [(1, 1, 1), (2, 3, 5), (4, 4, 7), (1, 5, 5, 5), (3, 3, 8, 8), (2, 7, 9)]:
        values = reachable(tuple(Fraction(x) for x in numbers))
        for target in range(-5, 60):
            eq = solve(list(numbers), target)
            assert (eq is not None) == (target in values), (numbers, target)
            if eq is not None:
                assert evaluate(eq) == (target, sorted(numbers))
    assert evaluate(solve([3, 3, 8, 8], 24))[0] == 24  # needs a fraction: 8 / (3 - 8 / 3)
    assert solve([1, 1, 1], 100) is None


def test_countdown_errors():
    with pytest.raises(ValueError, match="1 to 5 integers"):
        solve([1, 2.5], 3)
    with pytest.raises(ValueError, match="target"):
        solve([1, 2], "3")
    unsolvable = Problem("cd-x", "Use 1, 1 to make 50", "50", "countdown", {"numbers": [1, 1], "target": 50})
    with pytest.raises(ValueError, match="no solution"):
        CountdownTask().worked_solution(unsolvable)
    with pytest.raises(ValueError, match="countdown"):
        CountdownTask().worked_solution(ArithmeticTask().sample("train", 1, 0)[0])
    with pytest.raises(ValueError, match="terms"):
        ArithmeticTask().worked_solution(unsolvable)


# ---------------------------------------------------------------------------------------------------------------
# Registry

def test_make_task():
    assert set(TASKS) == {"arithmetic", "arithmetic-bilingual", "countdown"}
    task = make_task("countdown", n_numbers=4, max_target=50)
    assert isinstance(task, CountdownTask) and (task.n_numbers, task.max_target) == (4, 50)
    with pytest.raises(ValueError, match="arithmetic.*countdown"):
        make_task("gsm8k")
    with pytest.raises(ValueError, match="n_digits.*n_terms"):
        make_task("arithmetic", n_digits=3)
    for bad in [dict(n_terms=10), dict(n_terms=1), dict(ops="*"), dict(test_fraction=0.0), dict(n_terms=9, ops="+-")]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_task("arithmetic", **bad)
    for bad in [dict(n_numbers=5), dict(max_number=0), dict(max_target=-1), dict(n_numbers=4, max_number=40)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_task("countdown", **bad)


# ---------------------------------------------------------------------------------------------------------------
# JSONL loader

def real_file(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found (set NANOR1_DATA)")
    return path


@pytest.mark.parametrize("name,count,first_id", [("gsm8k_test.jsonl", 1319, "gsm8k-test-0000"),
                                                  ("math500.jsonl", 500, "test/precalculus/807.json"),
                                                  ("aime2024.jsonl", 30, "aime2024-I-01")])
def test_load_real_benchmarks(name, count, first_id):
    problems = load_jsonl(real_file(name))
    assert len(problems) == count and problems[0].id == first_id
    assert len({p.id for p in problems}) == count
    assert all(p.kind == "math" and p.question and p.answer for p in problems)
    if name != "math500.jsonl":
        assert all(re.fullmatch(r"-?\d+", p.answer) for p in problems)


def test_gsm8k_raw_answers_parse_like_the_cleaned_file(tmp_path):
    # upstream GSM8K keeps "reasoning ... #### 2,125" in `answer`; our parse must give the cleaned answers
    clean = [json.loads(line) for line in real_file("gsm8k_test.jsonl").open()]
    raw = tmp_path / "gsm8k_raw.jsonl"
    raw.write_text("".join(json.dumps({"question": r["problem"], "answer": r["solution"]}) + "\n" for r in clean))
    problems = load_jsonl(raw)
    assert [p.answer for p in problems] == [r["answer"] for r in clean]
    assert sum("," in r["answer_raw"] for r in clean) > 0  # the comma cases are covered
    assert problems[5].id == "gsm8k_raw-6" and problems[5].data["solution"] == clean[5]["solution"]


def write(tmp_path, lines, name="bench.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_jsonl_fields(tmp_path):
    path = write(tmp_path, [
        json.dumps({"problem": "1+1?", "answer": "2", "id": "a", "level": 1}),
        "",
        json.dumps({"question": "2+2?", "answer": 4, "unique_id": "b"}),
        "   ",
        json.dumps({"question": "half?", "answer": 0.5}),
        json.dumps({"question": "big?", "answer": "x #### 1,234,567"}),
    ])
    ps = load_jsonl(path, kind="math")
    assert [(p.id, p.answer) for p in ps] == [("a", "2"), ("b", "4"), ("bench-5", "0.5"), ("bench-6", "1234567")]
    assert ps[0].data == {"level": 1, "where": f"{path}:1"} and ps[0].question == "1+1?"
    assert [p.data["where"] for p in ps[1:]] == [f"{path}:{n}" for n in (3, 5, 6)]
    with pytest.raises(ValueError, match="kind"):
        load_jsonl(path, kind="poetry")


@pytest.mark.parametrize("bad,why", [
    ('{"problem": "x", "answer": "1"', "invalid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"answer": "1"}', "problem"),
    ('{"problem": "", "answer": "1"}', "problem"),
    ('{"problem": "x"}', "answer"),
    ('{"problem": "x", "answer": null}', "answer"),
    ('{"problem": "x", "answer": true}', "answer"),
    ('{"problem": "x", "answer": [1]}', "answer"),
    ('{"problem": "x", "answer": "  "}', "answer"),
])
def test_load_jsonl_errors_name_file_and_line(tmp_path, bad, why):
    path = write(tmp_path, [json.dumps({"problem": "ok", "answer": "1"}), "", bad])
    with pytest.raises(JsonlFormatError, match=rf"bench\.jsonl:3: .*{why}") as info:
        load_jsonl(path)
    assert isinstance(info.value, ValueError)


def test_load_jsonl_bad_bytes_and_empty_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"problem": "ok", "answer": "1"}).encode() + b"\n" +
                     '{"problem": "caf\xe9", "answer": "2"}\n'.encode("latin-1"))
    with pytest.raises(JsonlFormatError, match=r"latin1\.jsonl:2: not UTF-8 \(byte 0xe9"):
        load_jsonl(path)
    for text in ("", "\n  \n"):
        (tmp_path / "empty.jsonl").write_text(text)
        with pytest.raises(JsonlFormatError, match=r"empty\.jsonl: no problems"):
            load_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"problem": "x", "answer": 3}).encode())
    assert load_jsonl(tmp_path / "bom.jsonl")[0].answer == "3"


def test_validate_problems_names_each_bad_problem(tmp_path):
    """Each bad problem used to crash the run at the step that first sampled it, and every --resume again."""
    path = write(tmp_path, [
        json.dumps({"problem": "1+1?", "answer": "2"}),
        json.dumps({"problem": "long " * 50, "answer": "3"}),          # too long for the context
        json.dumps({"problem": "frac?", "answer": "\\frac{1}{"}),     # a gold the grader cannot parse
        json.dumps({"problem": "ok", "answer": "\\frac{1}{2}"}),
    ])
    problems = load_jsonl(path)
    words = lambda p: len(p.question.split())  # noqa: E731
    errors = validate_problems(problems, prompt_tokens=words, max_prompt_tokens=20)
    assert len(errors) == 2
    assert re.match(rf"{re.escape(str(path))}:2 \(id bench-2\): prompt is 50 tokens, more than the 20", errors[0])
    assert re.match(rf"{re.escape(str(path))}:3 \(id bench-3\): the grader cannot use its gold", errors[1])
    assert validate_problems(problems, prompt_tokens=words, max_prompt_tokens=50) == errors[1:]

    generated = [Problem("cd-1", "Use 3, 5", "8", "countdown", {"numbers": [3, 5], "target": 8}),
                 Problem("cd-2", "Use 3", "8", "countdown", {"numbers": [3, "5"], "target": 8}),
                 Problem("cd-3", "Use 3", "8", "countdown", {"numbers": [3, 5]}),
                 Problem("code-1", "echo", "", "code", {"tests": [{"input": "1", "output": "1"}]}),
                 Problem("code-2", "echo", "", "code", {"tests": []}),
                 Problem("code-3", "echo", "", "code", {"tests": [{"input": 1, "output": "1"}]}),
                 Problem("poem-1", "?", "", "poetry", {})]
    errors = validate_problems(generated, prompt_tokens=words, max_prompt_tokens=20)
    assert [e.split(":")[0] for e in errors] == ["problem cd-2", "problem cd-3", "problem code-2", "problem code-3",
                                                 "problem poem-1"]
    assert "numbers" in errors[0] and "target" in errors[1] and "tests" in errors[2] and "test 0" in errors[3]
    task = ArithmeticTask()
    assert validate_problems(task.sample("train", 50, 0) + CountdownTask().sample("train", 50, 0),
                             prompt_tokens=words, max_prompt_tokens=20) == []


@pytest.mark.parametrize("name", ["gsm8k_test.jsonl", "math500.jsonl", "aime2024.jsonl"])
def test_real_benchmarks_validate(name):
    problems = load_jsonl(real_file(name))
    assert validate_problems(problems, prompt_tokens=lambda p: len(p.question), max_prompt_tokens=10**6) == []
