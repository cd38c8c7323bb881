"""R1-Zero on Countdown (train_zero.py --preset countdown): the reward on hand-made expressions, a base corpus that
never shows a held-out problem, the search metrics on hand-written responses, a short RL run with the preset's settings
that raises the reward, and the preset end to end."""
import argparse
import copy
import json
import random
import re
from pathlib import Path

import pytest
import torch

import pretrain
import train_zero
from nanor1 import checkpoint
from nanor1.model import Transformer, get_config
from nanor1.rewards import countdown_reward
from nanor1.rollout import countdown_stats, parse_attempts, rule_rewards
from nanor1.sft import collate, render, sft_loss
from nanor1.tasks import CountdownTask, Problem, make_task
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe
from nanor1.training import make_optimizer

SMALL = dict(n_numbers=4, min_numbers=3, max_number=6, max_target=30)   # a mix of 3 and 4 numbers, quick to list

torch.set_num_threads(1)


# ---- the reward ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, numbers, target, expected", [
    ("7 * 3 + 5", [3, 5, 7], 26, 1.0),
    ("7 / 2 * 4", [7, 2, 4], 14, 1.0),               # a non-integer intermediate (7/2) is exact arithmetic: allowed
    ("(7 - 7 / 2) * 4", [7, 7, 2, 4], 14, 1.0),
    ("4 * 6", [4, 6, 1], 24, 0.0),                   # the right value with a number left out
    ("4 * 6 * 1 * 1", [4, 6, 1], 24, 0.0),           # ... with an extra number (1 given once, used twice)
    ("4 * 6 + 1 - 1", [4, 6, 1], 24, 0.0),
    ("3 * 8", [4, 6, 1], 24, 0.0),                   # the right value from numbers not given
    ("4 * 6 / 1 = 24", [4, 6, 1], 24, 1.0),
    ("4 * 6 / 1 = 25", [4, 6, 1], 24, 0.0),
    ("4 * 6 / (1 - 1)", [4, 6, 1, 1], 24, 0.0),      # division by zero
    ("(4 * 6", [4, 6], 24, 0.0), ("4 6 *", [4, 6], 24, 0.0), ("4 ** 6", [4, 6], 4096, 0.0),
])
def test_countdown_reward_on_hand_made_expressions(answer, numbers, target, expected):
    assert countdown_reward(answer, numbers, target) == expected


# ---- the split and the corpus -------------------------------------------------------------------------------------

def test_split_by_number_set_and_equal_shares_of_sizes():
    task = CountdownTask(**SMALL)
    train = {key[0] for key in task._pool("train")}
    test = {key[0] for key in task._pool("test")}
    assert train and test and not train & test          # no held-out set of numbers, whatever its target, is trained
    assert {len(s) for s in test} == {3, 4}
    sample = task.sample("test", 40, seed=1)
    assert sorted(len(p.data["numbers"]) for p in sample) == [3] * 20 + [4] * 20
    assert sample == task.sample("test", 40, seed=1) and sample != task.sample("test", 40, seed=2)
    with pytest.raises(ValueError, match="min_numbers"):
        CountdownTask(n_numbers=3, min_numbers=4)


def corpus_problems(docs):
    """(sorted numbers, target) of every problem a document states ("Use 3, 5, 7 to make 22")."""
    return {(tuple(sorted(int(x) for x in m.group(1).split(", "))), int(m.group(2)))
            for d in docs for m in re.finditer(r"Use ([\d, ]+) to make (\d+)", pretrain.doc_text(d))}


@pytest.fixture(scope="module")
def corpus():
    args = pretrain.get_args(["--task", "countdown", "--task-kwargs", str(SMALL).replace("'", '"'),
                              "--n-docs", "3000", *train_zero.ZERO_PRESETS["countdown"]["pretrain"][4:]])
    task = make_task(args.task, **args.task_kwargs)
    return task, *pretrain.build_corpus(task, args)


def test_corpus_never_shows_a_held_out_number_set(corpus):
    task, docs, stats = corpus
    seen = corpus_problems(docs)
    assert len(seen) > 500
    held_out = {key[0] for key in task._pool("test")}
    assert not {numbers for numbers, _ in seen} & held_out
    assert {len(numbers) for numbers, _ in seen} == {3, 4}
    assert all(stats["docs_by_mode"][m] > 0 for m in ("practice", "guess", "plain", "steps", "check"))


def test_corpus_attempts_are_right_and_searches_retry_after_a_noticed_miss(corpus):
    task, docs, _ = corpus
    one, search = [], []
    for d in docs:
        if not isinstance(d, str) or "Assistant: <think>" not in d:       # a worked example or a plain answer
            continue
        numbers, target = next(iter(corpus_problems([d])))
        reasoning = d.split("Assistant: <think> ")[1].split(" </think>")[0]
        attempts = parse_attempts(" <think> " + reasoning + " </think>", target)
        if reasoning in pretrain.HUNCHES:        # a guess
            assert attempts == []
            continue
        assert all(a["steps_right"] == len(a["steps"]) for a in attempts)       # the corpus computes correctly
        assert all(a["noticed"] for a in attempts if a["hit"] is False and len(attempts) > 1)
        answer = d.split("Assistant:")[1].split("<answer> ")[1].split(" </answer>")[0]
        assert (countdown_reward(answer, list(numbers), target) == 1.0) == attempts[-1]["hit"]
        (search if pretrain.RETRY in reasoning else one).append(len(attempts))
    assert one and search and set(one) == {1} and min(search) >= 2
    assert max(search) <= pretrain.get_args([]).max_attempts


def test_practice_documents_are_worked_examples_in_the_cut_template(corpus):
    """The practice documents search until a hit, in the R1-Zero template with a random share of its instructions
    cut; the loss skips the prompt and the mode token right after <think>."""
    task, docs, stats = corpus
    examples = [d for d in docs if not isinstance(d, str)]
    assert len(examples) == stats["docs_by_mode"]["practice"]
    tokenizer = train_bpe([pretrain.doc_text(d) for d in docs[:300]], vocab_size=400)
    starts = set()
    for context, completion in examples[:300]:
        numbers, target = next(iter(corpus_problems([context])))
        assert context.endswith(". Assistant: <think>") and "User: Use " in context
        starts.add(context.split("User:")[0][:20])
        attempts = parse_attempts(" <think>" + completion, target)
        assert attempts and attempts[-1]["hit"] and all(a["steps_right"] == len(a["steps"]) for a in attempts)
        answer = completion.split("<answer> ")[1].split(" </answer>")[0]
        assert countdown_reward(answer, list(numbers), target) == 1.0
        ids, mask = pretrain.render_doc(tokenizer, (context, completion))
        n_context = len(tokenizer.encode(context)) + (tokenizer.bos_id is not None)
        assert not any(mask[:n_context + 1]) and all(mask[n_context + 1:])   # trained after the mode token only
    assert len(starts) > 20                                          # the instructions are cut at many places
    document = pretrain.get_args(["--task", "countdown", "--practice-layout", "document"])
    task_docs = pretrain.build_countdown_corpus(task, argparse.Namespace(**{**vars(document), "n_docs": 50}))[0]
    assert any(isinstance(d, str) and d.startswith("Q: Use ") for d in task_docs)
    assert not any(isinstance(d, tuple) for d in task_docs)


# ---- the search metrics -------------------------------------------------------------------------------------------

def cd(numbers, target):
    return Problem("cd", f"Use {numbers} to make {target}", str(target), "countdown",
                   {"numbers": numbers, "target": target})


def test_search_metrics_on_hand_written_responses():
    p = cd([3, 5, 7], 22)
    texts = [
        " <think> 7 * 3 = 21, 21 + 5 = 26, not 22\nwait, let me try again\n5 * 3 = 15, 15 + 7 = 22\n"
        "5 * 3 + 7 = 22 </think> <answer> 5 * 3 + 7 </answer>",                   # noticed miss, retry, hit
        " <think> 7 * 3 = 21, 21 + 5 = 26, not 22 </think> <answer> 7 * 3 + 5 </answer>",  # noticed, stopped
        " <think> 7 + 3 = 11, 11 + 5 = 16 </think> <answer> 7 + 3 + 5 </answer>",  # unnoticed miss, a wrong step
        " <think> easy </think> <answer> 7 + 5 </answer>",                         # a guess: no attempt
    ]
    s = countdown_stats(texts, [p] * 4)
    assert s["cd/attempts"] == pytest.approx(4 / 4)
    assert s["cd/retry_rate"] == pytest.approx(1 / 4)
    assert s["cd/noticed_rate"] == pytest.approx(2 / 3)           # 3 misses, 2 marked "not 22"
    assert s["cd/retry_after_noticed"] == pytest.approx(1 / 2)
    assert s["cd/step_accuracy"] == pytest.approx(7 / 8)
    assert s["cd/hit_rate"] == pytest.approx(1 / 4)
    assert parse_attempts(texts[0], 22)[0] == {"value": 26, "hit": False, "noticed": True, "steps_right": 2,
                                               "steps": [("7", "*", "3", "21"), ("21", "+", "5", "26")]}
    # a retry after a miss the model did not mark still counts as a retry, not as a noticed one
    s = countdown_stats([" <think> 7 + 3 = 10, 10 + 5 = 15\n5 * 3 = 15, 15 + 7 = 22 </think>"], [p])
    assert (s["cd/retry_rate"], s["cd/noticed_rate"], s["cd/retry_after_noticed"]) == (1.0, 0.0, 0.0)
    # lines after </think> are not reasoning
    assert parse_attempts(" <think> x </think> 7 * 3 = 21, 21 + 1 = 22", 22) == []


def test_probe_sorts_failures_into_classes(monkeypatch):
    """dev/probe_countdown.py's classes on hand-written responses to "Use 3, 5, 7 to make 22"."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "dev"))
    import probe_countdown
    p = cd([3, 5, 7], 22)
    cases = {
        " <think> 5 * 3 = 15, 15 + 7 = 22 </think> <answer> 5 * 3 + 7 </answer>": (True, "correct"),
        " <think> 5 * 3 = 15, 15 + 7 = 22 </think> <answer> 5 + 3 * 7 </answer>": (False, "valid hit, wrong answer"),
        " <think> 5 * 3 = 15, 15 + 8 = 22 </think> <answer> 5 * 3 + 8 </answer>": (False, "hit by wrong steps"),
        " <think> 7 * 3 = 21, 21 + 5 = 26, not 22 </think> <answer> 7 * 3 + 5 </answer>": (False, "no hit"),
        " <think> 7 * 3 = 20, 20 + 4 = 24 </think> <answer> 7 * 3 + 4 </answer>":
            (False, "no hit: wrong step, other numbers, unnoticed"),
        " <think> easy </think> <answer> 7 + 5 </answer>": (False, "no attempt"),
    }
    for text, (right, expected) in cases.items():
        assert probe_countdown.failure_class(text, p, right) == expected, text


# ---- a short RL run -----------------------------------------------------------------------------------------------

def test_short_rl_run_with_the_preset_settings_raises_the_countdown_reward():
    """The preset's RL (its GRPO flags: KL 0.1 to the base, the accuracy reward only) raises the training reward on a
    Countdown question, from a policy that guesses. The policy is a tiny model trained for seconds to answer "Use 1, 2,
    3 to make 6" with guesses, a third of them right: the real preset's base takes minutes to pretrain, and its RL run
    is measured in the README (R1-Zero on Countdown). Rewards by the real rule (nanor1.rewards.countdown_reward)."""
    zero = get_template("r1-zero")
    problem = cd([1, 2, 3], 6)
    rng = random.Random(0)
    hits = ["1 + 2 + 3", "3 * 2 * 1", "2 * 3 * 1", "3 + 2 + 1"]

    def guess():   # a right equation a third of the time, else any expression of the numbers
        n = rng.sample([1, 2, 3], 3)
        expression = (rng.choice(hits) if rng.random() < 0.3 else
                      f"{n[0]} {rng.choice('+-*')} {n[1]} {rng.choice('+-*')} {n[2]}")
        return zero.response(rng.choice(["easy", "quick one"]), expression)

    responses = [guess() for _ in range(400)]
    tokenizer = train_bpe([zero.prompt(problem.question) + r for r in responses], vocab_size=800)
    examples = [render(tokenizer, zero, problem.question, r) for r in responses]   # the loss on the response + EOS

    torch.manual_seed(0)
    policy = Transformer(get_config("tiny", vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, kv_lora_rank=32,
                                    inter_dim=128, moe_inter_dim=32, max_seq_len=256))
    optimizer = make_optimizer(policy, lr=3e-3, weight_decay=0.0)
    for step in range(250):
        tokens, mask = collate([examples[(16 * step + j) % len(examples)] for j in range(16)], tokenizer.pad_id)
        loss, _ = sft_loss(policy, tokens, mask, shared_prefix=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    args = train_zero.get_args(["--preset", "countdown", "--group-size", "16", "--max-new-tokens", "24",
                                "--lr", "1e-3"])
    assert (args.beta, args.format_weight, args.accuracy_weight) == (0.1, 0.0, 1.0)   # the preset's reward and KL
    cfg = train_zero.grpo_config(args)
    reward_fn = rule_rewards({"accuracy": args.accuracy_weight, "format": args.format_weight}, zero)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = make_optimizer(policy, lr=args.lr, weight_decay=0.0)
    rewards = [train_zero.rl_step(policy, optimizer, tokenizer, zero, [problem] * 8, reward_fn, cfg, seed=step,
                                  ref=ref)["reward"] for step in range(30)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert 0 < first < 0.5 and last > first + 0.05, rewards


def test_preset_sets_defaults_that_flags_override():
    a = train_zero.get_args(["--preset", "countdown", "--steps", "3"])
    assert (a.task, a.base, a.steps) == ("countdown", "runs/base-countdown", 3)
    assert a.task_kwargs == {"n_numbers": 4, "min_numbers": 3, "max_number": 9, "max_target": 30}
    pre = pretrain.get_args(train_zero.ZERO_PRESETS["countdown"]["pretrain"])
    assert (pre.task, pre.max_step_value, pre.practice_layout, pre.max_new_tokens, pre.steps) == (
        "countdown", 40, "template", 192, 2000)
    assert (a.beta, a.format_weight, a.eval_k) == (0.1, 0.0, 4)
    assert make_task(pre.task, **pre.task_kwargs) == make_task(a.task, **a.task_kwargs)   # one task for both
    d = train_zero.get_args([])
    assert (d.preset, d.task, d.base, d.steps, d.max_new_tokens) == ("arithmetic", "arithmetic", "runs/base", 40, 160)


def test_preset_runs_end_to_end_and_logs_the_search(tmp_path, corpus):
    """train_zero.py --preset countdown on a tiny untrained base: a few steps run, and every evaluation reports the
    search metrics per difficulty. (That the preset's RL raises the Countdown reward: the test above, from a stand-in
    policy; from the real base: README "R1-Zero on Countdown".)"""
    _, docs, _ = corpus
    tokenizer = train_bpe(docs[:300], vocab_size=400)
    torch.manual_seed(0)
    checkpoint.save(tmp_path / "base", Transformer(get_config("tiny", vocab_size=tokenizer.vocab_size, dim=64,
                    n_layers=2, kv_lora_rank=32, inter_dim=128, moe_inter_dim=32, max_seq_len=256)),
                    tokenizer=tokenizer)
    summary = train_zero.main(["--preset", "countdown", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "z"),
                               "--task-kwargs", str(SMALL).replace("'", '"'), "--steps", "2", "--eval-every", "2",
                               "--eval-problems", "4", "--eval-k", "2", "--prompts-per-step", "2", "--group-size", "4",
                               "--max-new-tokens", "16", "--device", "cpu"])
    for report in (summary["base"], summary["final"]):
        for key in ("pass@1", "cons@2", "cd/attempts", "cd/retry_rate", "cd/retry_after_noticed", "n3/pass@1",
                    "n4/cons@2", "n3/mean_length", "n4/cd/attempts"):
            assert key in report, key
    rows = [json.loads(line) for line in (tmp_path / "z" / "metrics.jsonl").read_text().splitlines()]
    assert all("cd/attempts" in r for r in rows if "reward" in r)
