"""
Supervised fine-tuning on conversations: R1's cold start (stage 1), its rejection-sampled SFT (stage 3) and the
distillation of small students (sec. 2.3 and 2.4) all train on (question, response) pairs with the loss on the
response only. Pretraining uses the same batching with the loss on every token.

    ids, mask = render(tokenizer, template, question, response)   # one example: token ids + loss mask
    batches   = length_bucketed_batches([len(ids) for ids, _ in examples], batch_size, rng)
    tokens, loss_mask = collate([examples[i] for i in batch], tokenizer.pad_id, device)
    loss, stats = sft_loss(model, tokens, loss_mask)               # next-token cross-entropy on the mask

How an example is laid out: BOS + template.prompt(question) + response + EOS. The prompt and the response are
tokenized separately, exactly as at sampling time (the sampler is given the prompt's ids and generates the rest),
so the model is trained on the token boundary it will meet; joining the texts first could merge characters across
the boundary into tokens the sampler never produces. The loss mask marks the response tokens and the final EOS
(the model must learn to stop); the prompt carries no loss and so no gradient.

Length-bucketed batches: shuffle, then sort by length within windows of `bucket` batches, so each batch holds
similar lengths (less padding, ~3x more steps per second on the tiny corpus), and shuffle the batches.
"""
import random

import torch

import torch.nn.functional as F

import nanor1.model as model_lib
from nanor1.fsdp import all_reduce_sum, world_size
from nanor1.model import lm_loss, right_padded_real
from nanor1.tasks import JsonlFormatError, read_jsonl


def render(tokenizer, template, question: str, response: str) -> tuple[list[int], list[bool]]:
    """(ids, loss_mask) of one conversation: BOS + prompt (no loss) + response + EOS (loss)."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    prompt = bos + tokenizer.encode(template.prompt(question))
    answer = tokenizer.encode(response) + [tokenizer.eos_id]
    return prompt + answer, [False] * len(prompt) + [True] * len(answer)


def render_text(tokenizer, text: str) -> tuple[list[int], list[bool]]:
    """(ids, loss_mask) of a plain document (pretraining): BOS + text + EOS, loss on every token after BOS."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    ids = bos + tokenizer.encode(text) + [tokenizer.eos_id]
    return ids, [True] * len(ids)


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, bucket: int = 16):
    """Batches of example indices: shuffle, sort within windows of `bucket` batches by length, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for w in range(0, len(order), batch_size * bucket):
        window = sorted(order[w:w + batch_size * bucket], key=lambda i: lengths[i])
        batches += [window[b:b + batch_size] for b in range(0, len(window), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[tuple[list[int], list[bool]]], pad_id: int, device=None):
    """Right-pad (ids, loss_mask) pairs to tokens [B, T] long and loss_mask [B, T] bool (False on padding).
    Right padding needs no attention mask: causal attention never looks at the later pad positions."""
    T = max(len(ids) for ids, _ in examples)
    tokens = torch.full((len(examples), T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(len(examples), T, dtype=torch.bool)
    for i, (ids, mask) in enumerate(examples):
        tokens[i, :len(ids)] = torch.tensor(ids)
        loss_mask[i, :len(mask)] = torch.tensor(mask)
    return tokens.to(device), loss_mask.to(device)


MIN_SHARED_PREFIX = 8   # shorter common prefixes are not worth a second forward


def sft_loss(model, tokens, loss_mask, shared_prefix: bool = False):
    """Next-token cross-entropy over the positions whose *target* token is in loss_mask [B, T] (plus the MTP and
    balance losses when the model has them). Returns (loss, stats). With shared_prefix, when every row starts with
    the same tokens (the R1-Zero template's instructions in the pretraining transcripts, a chat template's system
    prompt), the fast path shared_prefix_loss computes the same loss running that prefix once. It is opt-in
    (pretrain.py --shared-prefix): the same gradients within float rounding still make another training trajectory,
    and the default base recipe is sensitive to that (README, "How robust the default is")."""
    P = shared_prefix_len(tokens, loss_mask) if shared_prefix else 0       # (host syncs: only when asked)
    fast = (model_lib.FAST_PATHS and P >= MIN_SHARED_PREFIX and not (model.cfg.n_mtp or model.cfg.balance_loss_alpha))
    if world_size() > 1:   # FSDP gathers weights in every forward: all ranks must run as many (rows differ by rank)
        fast = int(all_reduce_sum(torch.tensor(int(fast), device=tokens.device))) == world_size()
    if fast:
        return shared_prefix_loss(model, tokens, loss_mask, P)
    return lm_loss(model, tokens, loss_mask)


def shared_prefix_len(tokens, loss_mask) -> int:
    """P: how many leading tokens all rows of a right-padded batch share (tokens [B, T]), capped so that every row
    has a real token after them (real = up to each row's last loss position)."""
    if tokens.size(0) < 2:
        return 0
    same = (tokens == tokens[:1]).all(0)                                 # [T]
    P = int(same.long().cumprod(0).sum())
    shortest = int(right_padded_real(loss_mask).sum(1).min())            # real tokens of the shortest row
    return max(0, min(P, shortest - 1))


def shared_prefix_loss(model, tokens, loss_mask, P: int):
    """lm_loss (same loss, gradients and MoE load counts, within float rounding) for rows whose first P tokens are
    identical: the prefix runs once, into a KV cache, and the B rows run only their own columns over it (cache
    entries are part of the autograd graph, so the gradients of all rows flow back through the one prefix pass).
    What the full forward computes B times, and how it is kept the same:
    - the loss at prefix positions 0..P-2 (same logits, same targets): once, weighted by the rows whose target is in
      loss_mask; position P-1 predicts each row's own token P;
    - the MoE load counts: the prefix's tokens are added again for the B-1 other rows.
    Rows are right-padded, as sft.collate makes them (no key mask). ~2x fewer token-rows on the pretraining corpus's
    templated documents, whose ~170 tokens are mostly the template (bench/speed.py)."""
    B, T = tokens.shape
    real = right_padded_real(loss_mask)                                      # [B, T]
    cache = model.new_cache(1, P)
    pre = model(tokens[:1, :P], cache=cache)                                # logits [1, P, V]
    if model.training:  # the other B-1 rows' prefix tokens, as the full forward would count them
        for moe, idx in zip(model.moe_layers(), pre.routing):               # idx [1, P, K]
            moe.gate.load.index_add_(0, idx.flatten(), torch.full_like(idx.flatten(), B - 1, dtype=moe.gate.load.dtype))
    cache = [{k: c.expand(B, *c.shape[1:]) for k, c in layer.items()} for layer in cache]   # [B, P, ...] views
    rest = model(tokens[:, P:], cache=cache, start=P, real=real[:, P:])      # logits [B, T-P, V]
    target_mask = loss_mask[:, 1:].float()                                   # [B, T-1]
    ce_prefix = F.cross_entropy(pre.logits[0, :P - 1].float(), tokens[0, 1:P], reduction="none")          # [P-1]
    ce_boundary = F.cross_entropy(pre.logits[0, P - 1:].float().expand(B, -1), tokens[:, P], reduction="none")  # [B]
    ce_rest = F.cross_entropy(rest.logits[:, :-1].flatten(0, 1).float(), tokens[:, P + 1:].flatten(),
                              reduction="none").view(B, T - P - 1)           # [B, T-P-1]
    total = ((ce_prefix * target_mask[:, :P - 1].sum(0)).sum() + (ce_boundary * target_mask[:, P - 1]).sum()
             + (ce_rest * target_mask[:, P:]).sum())
    lm = total / target_mask.sum().clamp(min=1)
    return lm, {"lm_loss": lm.item()}


def load_conversations(path) -> list[dict]:
    """{"question", "response", ...} records from a JSONL file (what train_r1.py's stages write and distill.py
    reads); errors name file:line."""
    records = []
    for where, record in read_jsonl(path):
        if not (isinstance(record.get("question"), str) and isinstance(record.get("response"), str)):
            raise JsonlFormatError(f"{where}: expected an object with string 'question' and 'response'")
        records.append(record)
    if not records:
        raise JsonlFormatError(f"{path}: no conversations")
    return records


if __name__ == "__main__":
    # python -m nanor1.sft: render one R1-format conversation and show which tokens carry the loss
    from nanor1.templates import get_template
    from nanor1.tokenizer import train_bpe
    template = get_template("r1")
    response = template.response("3 + 7 = 10\n10 + 5 = 15", "15")
    tok = train_bpe([template.prompt("3 + 7 + 5") + response] * 20, vocab_size=300)
    ids, mask = render(tok, template, "3 + 7 + 5", response)
    print("".join(f"[{tok.decode([i])}]" if m else tok.decode([i]) for i, m in zip(ids, mask)))
