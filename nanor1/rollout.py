"""
Rollouts: problems in, scored completions out. The glue between the sampler and the rewards, shared by the RL
scripts (train_zero.py, train_r1.py), the base-model report (pretrain.py) and evaluation.

    ro = rollout(model, tokenizer, problems, template=get_template("r1-zero"), params=SamplingParams(...),
                 group_size=G, reward_fn=rule_rewards({"accuracy": 1.0, "format": 0.1}, template), seed=...)
    ro.texts[i], ro.rewards[i], ro.components["accuracy"][i]        # i = problem * G + sample (prompt-major)

The template (nanor1/templates.py) turns each question into a prompt (after the tokenizer's BOS) and says what ends
a completion: EOS, plus its stop strings (R1-Zero: "</answer>", so nothing after the answer is ever generated or
trained on). A stop string that is one token in the vocabulary (the tiny BPE's "</answer>") is matched as a token
id on the device; one that a real vocabulary spells with several tokens is matched on the decoded text.

Dynamic sampling (DAPO, `fill_groups`): a group whose G rewards are all equal has zero advantage and teaches
nothing; such groups are dropped and replaced by groups for new questions until the batch is full again.

evaluate() reports what R1 reports (paper sec. 3): pass@1 averaged over k samples per problem (temperature 0.6,
top-p 0.95 by default), cons@k (majority vote over the k extracted answers), plus the behaviours Figures 2-3 and
the "aha moment" discussion track: format compliance, response length, and the rate of reflection phrases.

Shapes: N problems, G completions per problem, rows = N * G, T completion tokens.
"""
import re
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from nanor1.fsdp import all_gather_objects, share, world_size
from nanor1.grpo import filter_groups
from nanor1.rewards import compute_rewards, grade_answer
from nanor1.sampler import Generation, SamplingParams, generate
from nanor1.scoring import cons_score, mean_pass_at_1, pass_at_k

# phrases of re-examination ("wait, let me check", "let me verify"): the paper's "aha moment" signal
REFLECTION = re.compile(r"\b(wait|let me check|let me verify|re-?check|double[- ]check|verify)\b", re.IGNORECASE)


def prompt_ids(tokenizer, template, question: str) -> list[int]:
    """BOS + the template's prompt around the question, as token ids."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    return bos + tokenizer.encode(template.prompt(question))


def stops(tokenizer, template) -> dict:
    """What ends a completion, as SamplingParams fields: EOS and every stop string that is a single token as ids,
    the others as text."""
    ids, strings = [tokenizer.eos_id], []
    for s in template.stop_strings:
        try:
            ids.append(tokenizer.token_id(s))
        except ValueError:  # a real vocabulary spells "</answer>" with several tokens: match it as text
            strings.append(s)
    return dict(stop_ids=tuple(ids), stop_strings=tuple(strings))


def rule_rewards(weights: dict[str, float], template):
    """The rule rewards of R1-Zero: reward_fn(texts, problems) -> (weighted totals, named components)."""
    return partial(compute_rewards, weights=weights, template=template)


@dataclass
class Rollouts:
    problems: list                   # N problems
    group_size: int                  # G completions each; rows are prompt-major (problem i -> rows i*G .. i*G+G-1)
    gen: Generation                  # the sampler's output: tokens, logprobs, mask, finish_reason, routing
    texts: list[str]                 # N*G decoded completions
    rewards: torch.Tensor            # [N*G] float32: the weighted total
    components: dict[str, list[float]] = field(default_factory=dict)  # each named reward, per row

    @property
    def lengths(self) -> torch.Tensor:
        return self.gen.mask.sum(1)                                      # [N*G] completion tokens

    def rewards_by_group(self) -> torch.Tensor:
        return self.rewards.view(len(self.problems), self.group_size)   # [N, G]

    def groups(self, keep: list[int]) -> "Rollouts":
        """The rollouts of the given problems (groups), in that order."""
        G = self.group_size
        rows = [i * G + j for i in keep for j in range(G)]
        return Rollouts(problems=[self.problems[i] for i in keep], group_size=G, gen=self.gen.select(rows),
                        texts=[self.texts[r] for r in rows], rewards=self.rewards[rows],
                        components={k: [v[r] for r in rows] for k, v in self.components.items()})

    @staticmethod
    def cat(parts: list["Rollouts"]) -> "Rollouts":
        """The groups of several Rollouts (same group size) in one."""
        return Rollouts(problems=[p for ro in parts for p in ro.problems], group_size=parts[0].group_size,
                        gen=Generation.cat([ro.gen for ro in parts]), texts=[t for ro in parts for t in ro.texts],
                        rewards=torch.cat([ro.rewards for ro in parts]),
                        components={k: [v for ro in parts for v in ro.components[k]] for k in parts[0].components})


@torch.no_grad()
def rollout(model, tokenizer, problems, *, template, params: SamplingParams, group_size: int = 1, reward_fn=None,
            seed: int | list[int] | None = None, prefix: list[str] | None = None, record_routing: bool = False,
            decode_mode: str = "eager", first_index: int = 0) -> Rollouts:
    """Sample group_size completions for each problem and score them.

    params: the sampling distribution and length; the template's stops are added to it. reward_fn(texts, problems)
    returns (totals, components); None scores nothing (rewards 0). prefix: optional forced start of each completion
    (one string per problem, e.g. " <think> 3 + 7 = 10"); it is part of the prompt for the sampler and of the text
    for the rewards. seed: one stream per problem (seed * 1_000_003 + i), so a problem's samples do not depend on
    its batch; i counts from first_index (data parallel: the global index of this rank's first problem, so samples
    do not depend on the number of ranks either); or a list of one seed per problem (evaluate.py seeds each problem
    by its id). decode_mode: the sampler's decode step ("eager", "static", "cuda_graph"; see sampler.py).
    """
    prompts = [prompt_ids(tokenizer, template, p.question) for p in problems]
    if prefix is not None:
        prompts = [ids + tokenizer.encode(pre) for ids, pre in zip(prompts, prefix)]
    seeds = seed if seed is None or isinstance(seed, list) else [seed * 1_000_003 + first_index + i
                                                                  for i in range(len(problems))]
    gen = generate(model, prompts, replace(params, **stops(tokenizer, template)), group_size=group_size, seed=seeds,
                   decode=tokenizer.decode, record_routing=record_routing, decode_mode=decode_mode)
    texts = [tokenizer.decode(ids, skip_special=True) for ids in gen.completions()]
    if prefix is not None:
        texts = [prefix[i // group_size] + t for i, t in enumerate(texts)]
    totals, components = [0.0] * len(texts), {}
    if reward_fn is not None:
        totals, components = reward_fn(texts, [p for p in problems for _ in range(group_size)])
    return Rollouts(problems=list(problems), group_size=group_size, gen=gen, texts=texts,
                    rewards=torch.as_tensor(totals, dtype=torch.float32), components=components)


def informative_groups(ro: Rollouts) -> list[int]:
    """Indices of the groups whose rewards are not all equal (an all-equal group has zero advantage)."""
    return filter_groups(ro.rewards_by_group()).nonzero().flatten().tolist()


def fill_groups(ro: Rollouts, more, max_refills: int) -> tuple[Rollouts, int]:
    """Dynamic sampling (DAPO): keep the informative groups of `ro` and add those of more(n, attempt) -> Rollouts
    for n new questions, until there are as many groups as before or max_refills is spent. If no group at all is
    informative, `ro` comes back as it is (all advantages 0). Returns (Rollouts, number of groups sampled).

    Data parallel (a collective: call it on every rank), each rank refills its own groups, and FSDP needs every
    rank to run the same passes: all ranks refill while any one is short (a full rank calls more(0, attempt), which
    must take part in the gathering of the weights and may return None), and all keep the smallest rank's number
    of groups (the ranks' batches then have the same number of rows, so of micro-batches and optimizer steps)."""
    want, sampled = len(ro.problems), len(ro.problems)
    kept = [ro.groups(informative_groups(ro))]
    for attempt in range(max_refills):
        short = max(want - sum(len(k.problems) for k in kept), 0)
        if not any(all_gather_objects(short > 0)):     # no rank is short (one process: this one is not)
            break
        extra = more(short, attempt)
        if extra is not None and extra.problems:
            sampled += len(extra.problems)
            kept.append(extra.groups(informative_groups(extra)))
    kept = [k for k in kept if k.problems]
    out = Rollouts.cat(kept) if kept else ro
    n = min(all_gather_objects(min(want, len(out.problems))))     # the same number of groups on every rank
    return out.groups(list(range(n))), sampled


def behaviour_stats(ro: Rollouts) -> dict:
    """Response length, reflection and truncation rates, and each reward component's mean; for countdown problems
    also the search behaviour (countdown_stats)."""
    n = len(ro.texts)
    stats = {
        "mean_length": ro.lengths.float().mean().item(),
        "reflection_rate": sum(bool(REFLECTION.search(t)) for t in ro.texts) / n,
        "truncation_rate": sum(r == "length" for r in ro.gen.finish_reason) / n,
    }
    for name, values in ro.components.items():
        stats[f"reward/{name}"] = sum(values) / n
    rows = [p for p in ro.problems for _ in range(ro.group_size)]
    if any(p.kind == "countdown" for p in ro.problems):
        stats.update(countdown_stats([t for t, p in zip(ro.texts, rows) if p.kind == "countdown"],
                                     [p for p in rows if p.kind == "countdown"]))
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Countdown: the search in a response, read line by line
#
# An attempt is a line of steps "7 * 3 = 21, 21 + 5 = 26" (a candidate computed), maybe ending ", not 22" (the
# model compared it with the target and saw the miss). The "aha" in behaviour is what follows a noticed miss:
# another attempt (a retry) or the end of the reasoning. Counting attempts, not the word "wait", measures it.

_STEP = r"(\d+) ([-+*/]) (\d+) = (\d+)"
_ATTEMPT = re.compile(rf"^{_STEP}(?:, {_STEP})*(?:, not (\d+))?$")


def parse_attempts(text: str, target: int) -> list[dict]:
    """The attempts of a response's reasoning, in order: {"value": last step's result, "hit": value == target,
    "noticed": wrote "not N" (N any number), "steps": [(a, op, b, c)], "steps_right": how many are right}."""
    out = []
    for line in text.split("</think>")[0].replace("<think>", "\n").splitlines():
        line = line.strip()
        if not _ATTEMPT.match(line):
            continue
        steps = [tuple(m.groups()) for m in re.finditer(_STEP, line)]
        right = 0
        for a, op, b, c in steps:
            a, b, c = int(a), int(b), int(c)
            right += {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op] == c
        value = int(steps[-1][3])
        out.append({"value": value, "hit": value == target, "noticed": bool(re.search(r", not \d+$", line)),
                    "steps": steps, "steps_right": right})
    return out


def countdown_stats(texts: list[str], problems: list) -> dict:
    """Search behaviour over countdown responses (one problem per text):
    cd/attempts             mean attempts (computed candidates) per response
    cd/retry_rate           share of responses with an attempt after a missed one (a re-try after a miss)
    cd/noticed_rate         share of missed attempts the response marked "not T"
    cd/retry_after_noticed  share of noticed misses followed by another attempt: the "aha" in behaviour
    cd/step_accuracy        share of computed steps whose arithmetic is right
    cd/hit_rate             share of attempts that reach the target"""
    n_att = n_retry = n_miss = n_noticed = n_noticed_retry = n_steps = n_right = n_hits = 0
    for text, p in zip(texts, problems):
        attempts = parse_attempts(text, p.data["target"])
        n_att += len(attempts)
        n_hits += sum(a["hit"] for a in attempts)
        misses = [i for i, a in enumerate(attempts) if not a["hit"]]
        n_retry += any(i < len(attempts) - 1 for i in misses)
        n_miss += len(misses)
        noticed = [i for i in misses if attempts[i]["noticed"]]
        n_noticed += len(noticed)
        n_noticed_retry += sum(i < len(attempts) - 1 for i in noticed)
        n_steps += sum(len(a["steps"]) for a in attempts)
        n_right += sum(a["steps_right"] for a in attempts)
    n = max(len(texts), 1)
    return {"cd/attempts": n_att / n, "cd/retry_rate": n_retry / n, "cd/noticed_rate": n_noticed / max(n_miss, 1),
            "cd/retry_after_noticed": n_noticed_retry / max(n_noticed, 1),
            "cd/step_accuracy": n_right / max(n_steps, 1), "cd/hit_rate": n_hits / max(n_att, 1)}


def gather_rollouts(ro: Rollouts | None) -> Rollouts:
    """Data parallel: every rank's Rollouts (None: a rank with no problems), concatenated in rank order, on every
    rank; with contiguous shares (fsdp.share) that is problem order. Generation tensors travel on the CPU, without
    routing. One process: `ro` as it is. A collective: call it on every rank."""
    if world_size() == 1:
        return ro
    gen = None if ro is None else replace(ro.gen, tokens=ro.gen.tokens.cpu(), logprobs=ro.gen.logprobs.cpu(),
                                          mask=ro.gen.mask.cpu(), routing=None)
    parts = all_gather_objects(None if ro is None else replace(ro, gen=gen))
    return Rollouts.cat([part for part in parts if part is not None])


def evaluate(model, tokenizer, problems, *, template, k: int = 8, temperature: float = 0.6, top_p: float = 0.95,
             max_new_tokens: int = 256, seed: int = 0, n_examples: int = 4, decode_mode: str = "eager") -> dict:
    """pass@1 (mean over k samples), pass@k, cons@k, format rate and behaviour stats on held-out problems.
    Data parallel (torchrun): each rank samples its share of the problems (under fsdp.gathered for a sharded model)
    and every rank scores them all; the numbers do not depend on the number of ranks."""
    lo, hi = share(len(problems))
    ro = rollout(model, tokenizer, problems[lo:hi], template=template, group_size=k, seed=seed, first_index=lo,
                 decode_mode=decode_mode,
                 params=SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p),
                 reward_fn=rule_rewards({"accuracy": 1.0, "format": 1.0}, template)) if hi > lo else None
    ro = gather_rollouts(ro)
    correct = [[c > 0.5 for c in ro.components["accuracy"][i * k:(i + 1) * k]] for i in range(len(problems))]
    cons, cons_by_problem = 0.0, []
    for i, problem in enumerate(problems):
        answers = [template.final_answer(t) for t in ro.texts[i * k:(i + 1) * k]]   # None: no answer, no vote
        # math: equivalent answers (0.5, 1/2) vote together; equations: exact strings. A tie scores the share of
        # the tied answers that are right (scoring.cons_score, as evaluate.py counts it).
        same = {} if problem.kind == "math" else {"same": lambda a, b: a.strip() == b.strip()}
        cons_by_problem.append(cons_score(answers, lambda a, p=problem: grade_answer(a, p) > 0.5, **same))
        cons += cons_by_problem[-1]
    return {
        "pass@1": mean_pass_at_1(correct),
        f"pass@{k}": sum(pass_at_k(k, sum(c), k) for c in correct) / len(correct),
        f"cons@{k}": cons / len(problems),
        "format_rate": sum(ro.components["format"]) / len(ro.texts),
        **{key: v for key, v in behaviour_stats(ro).items() if not key.startswith("reward/")},
        **by_difficulty(ro, correct, cons_by_problem, k),
        "examples": [{"question": problems[i // k].question, "completion": ro.texts[i],
                      "correct": bool(correct[i // k][i % k])} for i in range(0, min(n_examples * k, len(ro.texts)), k)],
    }


def by_difficulty(ro: Rollouts, correct: list[list[bool]], cons: list[float], k: int) -> dict:
    """Countdown problems of several sizes: pass@1, cons@k, length and search behaviour per number of numbers
    ("n3/pass@1", "n4/cd/attempts", ...); {} otherwise."""
    sizes = sorted({len(p.data["numbers"]) for p in ro.problems if p.kind == "countdown"})
    if len(sizes) < 2:
        return {}
    out = {}
    for size in sizes:
        keep = [i for i, p in enumerate(ro.problems) if p.kind == "countdown" and len(p.data["numbers"]) == size]
        part = ro.groups(keep)
        out.update({f"n{size}/pass@1": mean_pass_at_1([correct[i] for i in keep]),
                    f"n{size}/cons@{k}": sum(cons[i] for i in keep) / len(keep),
                    **{f"n{size}/{key}": v for key, v in behaviour_stats(part).items()
                       if key == "mean_length" or key.startswith("cd/")}})
    return out


def _through_first_step(lines: list[str]) -> str:
    """The worked solution up to its first computed line ("3 + 7 = 10"), after any opening sentence."""
    first = next((i for i, line in enumerate(lines) if "=" in line), 0)
    return "\n".join(lines[:first + 1])


def forced_prefixes(task, problems, *, template) -> list[str]:
    """Each problem's forced start of reasoning: the template's response up to the reasoning (R1-Zero: " <think> ")
    and the first line of the worked solution (Countdown: the first step of a solution, "8 * 3 = 24")."""
    marker = "\x00"   # where the reasoning starts in the template's response
    head = template.response(marker, "").split(marker)[0]
    if getattr(task, "kind", None) == "countdown":
        return [head + task.attempt(task.candidates(p)[0][0]).split(", ")[0] for p in problems]
    return [head + _through_first_step(task.worked_solution(p)) for p in problems]


def forced_mode_accuracy(model, tokenizer, task, problems, *, template, max_new_tokens: int = 256) -> float:
    """Accuracy when the completion is forced to start reasoning (forced_prefixes), then decoded greedily. High
    means the base holds a reliable mode RL can select."""
    prefix = forced_prefixes(task, problems, template=template)
    ro = rollout(model, tokenizer, problems, template=template, group_size=1, prefix=prefix,
                 params=SamplingParams(max_new_tokens=max_new_tokens, greedy=True),
                 reward_fn=rule_rewards({"accuracy": 1.0}, template))
    return sum(ro.components["accuracy"]) / len(problems)


WEAK_BASE = 0.5   # forced-mode accuracy below which every R1-Zero run we made from a base collapsed


def weak_base_warning(report: dict) -> str | None:
    """A warning for a base report whose forced-mode accuracy is below WEAK_BASE (None if fine or not measured)."""
    acc = report.get("forced_mode_accuracy")
    if acc is None or acc >= WEAK_BASE:
        return None
    return (f"warning: this base's forced-mode accuracy is {acc:.1%} (< {WEAK_BASE:.0%}): its step-by-step mode is "
            "unreliable, and R1-Zero from such bases collapsed (to guesses, or to steps with wrong numbers) in every "
            "run we made (README, 'How robust the default is'). `python dev/probe_base.py BASE` (arithmetic) shows "
            "whether the skill is missing or did not reach the template; another --seed may give a usable base.")
