"""
Reward models for R1's last stage (paper sec. 2.3.4): for general prompts, where no rule can check an answer, a
neural model scores the response, trained on human preferences. R1 uses two:
  helpfulness   scores the *summary only* ("the utility and relevance of the response to the user while minimizing
                interference with the underlying reasoning process")
  harmlessness  scores the *whole response*, reasoning included ("to identify and mitigate any potential risks ...
                that may arise during the generation process")

    rm = RewardModel(backbone, aspect="helpfulness")      # backbone: a nanor1.model.Transformer (e.g. the SFT model)
    tokens, lengths = encode(tokenizer, template, questions, completions, aspect, device)
    scores = rm(tokens, lengths)                           # [B] one scalar per (question, response)
    loss = bradley_terry_loss(rm(*chosen), rm(*rejected))  # -log sigmoid(r_chosen - r_rejected)

The model: the transformer's final-normed hidden state at the last real token (the EOS that closes the response:
with right padding and causal attention it has read everything and no padding), through a linear head to one
number (InstructGPT / the Bradley-Terry reward models most RLHF stacks train). The head starts at zero, so every
response scores 0 before training.

What each aspect reads (`view`): helpfulness sees BOS + prompt + summary (template.summary: the text after
</think>), so changing only the reasoning cannot change its score, by construction; harmlessness sees BOS + prompt +
the completion. Deviation from the paper: its preference data are human judgements over real prompts; ours are
generated from nanor1.tasks.GeneralTask (reference vs. a corrupted answer; a response that leaks a private code vs.
one that does not) and the reward models are judged on pairs of held-out prompts.

Shapes: B responses (pairs: B chosen + B rejected), T tokens, D model width.
"""
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanor1 import checkpoint
from nanor1.sft import collate, render
from nanor1.training import autocast, clip_grad

ASPECTS = ("helpfulness", "harmlessness")


def view(completion: str, aspect: str, template) -> str:
    """The text an aspect's reward model reads: helpfulness the summary only (empty while the thinking block is
    open), harmlessness the whole completion."""
    if aspect == "helpfulness":
        return template.summary(completion) or ""
    if aspect == "harmlessness":
        return completion
    raise ValueError(f"aspect must be one of {ASPECTS}, got {aspect!r}")


def encode(tokenizer, template, questions: list[str], completions: list[str], aspect: str, device=None):
    """(tokens [B, T] right-padded, lengths [B]) of BOS + prompt + view(completion) + EOS per response."""
    examples = [render(tokenizer, template, q, view(c, aspect, template)) for q, c in zip(questions, completions)]
    tokens, _ = collate(examples, tokenizer.pad_id, device)
    return tokens, torch.tensor([len(ids) for ids, _ in examples], device=tokens.device)


class RewardModel(nn.Module):
    """A Transformer with a scalar head on the last real token's final hidden state."""

    def __init__(self, backbone, aspect: str):
        super().__init__()
        if aspect not in ASPECTS:
            raise ValueError(f"aspect must be one of {ASPECTS}, got {aspect!r}")
        self.backbone, self.aspect = backbone, aspect
        self.head = nn.Linear(backbone.cfg.dim, 1, device=backbone.embed.weight.device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens, lengths):
        """tokens [B, T] (right-padded), lengths [B] real tokens per row -> scores [B]."""
        if lengths.min() < 1 or lengths.max() > tokens.size(1):
            raise ValueError(f"lengths must be in 1..{tokens.size(1)}, got {lengths.tolist()}")
        h = self.backbone(tokens).hidden                                             # [B, T, D] (before the norm)
        last = self.backbone.norm(h[torch.arange(tokens.size(0), device=tokens.device), lengths - 1])  # [B, D]
        return self.head(last.float()).squeeze(-1)                                   # [B]


def bradley_terry_loss(chosen, rejected):
    """-log P(chosen > rejected) under Bradley-Terry, P = sigmoid(r_c - r_r); chosen, rejected [B] -> scalar."""
    return -F.logsigmoid(chosen - rejected).mean()


@torch.no_grad()
def score(rm: RewardModel, tokenizer, template, questions: list[str], completions: list[str],
          batch_size: int = 64) -> list[float]:
    """The reward model's score of each (question, completion), read through its aspect's view."""
    if len(questions) != len(completions):
        raise ValueError(f"{len(questions)} questions but {len(completions)} completions")
    was_training, device, out = rm.training, rm.head.weight.device, []
    rm.eval()
    for i in range(0, len(questions), batch_size):
        tokens, lengths = encode(tokenizer, template, questions[i:i + batch_size], completions[i:i + batch_size],
                                 rm.aspect, device)
        with autocast(device):
            out += rm(tokens, lengths).float().tolist()
    rm.train(was_training)
    return out


def pairwise_accuracy(rm, tokenizer, template, pairs: list[tuple[str, str, str]]) -> float:
    """Share of (question, chosen, rejected) pairs the model ranks right (a tie counts as wrong)."""
    questions = [q for q, _, _ in pairs]
    chosen = score(rm, tokenizer, template, questions, [c for _, c, _ in pairs])
    rejected = score(rm, tokenizer, template, questions, [r for _, _, r in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def train_step(rm, optimizer, tokenizer, template, pairs, grad_clip: float = 1.0) -> dict:
    """One optimizer step of the Bradley-Terry loss on a batch of (question, chosen, rejected) pairs."""
    device = rm.head.weight.device
    questions = [q for q, _, _ in pairs] * 2
    tokens, lengths = encode(tokenizer, template, questions, [c for _, c, _ in pairs] + [r for _, _, r in pairs],
                             rm.aspect, device)                                      # [2B, T]: chosen, then rejected
    rm.train()
    with autocast(device):
        scores = rm(tokens, lengths)                                                 # [2B]
    chosen, rejected = scores.float().chunk(2)
    loss = bradley_terry_loss(chosen, rejected)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_grad(rm, grad_clip)
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "accuracy": (chosen > rejected).float().mean().item(), "grad_norm": norm,
            "margin": (chosen - rejected).mean().item()}


def batches(pairs: list, batch_size: int, steps: int, seed: int):
    """`steps` batches of pairs, epochs reshuffled (a data position fixed by (seed, step))."""
    order, epoch = [], 0
    for _ in range(steps):
        if len(order) < batch_size:
            rest = list(range(len(pairs)))
            random.Random(f"{seed}-{epoch}").shuffle(rest)
            order, epoch = order + rest, epoch + 1
        yield [pairs[i] for i in order[:batch_size]]
        order = order[batch_size:]


def save(folder, rm: RewardModel, tokenizer=None, extra: dict | None = None) -> None:
    """A nanor1 checkpoint of the backbone, the head (D + 1 floats) and the aspect in its extra.json."""
    head = {"aspect": rm.aspect, "weight": rm.head.weight.detach().flatten().cpu().tolist(),
            "bias": rm.head.bias.item()}
    checkpoint.save(folder, rm.backbone, tokenizer=tokenizer, extra={**(extra or {}), "reward_model": head})


def load(folder, device="cpu") -> tuple[RewardModel, object]:
    """(RewardModel, tokenizer) saved by `save`."""
    extra = checkpoint.read_extra(folder) or {}
    if "reward_model" not in extra:
        raise ValueError(f"{folder} is not a reward model (no 'reward_model' in its extra.json)")
    head = extra["reward_model"]
    backbone, tokenizer, _ = checkpoint.load(folder, device=device)
    rm = RewardModel(backbone, head["aspect"])
    with torch.no_grad():
        rm.head.weight.copy_(torch.tensor(head["weight"]).view_as(rm.head.weight))
        rm.head.bias.fill_(head["bias"])
    return rm, tokenizer
