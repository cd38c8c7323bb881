"""SFT: an R1-format conversation renders with the loss on the response only (no loss and no gradient from the
prompt), batches are length-bucketed, and a few examples are learned."""
import random

import pytest
import torch

from nanor1.model import Transformer, get_config
from nanor1.sft import collate, length_bucketed_batches, load_conversations, render, sft_loss
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe

R1 = get_template("r1")
QUESTIONS = ["3 + 7 + 5", "2 + 9 + 4", "8 + 1 + 6", "4 + 5 + 7"]


def response(q):
    a, b, c = (int(x) for x in q.split(" + "))
    return R1.response(f"{a} + {b} = {a + b}\n{a + b} + {c} = {a + b + c}", str(a + b + c))


@pytest.fixture(scope="module")
def tok():
    return train_bpe([R1.prompt(q) + response(q) for q in QUESTIONS] * 10, vocab_size=300)


def tiny(vocab_size):
    torch.manual_seed(0)
    return Transformer(get_config("tiny", vocab_size=vocab_size, dim=64, n_layers=2, kv_lora_rank=32,
                                  inter_dim=128, moe_inter_dim=32, max_seq_len=128))


def test_render_masks_the_prompt(tok):
    ids, mask = render(tok, R1, QUESTIONS[0], response(QUESTIONS[0]))
    n_prompt = mask.index(True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and mask[-1]
    assert tok.decode(ids[1:n_prompt]) == R1.prompt(QUESTIONS[0])                # the prompt: no loss
    assert tok.decode(ids[n_prompt:-1]) == response(QUESTIONS[0])                # the response (+ EOS): loss
    assert all(mask[n_prompt:]) and not any(mask[:n_prompt])
    assert ids[1:n_prompt] == tok.encode(R1.prompt(QUESTIONS[0]))                # tokenized as the sampler sees it


def test_prompt_tokens_get_no_loss_and_no_gradient(tok):
    model = tiny(tok.vocab_size)
    tokens, loss_mask = collate([render(tok, R1, q, response(q)) for q in QUESTIONS[:2]], tok.pad_id)
    seen = {}

    def keep(module, inputs, out):
        out.retain_grad()
        seen["logits"] = out
    model.head.register_forward_hook(keep)
    loss, _ = sft_loss(model, tokens, loss_mask)
    loss.backward()
    logits, grad = seen["logits"], seen["logits"].grad                 # [B, T, V] and d loss / d logits
    scored = loss_mask[:, 1:]                                          # column t predicts token t + 1
    assert grad[:, :-1][~scored].abs().max() == 0                      # prompt and padding targets: no gradient
    assert (grad[:, :-1][scored].abs().amax(-1) > 0).all()             # every response target has one
    # the loss is the mean cross-entropy of the response targets alone
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][scored].detach(), tokens[:, 1:][scored])
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)


def test_sft_overfits_a_handful(tok):
    model = tiny(tok.vocab_size)
    examples = [render(tok, R1, q, response(q)) for q in QUESTIONS]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens, loss_mask = collate(examples, tok.pad_id)
    first = None
    for _ in range(120):
        loss, _ = sft_loss(model, tokens, loss_mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


def test_length_buckets_cover_every_example_once():
    lengths = [random.Random(i).randint(5, 100) for i in range(300)]
    batches = length_bucketed_batches(lengths, 16, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(300))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 20                                                  # similar lengths within a batch


def test_load_conversations_errors(tmp_path):
    f = tmp_path / "mix.jsonl"
    f.write_text('{"question": "q", "response": "r"}\n\n{"question": "q"}\n')
    with pytest.raises(ValueError, match="mix.jsonl:3"):
        load_conversations(f)
    f.write_text("")
    with pytest.raises(ValueError, match="no conversations"):
        load_conversations(f)
