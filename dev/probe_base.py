"""
Why does a base model fail in the R1-Zero template? Greedy accuracy of one arithmetic base under four framings.

    python dev/probe_base.py runs/base                 # 100 held-out problems, ~1 minute on 2 cores

  practice, at the document start   "Q: 3 + 7 + 5 + 2 + 9\n" as pretrain.py's practice documents begin
  practice, ~80 tokens in           the same after the template's instructions (where the template puts the question)
  template, first step prefilled    forced-mode accuracy (pretrain.py's report; what RL needs high)
  template, "<think>" only          the steps mode started, the first step left to the model

A base that is right in the first line and wrong in the others has the skill but finds the question's numbers by
their place from the start of the document, and cannot find them where the template puts them: the failure seen in
the default recipe's unlucky seeds (dev/LOG.md, sixth session). Numbers only; nothing is written.
"""
import argparse
import re

import torch

from nanor1 import checkpoint
from nanor1.rollout import forced_mode_accuracy, rollout, rule_rewards
from nanor1.sampler import SamplingParams, generate
from nanor1.tasks import make_task
from nanor1.templates import get_template


def greedy_accuracy(model, tokenizer, problems, texts, answer_pattern) -> float:
    """Share of problems whose greedy continuation of texts[i] states problems[i]'s answer (first match)."""
    prompts = [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts]
    out = generate(model, prompts, SamplingParams(max_new_tokens=80, greedy=True), group_size=1, seed=0,
                   decode=tokenizer.decode)
    right = 0
    for i, p in enumerate(problems):
        m = re.search(answer_pattern, tokenizer.decode(out.tokens[i][out.mask[i]].tolist()))
        right += bool(m and m.group(1) == p.answer)
    return right / len(problems)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="an arithmetic base checkpoint made by pretrain.py")
    ap.add_argument("--problems", type=int, default=100, help="held-out problems")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer, _ = checkpoint.load(args.base)
    model.eval()
    task, zero = make_task("arithmetic", n_terms=5), get_template("r1-zero")
    problems = task.sample("test", args.problems, seed=1337)
    instructions = zero.prompt("X").split(" User:")[0]     # the template's text before the question
    rows = {
        "practice, at the document start": greedy_accuracy(
            model, tokenizer, problems, [f"Q: {p.question}\n" for p in problems], r"A: (-?\d+)"),
        "practice, ~80 tokens in": greedy_accuracy(
            model, tokenizer, problems, [f"{instructions} Q: {p.question}\n" for p in problems], r"A: (-?\d+)"),
        "template, first step prefilled": forced_mode_accuracy(model, tokenizer, task, problems, template=zero,
                                                               max_new_tokens=80),
        'template, "<think>" only': sum(rollout(   # graded by the R1-Zero accuracy rule, as RL grades it
            model, tokenizer, problems, template=zero, prefix=[" <think>"] * len(problems),
            params=SamplingParams(max_new_tokens=80, greedy=True),
            reward_fn=rule_rewards({"accuracy": 1.0}, zero)).components["accuracy"]) / len(problems),
    }
    for name, acc in rows.items():
        print(f"{name:34s} {acc:6.1%}")
    return rows


if __name__ == "__main__":
    main()
