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

from nanor1.model import lm_loss
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


def sft_loss(model, tokens, loss_mask):
    """Next-token cross-entropy over the positions whose *target* token is in loss_mask [B, T] (plus the MTP and
    balance losses when the model has them). Returns (loss, stats)."""
    return lm_loss(model, tokens, loss_mask)


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
