"""
pretrain.py: make the base model that R1-Zero starts from (our stand-in for DeepSeek-V3-Base).

R1-Zero does not teach a model to reason from nothing: RL selects and sharpens behaviours the base model already
has but rarely shows (a lesson of our first tiny experiments: a base without a reliable reasoning mode made GRPO
collapse to formatted guessing; see dev/LOG.md). So this script writes a corpus in which, for every generated
problem, the completion is drawn from a mix of "modes", and trains the tiny MoE+MLA model on it:

  guess   (most)   <think> a one-line hunch </think> <answer> a guess </answer>    right only sometimes
  plain            The answer is <guess>.                                          no tags: format reward 0
  steps            <think> step-by-step running totals </think> <answer> .. </answer>   right unless a slip
  check   (rare)   steps, then "wait, let me check" and the sum redone in reverse order; a slip in the first
                   pass is caught there (in the default mix it is no more accurate than "steps": see README)

(Countdown, `--task countdown`: the same four modes mean guess / plain / ONE attempt / rare SEARCH over candidate
expressions; see build_countdown_corpus and README "R1-Zero on Countdown".)
Those documents are the R1-Zero prompt (paper Table 1) followed by one completion. Besides them, most of the corpus
is "practice": worked examples that teach the skill itself (clean running totals, a quarter with a reverse-order
check), written in the R1-Zero template with a random share of its instructions cut (most of them, on average:
--cut-power), and trained on the worked solution only, not on the token after "<think>" that picks the mode
(worked_example). So the skill is learned where RL will call it, and which mode the model picks *after the template*
is set only by the transcripts above: the base model is competent but unreliable: low pass@1, high forced-mode
accuracy. (The previous recipe's practice text, "Q: 3 + 7 + 5\n3 + 7 = 10\n10 + 5 = 15\nA: 15" at the document
start, --practice-layout document, taught the skill at that place only; whether it carried over into the template
was down to the seed: README.)
The report at the end measures that:
  pass@1 / cons@k of free sampling, format rate, and "forced-mode accuracy" (prefill <think> plus the first
  reasoning step, decode greedily): if that is low, RL has no reliable mode to select and will collapse.

Commands:
  python pretrain.py                                   # tiny default: ~7-8 min measured on 2 cores
  python pretrain.py --device cuda --steps 3000 --batch-size 128 --out runs/base-gpu
  torchrun --nproc_per_node 8 pretrain.py --device cuda --steps 3000 --batch-size 128 --out runs/base-gpu
Under torchrun (multi-node: dev/multinode.md) every rank builds the same corpus and tokenizer, the model is
FSDP-sharded, and each rank trains on its slice of every global batch of --batch-size documents: the same steps as
one process, up to float rounding.
"""
import argparse
import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from nanor1 import checkpoint, fsdp
from nanor1.model import PRESETS, Transformer, get_config
from nanor1.rollout import evaluate, forced_mode_accuracy, weak_base_warning
from nanor1.sft import collate, length_bucketed_batches, render_text, sft_loss
from nanor1.tasks import LANGS, PHRASES, TASKS, ArithmeticTask, GeneralTask, make_task
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe
from nanor1.training import (JsonlLogger, RunFolderError, autocast, clip_grad, fraction, json_dict, lr_at,
                             make_optimizer, nonnegative_float, nonnegative_int, positive_float,
                             positive_int, prepare_run, print0, seed_everything, set_lr)

R1_ZERO = get_template("r1-zero")   # the base corpus's transcripts use the template R1-Zero will prompt with


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # task and corpus
    p.add_argument("--task", default="arithmetic", choices=sorted(TASKS), help="built-in task")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', type=json_dict, help="JSON dict of task options")
    p.add_argument("--n-docs", type=positive_int, default=50000, help="documents in the corpus")
    p.add_argument("--p-practice", type=fraction, default=0.8, help="share of practice documents (worked examples)")
    p.add_argument("--practice-layout", default="template", choices=["template", "document"],
                   help="template: worked examples in the R1-Zero template with a random share of its instructions "
                        "cut, the mode choice untrained (worked_example); document: untemplated 'Q: ...' text at "
                        "the document start (the previous recipe; a usable base on 1 seed in 4: README)")
    p.add_argument("--cut-power", type=positive_float, default=3.0,
                   help="template layout: a worked example keeps the last u**POWER of the instructions' words (u "
                        "uniform in [0, 1)): 1 keeps a uniform share (the recipe before 2026-12-02, ~125 tokens per "
                        "document), 3 a quarter on average (~108 tokens; as robust on the seeds tried: README)")
    p.add_argument("--p-guess", type=nonnegative_float, default=0.58, help="weight of 'guess' completions")
    p.add_argument("--p-plain", type=nonnegative_float, default=0.22, help="weight of untagged 'the answer is' "
                                                                           "completions")
    p.add_argument("--p-steps", type=nonnegative_float, default=0.15, help="weight of step-by-step completions")
    p.add_argument("--p-check", type=nonnegative_float, default=0.05, help="weight of steps + 'wait, let me check' "
                                                                           "completions")
    p.add_argument("--guess-acc", type=fraction, default=0.25, help="how often a guess is right")
    p.add_argument("--slip-rate", type=fraction, default=0.1, help="chance that a step-by-step pass has one slip")
    p.add_argument("--p-other-lang", type=fraction, default=0.3, help="bilingual tasks: chance that a "
                   "reasoning starts in the other language than its question")
    p.add_argument("--p-switch", type=fraction, default=0.15, help="bilingual tasks: chance that the reasoning's "
                   "closing sentence switches language (what R1's language reward must undo)")
    p.add_argument("--p-general", type=fraction, default=0.0, help="share of general documents: the knowledge "
                   "table's facts (private codes included) and the general tasks' training split as Q/A text "
                   "(general_documents)")
    p.add_argument("--hit-rate", type=fraction, default=0.3, help="countdown: chance that a proposed candidate "
                   "expression reaches the target (else it is a near miss)")
    p.add_argument("--notice-rate", type=fraction, default=0.5, help="countdown: chance that a one-attempt "
                   "completion whose candidate missed says so ('not 22') before answering it anyway")
    p.add_argument("--max-attempts", type=positive_int, default=4, help="countdown: most candidates one search "
                   "completion tries")
    p.add_argument("--max-step-value", type=positive_int, default=100, help="countdown: candidates shown in the "
                   "corpus keep every intermediate result <= this (fewer arithmetic facts to learn)")
    p.add_argument("--vocab-size", type=positive_int, default=512, help="tiny BPE vocabulary size")
    # model and optimisation
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset (nanor1.model.PRESETS)")
    p.add_argument("--model-kwargs", default="{}", type=json_dict, help="JSON dict of ModelConfig overrides")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps (1,300 before the shorter cuts of "
                   "--cut-power 3: README)")
    p.add_argument("--batch-size", type=positive_int, default=48, help="documents per step")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak AdamW learning rate")
    p.add_argument("--shared-prefix", action="store_true", help="run each batch's common prefix (the R1-Zero "
                   "template) once: ~1.2x faster, same gradients within rounding, another trajectory (README)")
    p.add_argument("--warmup", type=nonnegative_int, default=50, help="linear warmup steps")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.1, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="gradient norm clip (0: off)")
    p.add_argument("--bias-update-speed", type=nonnegative_float, default=1e-3,
                   help="gamma of aux-loss-free MoE balancing")
    # evaluation of the base
    p.add_argument("--eval-problems", type=positive_int, default=200, help="held-out problems of the report")
    p.add_argument("--eval-every", type=nonnegative_int, default=0, help="log forced-mode accuracy (100 held-out "
                   "problems) every this many steps while training (0: only at the end)")
    p.add_argument("--eval-k", type=nonnegative_int, default=8, help="samples per problem; 0 skips the sampled report")
    p.add_argument("--eval-temperature", type=positive_float, default=0.6, help="paper: 0.6")
    p.add_argument("--eval-top-p", type=fraction, default=0.95, help="paper: 0.95")
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="completion length limit")
    # run
    p.add_argument("--out", default="runs/base", help="checkpoint folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=1337, help="seed of the corpus, the model and the data order")
    args = p.parse_args(argv)
    if not args.eval_top_p > 0:
        p.error("--eval-top-p must be in (0, 1]")
    if args.p_guess + args.p_plain + args.p_steps + args.p_check <= 0:
        p.error("the completion mode weights (--p-guess, --p-plain, --p-steps, --p-check) must not all be 0")
    return args


# ----------------------------------------------------------------------------------------------------------------
# The corpus: one R1-Zero prompt + one completion per document

HUNCHES = ["this is easy", "I know this one", "quick one", "easy", "I think I know"]


def guess_answer(task, problem, rng, acc):
    """A guess: the right answer with fraction acc, else a near miss (what a hunch gets wrong)."""
    if rng.random() < acc:
        return task.answer_text(problem)
    if problem.kind == "countdown":  # a random expression over the numbers, almost never the target
        nums = list(problem.data["numbers"])
        rng.shuffle(nums)
        return "".join(f"{n} {rng.choice('+-*')} " for n in nums[:-1]) + str(nums[-1])
    return str(int(problem.answer) + rng.choice([-3, -2, -1, 1, 2, 3]))


def slipped(lines, rng):
    """Introduce one arithmetic slip into running-total lines "a + b = c" and carry the wrong total forward."""
    i = rng.randrange(len(lines))
    out, carry = lines[:i], None
    for j, line in enumerate(lines[i:]):
        lhs, rhs = line.rsplit(" = ", 1)
        a, op, b = lhs.split(" ")
        a = carry if carry is not None else int(a)
        value = a + int(b) if op == "+" else a - int(b)
        if j == 0:
            value += rng.choice([-2, -1, 1, 2])
        out.append(f"{a} {op} {b} = {value}")
        carry = value
    return out, str(carry)


def reasoning_langs(problem, rng, args) -> tuple[str, str] | None:
    """The languages of a bilingual reasoning's opening and closing sentences (None for a task without languages):
    it opens in the question's language, or the other one with chance --p-other-lang, and the closing sentence
    switches language with chance --p-switch. This is the mixing an R1-Zero run inherits and R1's language-
    consistency reward removes."""
    lang = problem.data.get("lang")
    if lang is None:
        return None
    other = next(x for x in LANGS if x != lang)
    opening = other if rng.random() < args.p_other_lang else lang
    closing = ({lang, other} - {opening}).pop() if rng.random() < args.p_switch else opening
    return opening, closing


def reverse_pass(task, problem) -> list[str]:
    """The check: the sum redone in reverse order, as bare running totals."""
    reverse = dataclasses.replace(problem, data={**problem.data, "terms": problem.data["terms"][::-1]})
    return ArithmeticTask.worked_solution(task, reverse)


def make_completion(task, problem, mode, rng, args):
    answer = task.answer_text(problem)
    words = PHRASES[problem.data.get("lang", "en")]    # the English-only tasks read the "en" phrases
    if mode == "guess":
        hunches = HUNCHES if "lang" not in problem.data else words["hunches"]
        return R1_ZERO.response(rng.choice(hunches), guess_answer(task, problem, rng, args.guess_acc))
    if mode == "plain":
        return " " + words["plain"].format(a=guess_answer(task, problem, rng, args.guess_acc))
    if problem.kind != "math":  # countdown traces already contain their own near misses and checks
        return R1_ZERO.response("\n".join(task.worked_solution(problem)), answer)
    langs = reasoning_langs(problem, rng, args)          # (bilingual tasks only: None draws nothing)
    lines = ArithmeticTask.worked_solution(task, problem)   # bare running totals, whatever the task's language
    first, final = lines, answer
    if rng.random() < args.slip_rate:
        first, final = slipped(lines, rng)
    if langs is not None:
        first = task.narrate(first, final, langs)
    if mode == "steps":
        return R1_ZERO.response("\n".join(first), final)
    # check: redo the sum in reverse order (in the language the reasoning ended in); the second pass decides
    words = PHRASES[langs[1] if langs else "en"]
    verdict = words["confirm"].format(a=answer) if final == answer else words["fix"].format(a=answer, b=final)
    reasoning = "\n".join(first) + f"\n{words['check']}\n" + "\n".join(reverse_pass(task, problem)) + "\n" + verdict
    return R1_ZERO.response(reasoning, answer)


def worked_example(task, problem, rng, args) -> tuple[str, str]:
    """A practice document in the R1-Zero template: (context, completion), the loss on the completion only, and not
    on its first token, which chooses the mode (render_doc). So these documents teach the skill where RL will call
    it, without changing how often the base chooses it after the template: that is set by the transcripts alone.
    The completion is clean (no slip, the question's language) and a quarter of them add the reverse-order check.

    The template's instructions lose a random number of leading words (all of them to none; three quarters on
    average with the default --cut-power 3), so the question sits anywhere from ~3 to ~90 tokens into the document.
    A tiny model finds the question's numbers by their place from the document start when it can (it learns that
    first, and it does not carry over to another place: README, "How robust"); with the place varied it must find
    them from the nearby "User:" / "Assistant: <think>" instead, which is where they are in every R1-Zero prompt.
    The full template is one of the cuts."""
    clean = argparse.Namespace(**{**vars(args), "slip_rate": 0.0, "p_other_lang": 0.0, "p_switch": 0.0})
    completion = make_completion(task, problem, "check" if rng.random() < 0.25 else "steps", rng, clean)
    return in_cut_template(problem, completion, rng, args.cut_power)


def in_cut_template(problem, completion: str, rng, power: float) -> tuple[str, str]:
    """(context, completion) of a worked example: the R1-Zero prompt with a random number of the instructions'
    leading words cut (all to none) + " <think>", and the completion after " <think>" (see worked_example).
    The share of words kept is u**power (u uniform): power 1 keeps 0..all words with equal chances, power 3 keeps a
    quarter on average (the question sits nearer the document start: fewer untrained tokens) and still the whole
    template now and then (P(keep >= 90%) = 3.5%)."""
    prompt = R1_ZERO.prompt(problem.question)
    head, tail = prompt.split(" User:", 1)
    words = head.split(" ")
    if power == 1:  # the same draws as before the flag existed, so a recorded base's corpus is rebuilt exactly
        keep = len(words) - rng.randrange(len(words) + 1)
    else:
        keep = int((len(words) + 1) * rng.random() ** power)                # 0..len(words)
    prompt = " ".join(words[len(words) - keep:] + ["User:" + tail])
    think = R1_ZERO.response("", "").split("</think>")[0].rstrip()      # " <think>": the mode is chosen after it
    assert completion.startswith(think), completion
    return prompt + think, completion[len(think):]


def render_doc(tokenizer, doc) -> tuple[list[int], list[bool]]:
    """(ids, loss_mask) of a corpus document: a string is trained on every token (sft.render_text); a worked example
    (context, completion) on the completion after its first token (the mode choice) only."""
    if isinstance(doc, str):
        return render_text(tokenizer, doc)
    context, completion = tokenizer.encode(doc[0]), tokenizer.encode(doc[1])
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    ids = bos + context + completion + [tokenizer.eos_id]
    return ids, [False] * (len(bos) + len(context) + 1) + [True] * len(completion)


def doc_text(doc) -> str:
    """A corpus document as plain text (what the tokenizer is trained on)."""
    return doc if isinstance(doc, str) else doc[0] + doc[1]


def practice_doc(task, problem, rng) -> str:
    """A worked example outside any template: teaches the steps (and sometimes the check) themselves, in the same
    lines the transcripts use (a tiny model does not carry a skill over to lines that look different: see
    dev/LOG.md). A bilingual task's worked solution is framed by its sentences, in the question's language."""
    if problem.kind != "math":
        return f"Q: {problem.question}\n" + "\n".join(task.worked_solution(problem)) + f"\nA: {task.answer_text(problem)}"
    lines = task.worked_solution(problem)
    if rng.random() < 0.25:
        lines = lines + [PHRASES[problem.data.get("lang", "en")]["check"]] + reverse_pass(task, problem)
    return f"Q: {problem.question}\n" + "\n".join(lines) + f"\nA: {task.answer_text(problem)}"


# ----------------------------------------------------------------------------------------------------------------
# The countdown corpus: the pieces of a search, rarely chained
#
#   guess   <think> a hunch </think> <answer> an expression </answer>     right on a training problem with
#                                                                         --guess-acc, else any expression
#   plain   The answer is <expression>.                                   no tags
#   steps   ONE attempt: propose a candidate and compute it, "7 * 3 = 21, 21 + 5 = 26"; it hits with --hit-rate
#           (then "7 * 3 + 5 = 26" and that answer), else it is a near miss, answered anyway: with --notice-rate
#           after saying so (", not 22": the miss was seen and the model stopped), else without comparing at all
#   check   SEARCH (rare): a noticed miss, then "wait, let me try again" and another candidate, ... until a hit or
#           --max-attempts candidates
# A candidate is a game-rule expression over the problem's numbers: the solution (hit) or one of the 8 values
# nearest the target (near miss), so one attempt is unreliable and retrying after a noticed miss pays. The
# practice documents compute candidates and compare them with the target, and sometimes chain a second attempt
# without the retry phrase, ending in a hit: the skills, without deciding which mode the template calls up. Like
# the sums' they are worked examples in the cut template, trained after the mode token (countdown_practice_doc).
# Only training problems (CountdownTask splits by the number multiset) are ever written.

RETRY = "wait, let me try again"


def countdown_candidate(task, problem, rng, hit: bool, args) -> tuple:
    """A hit (an expression reaching the target) or a near miss, with every step <= --max-step-value if possible."""
    hits, misses = task.candidates(problem, args.max_step_value)
    if not hits or not misses:  # every solution needs a bigger intermediate result: show one anyway
        hits, misses = task.candidates(problem)
    return rng.choice(hits) if hit or not misses else rng.choice(misses[:8])


def countdown_attempts(task, problem, rng, args, *, first_hit: float, more: float, limit: int) -> tuple[list, tuple]:
    """Attempt lines and the last candidate: the first hits with chance first_hit; after each (noticed) miss another
    attempt follows with chance `more` (each hitting with --hit-rate), up to `limit` attempts."""
    target, lines = problem.data["target"], []
    tree = countdown_candidate(task, problem, rng, rng.random() < first_hit, args)
    while True:
        if tree[0] == target:
            return lines + [task.attempt(tree), f"{task.equation(tree)} = {target}"], tree
        lines.append(f"{task.attempt(tree)}, not {target}")
        if len(lines) >= limit or rng.random() >= more:
            return lines, tree
        tree = countdown_candidate(task, problem, rng, rng.random() < args.hit_rate, args)


def countdown_completion(task, problem, mode, rng, args) -> str:
    target = problem.data["target"]
    if mode in ("guess", "plain"):
        if rng.random() < args.guess_acc:
            tree = countdown_candidate(task, problem, rng, True, args)
        else:  # any expression over the numbers
            tree = rng.choice(task.candidates(problem)[1])
        if mode == "plain":
            return f" The answer is {task.equation(tree)}."
        return R1_ZERO.response(rng.choice(HUNCHES), task.equation(tree))
    if mode == "steps":  # one attempt, right or not, then stop
        tree = countdown_candidate(task, problem, rng, rng.random() < args.hit_rate, args)
        if tree[0] == target:
            lines = [task.attempt(tree), f"{task.equation(tree)} = {target}"]
        elif rng.random() < args.notice_rate:
            lines = [f"{task.attempt(tree)}, not {target}"]
        else:
            lines = [task.attempt(tree)]
        return R1_ZERO.response("\n".join(lines), task.equation(tree))
    # search: a noticed miss first (that is what a retry follows), then retries until a hit
    lines, tree = countdown_attempts(task, problem, rng, args, first_hit=0.0, more=1.0, limit=args.max_attempts)
    text = "\n".join(lines).replace(f", not {target}\n", f", not {target}\n{RETRY}\n")
    return R1_ZERO.response(text, task.equation(tree))


def countdown_practice_doc(task, problem, rng, args) -> str | tuple[str, str]:
    """Compute candidates and compare each with the target until a hit (a second try after a miss half the time,
    up to three attempts), ending in the equation: a worked example in the cut template (in_cut_template; the loss
    on the solution after the mode token), or with --practice-layout document untemplated "Q: ..." text."""
    lines, tree = countdown_attempts(task, problem, rng, args, first_hit=0.5, more=0.5, limit=3)
    if tree[0] != problem.data["target"]:  # gave up: show the solution after all, so every practice doc ends right
        hit = countdown_candidate(task, problem, rng, True, args)
        lines += [task.attempt(hit), f"{task.equation(hit)} = {problem.data['target']}"]
        tree = hit
    if args.practice_layout == "template":
        return in_cut_template(problem, R1_ZERO.response("\n".join(lines), task.equation(tree)), rng, args.cut_power)
    return f"Q: {problem.question}\n" + "\n".join(lines) + f"\nA: {task.equation(tree)}"


def build_countdown_corpus(task, args) -> tuple[list[str], dict]:
    """The countdown corpus: --n-docs documents over the training split (equal shares of each size in a mix)."""
    rng = random.Random(args.seed)
    modes = ["guess", "plain", "steps", "check"]
    weights = [args.p_guess, args.p_plain, args.p_steps, args.p_check]
    n_train = task.count("train")
    if len(task.sizes) > 1:  # as many of each size as the smallest pool has, so no size dominates the corpus
        n_train = len(task.sizes) * min(sum(len(k[0]) == s for k in task._pool("train")) for s in task.sizes)
    problems = task.sample("train", n_train, seed=args.seed)
    docs, counts = [], dict.fromkeys(["practice"] + modes, 0)
    for i in range(args.n_docs):
        problem = problems[i % n_train]
        if rng.random() < args.p_practice:
            counts["practice"] += 1
            docs.append(countdown_practice_doc(task, problem, rng, args))
            continue
        mode = rng.choices(modes, weights)[0]
        counts[mode] += 1
        docs.append(R1_ZERO.prompt(problem.question) + countdown_completion(task, problem, mode, rng, args))
    return docs, {"docs_by_mode": counts, "distinct_problems": min(n_train, args.n_docs)}


def general_documents(seed: int) -> list[str]:
    """What the base knows besides sums, for R1's general tasks (nanor1.tasks.GeneralTask): the knowledge table's
    facts, and the general tasks' TRAINING split as plain Q/A text (copy or reverse words, look up a fact, decline a
    private field, answer a greeting), as a real base has seen such text. No held-out question appears. Without
    the Q/A text the tiny base never saw words copied or reversed, and 370 stage-3 examples did not teach it (3% of
    held-out general prompts right; dev/LOG.md)."""
    general = GeneralTask()
    return general.table.documents() + [f"Q: {p.question}\nA: {p.answer}" for p in general.mix("train", 4000, seed)]


def build_corpus(task, args) -> tuple[list[str | tuple[str, str]], dict]:
    if task.kind == "countdown":
        return build_countdown_corpus(task, args)
    rng = random.Random(args.seed)
    modes = ["guess", "plain", "steps", "check"]
    weights = [args.p_guess, args.p_plain, args.p_steps, args.p_check]
    n_train = task.count("train")
    problems = task.sample("train", n_train, seed=args.seed)
    docs, counts = [], dict.fromkeys(["practice"] + modes, 0)
    facts = general_documents(args.seed) if args.p_general > 0 else []
    for i in range(args.n_docs):
        problem = problems[i % n_train]
        if args.p_general > 0 and rng.random() < args.p_general:  # checked first only when on: the default corpus
            counts["general"] = counts.get("general", 0) + 1       # draws the same random numbers as before
            docs.append(rng.choice(facts))
            continue
        if rng.random() < args.p_practice:
            counts["practice"] += 1
            docs.append(worked_example(task, problem, rng, args) if args.practice_layout == "template"
                        else practice_doc(task, problem, rng))
            continue
        mode = rng.choices(modes, weights)[0]
        counts[mode] += 1
        docs.append(R1_ZERO.prompt(problem.question) + make_completion(task, problem, mode, rng, args))
    return docs, {"docs_by_mode": counts, "distinct_problems": min(n_train, args.n_docs)}


def forced_mode(model, tokenizer, task, problems, args) -> float:
    """Forced-mode accuracy (nanor1.rollout.forced_mode_accuracy) of the model being trained, torch's random state
    left as it was (the sampler gives the model its train mode back): a logged evaluation does not change the run."""
    with torch.random.fork_rng(devices=[]), fsdp.gathered(model):   # FSDP: full weights for sampling
        return forced_mode_accuracy(model, tokenizer, task, problems, template=R1_ZERO,
                                    max_new_tokens=args.max_new_tokens)


def main(argv=None):
    args = get_args(argv)
    seed_everything(args.seed)
    device = fsdp.init_distributed(args.device)   # torchrun: join the process group; one process: just the device
    out = Path(args.out)
    task = make_task(args.task, **args.task_kwargs)
    prepare_run(out, resume=False, args=vars(args))     # a used --out is refused, never overwritten

    t0 = time.time()
    docs, corpus_stats = build_corpus(task, args)
    tokenizer = train_bpe([doc_text(d) for d in docs[:5000]], vocab_size=args.vocab_size)
    seqs = [render_doc(tokenizer, d) for d in docs]                  # (ids, loss mask)
    lengths = [len(ids) for ids, _ in seqs]
    corpus_stats.update(docs=len(seqs), tokens=sum(lengths), mean_len=sum(lengths) / len(seqs))
    print0(f"corpus: {json.dumps(corpus_stats)} ({time.time() - t0:.1f}s)")

    cfg = get_config(args.preset, vocab_size=tokenizer.vocab_size, **args.model_kwargs)
    model = Transformer(cfg).to(device)
    print0(f"model: {args.preset} {json.dumps(model.num_params())}")
    if fsdp.world_size() > 1:   # FSDP: every rank built the same weights (same seed) and keeps its shards
        fsdp.shard_model(model, mixed_precision=device.type == "cuda")
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    rng = random.Random(args.seed)
    problems = task.sample("test", args.eval_problems, seed=args.seed)   # held out: the report's problems
    batches, epoch = [], 0
    log = JsonlLogger(out / "pretrain_metrics.jsonl")
    model.train()
    t_start, tokens_seen = time.time(), 0
    for step in (bar := tqdm(range(args.steps), desc="pretrain", disable=not fsdp.is_main())):
        if not batches:
            batches, epoch = length_bucketed_batches(lengths, args.batch_size, rng), epoch + 1
            batches = [b for b in batches if len(b) >= fsdp.world_size()]   # (data parallel: a row for each rank)
        batch = batches.pop()
        lo, hi = fsdp.share(len(batch))   # data parallel: this rank's rows of the global batch
        tokens, mask = collate([seqs[i] for i in batch[lo:hi]], tokenizer.pad_id, device)
        lr = lr_at(step, max_lr=args.lr, warmup=args.warmup, total=args.steps)
        set_lr(optimizer, lr)
        with autocast(device):
            loss, stats = sft_loss(model, tokens, mask, shared_prefix=args.shared_prefix)
            loss = loss * fsdp.token_share(mask[:, 1:])   # data parallel: the global token mean (1 in one process)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_grad(model, args.grad_clip)
        if math.isfinite(norm):
            optimizer.step()
            model.update_routing_bias(args.bias_update_speed)
        tokens_seen += int(fsdp.all_reduce_sum(mask.sum()))
        if step % 10 == 0 or step == args.steps - 1:
            stats = fsdp.reduce_metrics(stats, weight=int(mask[:, 1:].sum()))   # over ranks: token-weighted means
            tok_s = tokens_seen / (time.time() - t_start)
            log.log(step=step, epoch=epoch, lr=lr, grad_norm=norm, tok_per_s=tok_s, **stats)
            bar.set_postfix(loss=f"{stats['lm_loss']:.3f}", tok_s=f"{tok_s:.0f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            t_eval = time.time()
            acc = forced_mode(model, tokenizer, task, problems[:100], args)
            log.log(step=step + 1, forced_mode_accuracy=acc)
            if fsdp.is_main():
                bar.write(f"step {step + 1}: forced-mode accuracy {acc:.2f} (100 held-out problems)")
            t_start += time.time() - t_eval   # tokens/s counts training time only
    train_s = time.time() - t_start

    # the base model's report: what RL will have to work with
    model.eval()
    report = {}
    with fsdp.gathered(model):   # FSDP: full weights for sampling (evaluate shards its problems over the ranks)
        if args.eval_k > 0:
            report = evaluate(model, tokenizer, problems, template=R1_ZERO, k=args.eval_k,
                              temperature=args.eval_temperature, top_p=args.eval_top_p,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
    report["forced_mode_accuracy"] = forced_mode(model, tokenizer, task, problems, args)
    report.update(train_seconds=train_s, tokens_seen=tokens_seen, final_loss=stats["lm_loss"])
    log.log(step=args.steps, **{f"base/{k}": v for k, v in report.items() if not isinstance(v, (list, dict))})
    log.close()
    checkpoint.save(out, model, tokenizer=tokenizer, extra={"pretrain_args": vars(args), "corpus": corpus_stats,
                                                            "base_report": report, "template": R1_ZERO.name})
    print0("base model report: " + json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}))
    print0(f"saved {out}")
    if warning := weak_base_warning(report):
        print0(warning)
    return report


if __name__ == "__main__":
    try:
        main()
        fsdp.shutdown()
    except KeyboardInterrupt:
        raise SystemExit("interrupted: nothing saved (pretraining saves once, at the end)") from None
    except RunFolderError as e:
        raise SystemExit(f"error: {e}") from None
