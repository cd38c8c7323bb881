"""
Rollouts: problems in, scored completions out. The glue between the sampler and the rewards, shared by the RL step
(nanor1/grpo.py), the base-model report (pretrain.py) and evaluation.

    ro = rollout(model, tokenizer, problems, group_size=G, reward_fn=..., max_new_tokens=..., seed=...)
    ro.texts[i], ro.rewards[i], ro.components["accuracy"][i]        # i = problem * G + sample (prompt-major)

Prompts use the R1-Zero template (paper Table 1): BOS + "A conversation between User and Assistant ... User:
{question}. Assistant:". Generation stops at EOS or at the `</answer>` tag, the end of the format the rule rewards
check, so nothing after it is ever generated or trained on.

evaluate() reports what R1 reports (paper sec. 3): pass@1 averaged over k samples per problem (temperature 0.6,
top-p 0.95 by default), cons@k (majority vote over the k extracted answers), plus the behaviours Figures 2-3 and
the "aha moment" discussion track: format compliance, response length, and the rate of reflection phrases.
"""
import re
from dataclasses import dataclass, field
from functools import partial

import torch

from nanor1.math_grader import extract_answer
from nanor1.rewards import accuracy_reward, compute_rewards
from nanor1.sampler import Rollout, generate
from nanor1.scoring import majority_vote, mean_pass_at_1, pass_at_k
from nanor1.tokenizer import r1_zero_prompt

# phrases of re-examination ("wait, let me check", "let me verify"): the paper's "aha moment" signal
REFLECTION = re.compile(r"\b(wait|let me check|let me verify|re-?check|double[- ]check|verify)\b", re.IGNORECASE)


def prompt_ids(tokenizer, question: str) -> list[int]:
    """BOS + the R1-Zero template around the question, as token ids."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    return bos + tokenizer.encode(r1_zero_prompt(question))


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end a completion: EOS, and the closing answer tag when the vocabulary has it as one token."""
    ids = [tokenizer.eos_id]
    try:
        ids.append(tokenizer.token_id("</answer>"))
    except ValueError:
        pass
    return ids


@dataclass
class Rollouts:
    problems: list                   # N problems
    group_size: int                  # G completions each; rows are prompt-major (problem i -> rows i*G .. i*G+G-1)
    sample: Rollout                  # the sampler's output: tokens, logprobs, mask, finish_reason, routing
    texts: list[str]                 # N*G decoded completions
    rewards: torch.Tensor            # [N*G] float32: the weighted total
    components: dict[str, list[float]] = field(default_factory=dict)  # each named reward, per row

    @property
    def lengths(self) -> torch.Tensor:
        return self.sample.mask.sum(1)                                   # [N*G] completion tokens

    def rewards_by_group(self) -> torch.Tensor:
        return self.rewards.view(len(self.problems), self.group_size)   # [N, G]


def default_reward_fn(weights: dict[str, float]):
    """The rule rewards of R1-Zero: reward_fn(texts, problems) -> weighted sum of named rule rewards, components."""
    return partial(compute_rewards, weights=weights)


@torch.no_grad()
def rollout(model, tokenizer, problems, *, group_size: int, reward_fn, max_new_tokens: int,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
            seed: int | None = None, prefix: list[str] | None = None, record_routing: bool = False,
            decode_mode: str = "eager") -> Rollouts:
    """Sample group_size completions for each problem and score them.

    prefix: optional forced start of each completion (one string per problem, e.g. " <think> 3 + 7 = 10"); it is
    part of the prompt for the sampler and of the text for the rewards. reward_fn(texts, problems) returns
    (totals, components). decode_mode: the sampler's decode step ("eager", "static", "cuda_graph"; see sampler.py).
    """
    prompts = [prompt_ids(tokenizer, p.question) for p in problems]
    if prefix is not None:
        prompts = [ids + tokenizer.encode(pre) for ids, pre in zip(prompts, prefix)]
    seeds = None if seed is None else [seed * 1_000_003 + i for i in range(len(problems))]
    stops = stop_ids(tokenizer)
    # a real checkpoint's vocabulary spells "</answer>" with several tokens: match it as text instead
    stop_strings = None if len(stops) > 1 else ["</answer>"]
    sample = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      top_k=top_k, greedy=greedy, eos_id=stops, stop_strings=stop_strings, decode=tokenizer.decode,
                      group_size=group_size, seed=seeds, record_routing=record_routing, decode_mode=decode_mode)
    texts = [tokenizer.decode(ids, skip_special=True) for ids in sample.completions()]
    if prefix is not None:
        texts = [prefix[i // group_size] + t for i, t in enumerate(texts)]
    repeated = [p for p in problems for _ in range(group_size)]
    totals, components = reward_fn(texts, repeated)
    return Rollouts(problems=list(problems), group_size=group_size, sample=sample, texts=texts,
                    rewards=torch.as_tensor(totals, dtype=torch.float32), components=components)


def behaviour_stats(ro: Rollouts) -> dict:
    """Format rate, response length, reflection and truncation rates of a set of completions."""
    n = len(ro.texts)
    stats = {
        "mean_length": ro.lengths.float().mean().item(),
        "reflection_rate": sum(bool(REFLECTION.search(t)) for t in ro.texts) / n,
        "truncation_rate": sum(r == "length" for r in ro.sample.finish_reason) / n,
    }
    for name, values in ro.components.items():
        stats[f"reward/{name}"] = sum(values) / n
    return stats


def evaluate(model, tokenizer, problems, *, k: int = 8, temperature: float = 0.6, top_p: float = 0.95,
             max_new_tokens: int = 256, seed: int = 0, n_examples: int = 4, decode_mode: str = "eager") -> dict:
    """pass@1 (mean over k samples), pass@k, cons@k, format rate and behaviour stats on held-out problems."""
    ro = rollout(model, tokenizer, problems, group_size=k, reward_fn=default_reward_fn({"accuracy": 1.0, "format": 1.0}),
                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                 decode_mode=decode_mode)
    correct = [[c > 0.5 for c in ro.components["accuracy"][i * k:(i + 1) * k]] for i in range(len(problems))]
    cons = 0
    for i, problem in enumerate(problems):
        group = ro.texts[i * k:(i + 1) * k]
        # vote only over answers given in the <answer> tag, as accuracy_reward reads them
        answers = [extract_answer(t) if "</answer>" in t else None for t in group]
        voted = majority_vote(answers) if problem.kind == "math" else None
        if voted is None and problem.kind != "math":  # equations: vote over exact strings
            real = [a for a in answers if a is not None]
            voted = max(real, key=real.count) if real else None
        if voted is not None:
            cons += accuracy_reward(f"<think> </think> <answer> {voted} </answer>", problem) > 0.5
    report = {
        "pass@1": mean_pass_at_1(correct),
        f"pass@{k}": sum(pass_at_k(k, sum(c), k) for c in correct) / len(correct),
        f"cons@{k}": cons / len(problems),
        "format_rate": sum(ro.components["format"]) / len(ro.texts),
        **{key: v for key, v in behaviour_stats(ro).items() if not key.startswith("reward/")},
        "examples": [{"question": problems[i // k].question, "completion": ro.texts[i],
                      "correct": bool(correct[i // k][i % k])} for i in range(0, min(n_examples * k, len(ro.texts)), k)],
    }
    return report


def forced_mode_accuracy(model, tokenizer, task, problems, *, max_new_tokens: int = 256) -> float:
    """Accuracy when the completion is forced to start reasoning: prefill " <think> " plus the first line of the
    worked solution, then decode greedily. High means the base holds a reliable mode that RL can select."""
    prefix = [" <think> " + task.worked_solution(p)[0] for p in problems]
    ro = rollout(model, tokenizer, problems, group_size=1, reward_fn=default_reward_fn({"accuracy": 1.0}),
                 max_new_tokens=max_new_tokens, greedy=True, prefix=prefix)
    return sum(ro.components["accuracy"]) / len(problems)
