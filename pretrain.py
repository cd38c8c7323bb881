"""
pretrain.py: make the base model that R1-Zero starts from (our stand-in for DeepSeek-V3-Base).

R1-Zero does not teach a model to reason from nothing: RL selects and sharpens behaviours the base model already
has but rarely shows (shared/notes/tiny-r1zero.md). So this script writes a corpus in which, for every generated
problem, the completion is drawn from a mix of "modes", and trains the tiny MoE+MLA model on it:

  guess   (most)   <think> a one-line hunch </think> <answer> a guess </answer>    right only sometimes
  plain            The answer is <guess>.                                          no tags: format reward 0
  steps            <think> step-by-step running totals </think> <answer> .. </answer>   right unless a slip
  check   (rare)   steps, then "wait, let me check" and the sum redone in reverse order; a slip in the first
                   pass is caught there (in the default mix it is no more accurate than "steps": see README)

Those documents are the R1-Zero prompt (paper Table 1) followed by one completion. Besides them, a share of short
"practice" documents without the template ("Q: 3 + 7 + 5\n3 + 7 = 10\n10 + 5 = 15\nA: 15", some with a reverse-order
check) teach the skill itself cheaply, the way a real base model learns arithmetic from text that is not a chat
transcript; which mode the model picks *after the template* is set only by the templated documents. So the base
model is competent but unreliable: low pass@1, high forced-mode accuracy. The report at the end measures that:
  pass@1 / cons@k of free sampling, format rate, and "forced-mode accuracy" (prefill <think> plus the first
  reasoning step, decode greedily): if that is low, RL has no reliable mode to select and will collapse.

Commands:
  python pretrain.py                                   # tiny default, ~9 minutes on 2 CPU cores
  python pretrain.py --device cuda --steps 3000 --batch-size 128 --out runs/base-gpu
Single process only for now (data-parallel pretraining arrives with the FSDP issue).
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

from nanor1 import checkpoint
from nanor1.model import Transformer, get_config, lm_loss
from nanor1.rollout import evaluate, forced_mode_accuracy
from nanor1.tasks import make_task
from nanor1.tokenizer import r1_zero_prompt, r1_zero_completion, train_bpe
from nanor1.training import (JsonlLogger, autocast, clip_grad, lr_at, make_optimizer, pick_device, print0,
                             seed_everything, set_lr)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # task and corpus
    p.add_argument("--task", default="arithmetic", help="built-in task: arithmetic | countdown")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', help="JSON dict of task options")
    p.add_argument("--n-docs", type=int, default=50000, help="documents in the corpus")
    p.add_argument("--p-practice", type=float, default=0.8, help="share of untemplated practice documents")
    p.add_argument("--p-guess", type=float, default=0.58, help="share of 'guess' completions")
    p.add_argument("--p-plain", type=float, default=0.22, help="share of untagged 'the answer is' completions")
    p.add_argument("--p-steps", type=float, default=0.15, help="share of step-by-step completions")
    p.add_argument("--p-check", type=float, default=0.05, help="share of steps + 'wait, let me check' completions")
    p.add_argument("--guess-acc", type=float, default=0.25, help="how often a guess is right")
    p.add_argument("--slip-rate", type=float, default=0.1, help="chance that a step-by-step pass has one slip")
    p.add_argument("--vocab-size", type=int, default=512)
    # model and optimisation
    p.add_argument("--preset", default="tiny", help="model preset (nanor1.model.PRESETS)")
    p.add_argument("--model-kwargs", default="{}", help="JSON dict of ModelConfig overrides")
    p.add_argument("--steps", type=int, default=1300)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--bias-update-speed", type=float, default=1e-3, help="gamma of aux-loss-free MoE balancing")
    # evaluation of the base
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--eval-k", type=int, default=8, help="samples per problem; 0 skips the sampled report")
    p.add_argument("--eval-temperature", type=float, default=0.6)
    p.add_argument("--eval-top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=160)
    # run
    p.add_argument("--out", default="runs/base", help="checkpoint folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# The corpus: one R1-Zero prompt + one completion per document

HUNCHES = ["this is easy", "I know this one", "quick one", "easy", "I think I know"]


def guess_answer(task, problem, rng, acc):
    """A guess: the right answer with probability acc, else a near miss (what a hunch gets wrong)."""
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


def make_completion(task, problem, mode, rng, args):
    answer = task.answer_text(problem)
    if mode == "guess":
        return r1_zero_completion(rng.choice(HUNCHES), guess_answer(task, problem, rng, args.guess_acc))
    if mode == "plain":
        return f" The answer is {guess_answer(task, problem, rng, args.guess_acc)}."
    lines = task.worked_solution(problem)
    if problem.kind != "math":  # countdown traces already contain their own near misses and checks
        return r1_zero_completion("\n".join(lines), answer)
    first, final = lines, answer
    if rng.random() < args.slip_rate:
        first, final = slipped(lines, rng)
    if mode == "steps":
        return r1_zero_completion("\n".join(first), final)
    # check: redo the sum in reverse order; the second pass decides
    reverse = task.worked_solution(dataclasses.replace(problem, data={**problem.data,
                                                                     "terms": problem.data["terms"][::-1]}))
    verdict = f"yes, it is {answer}." if final == answer else f"so it is {answer}, not {final}."
    reasoning = "\n".join(first) + "\nwait, let me check.\n" + "\n".join(reverse) + "\n" + verdict
    return r1_zero_completion(reasoning, answer)


def practice_doc(task, problem, rng) -> str:
    """A worked example outside any template: teaches the steps (and sometimes the check) themselves."""
    lines = task.worked_solution(problem)
    if problem.kind == "math" and rng.random() < 0.25:
        reverse = dataclasses.replace(problem, data={**problem.data, "terms": problem.data["terms"][::-1]})
        lines = lines + ["wait, let me check."] + task.worked_solution(reverse)
    return f"Q: {problem.question}\n" + "\n".join(lines) + f"\nA: {task.answer_text(problem)}"


def build_corpus(task, args) -> tuple[list[str], dict]:
    rng = random.Random(args.seed)
    modes = ["guess", "plain", "steps", "check"]
    weights = [args.p_guess, args.p_plain, args.p_steps, args.p_check]
    n_train = task.count("train")
    problems = task.sample("train", n_train, seed=args.seed)
    docs, counts = [], dict.fromkeys(["practice"] + modes, 0)
    for i in range(args.n_docs):
        problem = problems[i % n_train]
        if rng.random() < args.p_practice:
            counts["practice"] += 1
            docs.append(practice_doc(task, problem, rng))
            continue
        mode = rng.choices(modes, weights)[0]
        counts[mode] += 1
        docs.append(r1_zero_prompt(problem.question) + make_completion(task, problem, mode, rng, args))
    return docs, {"docs_by_mode": counts, "distinct_problems": min(n_train, args.n_docs)}


def length_bucketed_batches(seqs: list[list[int]], batch_size: int, rng: random.Random, bucket: int = 16):
    """Shuffle, then sort within windows of `bucket` batches so each batch holds similar lengths (less padding)."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    batches = []
    for w in range(0, len(order), batch_size * bucket):
        window = sorted(order[w:w + batch_size * bucket], key=lambda i: len(seqs[i]))
        batches += [window[b:b + batch_size] for b in range(0, len(window), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(seqs, pad_id, device):
    """Right-pad to [B, T]; the mask marks real tokens (a target counts when its own position is real)."""
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    return tokens.to(device), mask.to(device)


def main(argv=None):
    args = get_args(argv)
    seed_everything(args.seed)
    device = pick_device(args.device)
    out = Path(args.out)
    task = make_task(args.task, **json.loads(args.task_kwargs))

    t0 = time.time()
    docs, corpus_stats = build_corpus(task, args)
    tokenizer = train_bpe(docs[:5000], vocab_size=args.vocab_size)
    seqs = [[tokenizer.bos_id] + ids + [tokenizer.eos_id] for ids in (tokenizer.encode(d) for d in docs)]
    corpus_stats.update(docs=len(seqs), tokens=sum(map(len, seqs)), mean_len=sum(map(len, seqs)) / len(seqs))
    print0(f"corpus: {json.dumps(corpus_stats)} ({time.time() - t0:.1f}s)")

    cfg = get_config(args.preset, vocab_size=tokenizer.vocab_size, **json.loads(args.model_kwargs))
    model = Transformer(cfg).to(device)
    print0(f"model: {args.preset} {json.dumps(model.num_params())}")
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    rng = random.Random(args.seed)
    batches, epoch = [], 0
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLogger(out / "pretrain_metrics.jsonl")
    model.train()
    t_start, tokens_seen = time.time(), 0
    for step in (bar := tqdm(range(args.steps), desc="pretrain")):
        if not batches:
            batches, epoch = length_bucketed_batches(seqs, args.batch_size, rng), epoch + 1
        tokens, mask = collate([seqs[i] for i in batches.pop()], tokenizer.pad_id, device)
        lr = lr_at(step, max_lr=args.lr, warmup=args.warmup, total=args.steps)
        set_lr(optimizer, lr)
        with autocast(device):
            loss, stats = lm_loss(model, tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_grad(model, args.grad_clip)
        if math.isfinite(norm):
            optimizer.step()
            model.update_routing_bias(args.bias_update_speed)
        tokens_seen += int(mask.sum())
        if step % 10 == 0 or step == args.steps - 1:
            tok_s = tokens_seen / (time.time() - t_start)
            log.log(step=step, epoch=epoch, lr=lr, grad_norm=norm, tok_per_s=tok_s, **stats)
            bar.set_postfix(loss=f"{stats['lm_loss']:.3f}", tok_s=f"{tok_s:.0f}")
    train_s = time.time() - t_start

    # the base model's report: what RL will have to work with
    model.eval()
    problems = task.sample("test", args.eval_problems, seed=args.seed)
    report = {}
    if args.eval_k > 0:
        report = evaluate(model, tokenizer, problems, k=args.eval_k, temperature=args.eval_temperature,
                          top_p=args.eval_top_p, max_new_tokens=args.max_new_tokens, seed=args.seed)
    report["forced_mode_accuracy"] = forced_mode_accuracy(model, tokenizer, task, problems,
                                                          max_new_tokens=args.max_new_tokens)
    report.update(train_seconds=train_s, tokens_seen=tokens_seen, final_loss=stats["lm_loss"])
    log.log(step=args.steps, **{f"base/{k}": v for k, v in report.items() if not isinstance(v, (list, dict))})
    log.close()
    checkpoint.save(out, model, tokenizer=tokenizer,
                    extra={"pretrain_args": vars(args), "corpus": corpus_stats, "base_report": report})
    print0("base model report: " + json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}))
    print0(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
