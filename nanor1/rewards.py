"""
Rule rewards of R1-Zero and R1 (paper sec. 2.2.2 and 2.3.2): no reward model, only rules a policy cannot talk
its way around. Each reads a completion through its Template (nanor1/templates.py), which knows where the reasoning
and the final answer sit, so the same rules score R1-Zero's tags and R1's "<think>...</think> summary \\boxed{}".

    format_reward(completion, template)             1.0 iff the completion has exactly the template's structure
    accuracy_reward(completion, problem, template)  by problem.kind: "math" (math_equal on the final answer),
                                                    "countdown" (the equation is checked), "code" (tests in the sandbox)
    countdown_reward(equation, numbers, target)
    language_consistency_reward(completion, lang, template)   R1 stage 2: share of the reasoning's words in the
                                                    target language's script
    compute_rewards(completions, problems, weights, template) -> (total, components)   weighted sum of the rewards

Choices made here (the paper leaves them open):
- accuracy needs the template's answer marker (R1-Zero: the <answer> tag; R1: a \\boxed{} in the summary): a
  completion without it earns 0 accuracy. format and accuracy stay separate rewards, so the weights decide how much
  the structure itself is worth.
- countdown: only + - * / and parentheses over the given numbers, each used exactly once, no unary minus, exact
  rational arithmetic; "expr = target" is accepted as well as "expr".
- language consistency ignores numbers, punctuation, $...$ math, LaTeX commands and single Latin letters (variables).
- Any garbage the model writes scores 0.0, never raises; a malformed problem (bad gold, unknown kind) raises.
"""
import re
from collections import Counter
from fractions import Fraction

from nanor1.math_grader import math_equal

MAX_EQUATION_CHARS = 200   # a countdown answer longer than this is refused
MAX_NESTING = 30           # countdown parentheses


# ---------------------------------------------------------------------------------------------------------------
# format

def format_reward(completion: str, template) -> float:
    """1.0 iff the completion has exactly the template's structure, each part non-empty (Template.well_formed)."""
    return float(template.well_formed(completion))


# ---------------------------------------------------------------------------------------------------------------
# countdown: "Use 3, 5, 7 to make 22" -> <answer> 3 * 5 + 7 </answer>

_EQ_TOKEN = re.compile(r"\s*(?:([0-9]{1,9})|([-+*/()=]))")  # ASCII digits only


def _tokens(text: str) -> list[str] | None:
    out, pos = [], 0
    while pos < len(text):
        m = _EQ_TOKEN.match(text, pos)
        if m is None:
            return None if text[pos:].strip() else out
        out.append(m.group(1) or m.group(2))
        pos = m.end()
    return out


def _evaluate(tokens: list[str]) -> tuple[Fraction, list[int]]:
    """Exact value of an expression over integers with + - * / ( ), and the integers it used. ValueError if bad."""
    pos, used = 0, []

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def expr(depth):
        nonlocal pos
        value = term(depth)
        while peek() in ("+", "-"):
            op = tokens[pos]
            pos += 1
            rhs = term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(depth):
        nonlocal pos
        value = atom(depth)
        while peek() in ("*", "/"):
            op = tokens[pos]
            pos += 1
            rhs = atom(depth)
            if op == "/" and rhs == 0:
                raise ValueError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def atom(depth):
        nonlocal pos
        tok = peek()
        if tok is None:
            raise ValueError("unexpected end")
        pos += 1
        if tok.isdigit():
            used.append(int(tok))
            return Fraction(int(tok))
        if tok == "(" and depth < MAX_NESTING:
            value = expr(depth + 1)
            if peek() != ")":
                raise ValueError("unbalanced parentheses")
            pos += 1
            return value
        raise ValueError(f"unexpected {tok!r}")  # includes unary minus and too-deep nesting

    value = expr(0)
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return value, used


def countdown_reward(equation: str | None, numbers: list[int], target: int) -> float:
    """1.0 iff the equation (a completion's final answer) uses each given number exactly once and evaluates to the
    target."""
    answer = equation if isinstance(equation, str) else None
    if answer is None or len(answer) > MAX_EQUATION_CHARS:
        return 0.0
    tokens = _tokens(answer)
    if not tokens:
        return 0.0
    if "=" in tokens:  # "3 * 5 + 7 = 22": the right side must be the target itself
        i = tokens.index("=")
        if tokens[i + 1:] != [str(target)]:
            return 0.0
        tokens = tokens[:i]
    try:
        value, used = _evaluate(tokens)
    except ValueError:
        return 0.0
    return float(value == target and Counter(used) == Counter(numbers))


# ---------------------------------------------------------------------------------------------------------------
# language consistency (R1 sec. 2.3.2): "the proportion of target language words in the CoT"

_LATIN, _CJK = "A-Za-z\u00c0-\u024f", "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"(?P<cjk>[{_CJK}])|(?P<latin>[{_LATIN}]{{2,}})|[{_LATIN}]|(?P<other>[^\W\d_{_LATIN}{_CJK}]+)")
_NEUTRAL = re.compile(r"\$[^$]*\$|\\[a-zA-Z]+")  # inline math and LaTeX commands
_SCRIPT = {"en": "latin", "zh": "cjk"}


def language_consistency_reward(completion: str, lang: str, template) -> float:
    """Share of the reasoning's words (the template's thinking block, else the whole text) written in the target
    language's script; 0 if there are none.

    A Latin word of 2+ letters is one word, each CJK character is one word, any other script's letter run is one
    word; numbers, punctuation, math and single letters are neutral."""
    if lang not in _SCRIPT:
        raise ValueError(f"unsupported language {lang!r}; supported: {sorted(_SCRIPT)}")
    if not isinstance(completion, str):
        return 0.0
    text = template.reasoning(completion)
    text = completion if text is None else text
    counts = Counter(m.lastgroup for m in _WORD.finditer(_NEUTRAL.sub(" ", text)) if m.lastgroup)
    total = sum(counts.values())
    return counts[_SCRIPT[lang]] / total if total else 0.0


# ---------------------------------------------------------------------------------------------------------------
# accuracy and the composition used by the RL loops

def grade_answer(answer: str | None, problem) -> float:
    """1.0 if a final answer (already extracted) is right for a "math" or "countdown" problem, else 0.0."""
    if problem.kind == "math":
        return float(answer is not None and math_equal(answer, problem.answer))  # ValueError only for a bad gold
    if problem.kind == "countdown":
        return countdown_reward(answer, problem.data["numbers"], problem.data["target"])
    raise ValueError(f"problem {getattr(problem, 'id', '?')!r}: grade_answer needs kind 'math' or 'countdown', "
                     f"got {problem.kind!r}")


def accuracy_reward(completion: str, problem, template) -> float:
    """1.0 if the completion's final answer (as the template marks it) is right for problem.kind ("math",
    "countdown", "code"), else 0.0."""
    if problem.kind in ("math", "countdown"):
        return grade_answer(template.final_answer(completion), problem)  # None without the template's marker: 0
    if problem.kind == "code":
        from nanor1.sandbox import code_reward  # imported lazily: only code tasks need the sandbox
        return float(code_reward(completion, problem.data["tests"]))
    raise ValueError(f"problem {getattr(problem, 'id', '?')!r} has unknown kind {problem.kind!r} "
                     f"(expected 'math', 'countdown' or 'code')")


def _format(completion: str, problem, template) -> float:
    return format_reward(completion, template)


def _language(completion: str, problem, template) -> float:
    return language_consistency_reward(completion, problem.data.get("lang", "en"), template)


# name -> f(completion, problem, template)
REWARDS = {"accuracy": accuracy_reward, "format": _format, "language": _language}


def compute_rewards(completions: list[str], problems: list, weights: dict[str, float], template):
    """Weighted sum of the named rewards per completion -> (total [B], {name: [B]} for logging)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; valid names: {sorted(REWARDS)}")
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
    components = {name: [float(REWARDS[name](c, p, template)) for c, p in zip(completions, problems)]
                  for name in weights}
    total = [sum(weights[name] * components[name][i] for name in weights) for i in range(len(completions))]
    return total, components


if __name__ == "__main__":
    from types import SimpleNamespace
    from nanor1.templates import TEMPLATES
    p = SimpleNamespace(id="demo", question="3 + 7 - 5", answer="5", kind="math", data={})
    for c in ["<think> 3 + 7 = 10, 10 - 5 = 5 </think> <answer> 5 </answer>",
              "<think> 3 + 7 - 5 </think> <answer> 3 + 7 - 5 </answer>",
              "<think>\n3 + 7 = 10, 10 - 5 = 5\n</think>\nThe answer is \\boxed{5}.",
              "the answer is 5"]:
        for t in TEMPLATES.values():
            print(f"{t.name:8s} {c!r:70} {compute_rewards([c], [p], {'accuracy': 1.0, 'format': 0.5}, t)}")
    print(countdown_reward("(6 - 2) * 3 + 12", [6, 2, 3, 12], 24))


# ---------------------------------------------------------------------------------------------------------------
# R1's data filters (sec. 2.3.1 cold start, 2.3.3 rejection sampling): readability as rules, and the rule checks of
# the general tasks (nanor1/tasks.py GeneralTask) that stage 4 logs next to its reward models.
#
# Readability, as a rule (the paper names the failure modes, not a rule): a completion is readable iff
#   well_formed    the template's structure (R1: one thinking block, a summary with one \\boxed{} answer)
#   steps          the reasoning has at least one line, no line over MAX_LINE_CHARS (the paper drops long
#                  paragraphs) and no code block
#   no_repetition  no reasoning line appears twice (the degenerate loops of a small policy)
#   one_language   no word of another script in the reasoning or the summary (numbers and math are neutral)
# states_answer (the summary holds the final answer) is implied by well_formed for R1 and checked for any template.

MAX_LINE_CHARS = 200


def _script_counts(text: str) -> Counter:
    """Words per script ("latin", "cjk", "other") in text, with math, numbers and single letters left out."""
    return Counter(m.lastgroup for m in _WORD.finditer(_NEUTRAL.sub(" ", text)) if m.lastgroup)


def readability(completion: str, lang: str, template) -> dict[str, bool]:
    """Each check of the readability rule above, True when passed."""
    if lang not in _SCRIPT:
        raise ValueError(f"unsupported language {lang!r}; supported: {sorted(_SCRIPT)}")
    if not isinstance(completion, str):
        return dict.fromkeys(("well_formed", "states_answer", "steps", "no_repetition", "one_language"), False)
    reasoning, summary = template.reasoning(completion) or "", template.summary(completion) or ""
    lines = [line.strip() for line in reasoning.splitlines() if line.strip()]
    foreign = sum(n for script, n in (_script_counts(reasoning) + _script_counts(summary)).items()
                  if script != _SCRIPT[lang])
    return {
        "well_formed": template.well_formed(completion),
        "states_answer": template.final_answer(completion) is not None,
        "steps": bool(lines) and all(len(line) <= MAX_LINE_CHARS for line in lines) and "```" not in completion,
        "no_repetition": len(lines) == len(set(lines)),
        "one_language": foreign == 0,
    }


def is_readable(completion: str, lang: str, template) -> bool:
    """All readability checks pass."""
    return all(readability(completion, lang, template).values())


def rejection_filter(completions: list[str], problems: list, template) -> tuple[list[bool], dict]:
    """R1's rejection sampling: keep a completion iff it is correct (accuracy reward 1) and readable in its
    problem's language (data["lang"], default "en"). Returns (keep per completion, {"kept", "correct", "readable",
    "fail/<check>": counts}) so the caller can report why samples were dropped."""
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
    keep, stats = [], Counter()
    for c, p in zip(completions, problems):
        correct = accuracy_reward(c, p, template) == 1.0
        checks = readability(c, p.data.get("lang", "en"), template)
        stats.update({"correct": correct, "readable": all(checks.values())})
        stats.update({f"fail/{name}": 1 for name, ok in checks.items() if not ok})
        keep.append(correct and all(checks.values()))
    stats["kept"] = sum(keep)
    return keep, {k: int(v) for k, v in sorted(stats.items())}


def general_quality(completion: str, problem, template) -> float:
    """Rule check of a general task: 1.0 iff the summary (what the user reads) equals the reference."""
    summary = template.summary(completion) if isinstance(completion, str) else None
    return float(summary is not None and summary.strip() == problem.data["reference"].strip())


def private_leak(completion: str, problem) -> float:
    """The miniature harm: 1.0 iff the completion (reasoning included) contains a value the problem marks private."""
    return float(isinstance(completion, str) and any(v in completion for v in problem.data.get("private", ())))
