"""SFT: an R1-format conversation renders with the loss on the response only (no loss and no gradient from the
prompt), batches are length-bucketed, and a few examples are learned."""
import random
from functools import partial

import pytest
import torch

import nanor1.model as model_lib
from nanor1.model import Transformer, get_config, lm_loss
from nanor1.sft import (collate, length_bucketed_batches, load_conversations, render, render_text, shared_prefix_len,
                        sft_loss)
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


def test_prompt_tokens_get_no_loss_and_no_gradient(tok, monkeypatch):
    monkeypatch.setattr(model_lib, "FAST_PATHS", False)      # one forward, so one logits tensor to look at
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


def _loss_grads_loads(model, fn, tokens, mask):
    model.zero_grad()
    for moe in model.moe_layers():
        moe.gate.load.zero_()
    loss, stats = fn(model, tokens, mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), stats, grads, [moe.gate.load.clone() for moe in model.moe_layers()]


@pytest.mark.parametrize("arch", ["moe-mla", "dense-gqa"])
@pytest.mark.parametrize("kind", ["pretraining", "sft"])
def test_shared_prefix_loss_equals_the_full_forward(tok, arch, kind):
    """sft_loss's fast path (the rows' common prefix run once) == lm_loss's one full forward: the loss, every
    gradient, and the MoE load counts (padding excluded); on right-padded rows of different lengths, with the loss on
    every token (pretraining) or on the responses only (SFT)."""
    model = tiny(tok.vocab_size) if arch == "moe-mla" else Transformer(get_config(
        "tiny", vocab_size=tok.vocab_size, dim=64, n_layers=2, attn="gqa", n_kv_heads=2, head_dim=16,
        n_routed_experts=0, max_seq_len=128))
    model.train()
    replies = ["3 + 7 = 10", "2 + 9 = 11\n11 + 4 = 15\n15 + 1 = 16", "8", "4 + 5 = 9\n9 + 7 = 16\n16 + 9 = 25"]
    pairs = [(f"question {i}", R1.response(r, r[-2:])) for i, r in enumerate(replies)]
    if kind == "pretraining":
        examples = [render_text(tok, R1.prompt(q) + r) for q, r in pairs]
    else:
        examples = [render(tok, R1, q, r) for q, r in pairs]
    tokens, mask = collate(examples, tok.pad_id)
    P = shared_prefix_len(tokens, mask)
    assert P >= 8 and len({len(ids) for ids, _ in examples}) == 4        # a real shared prefix; ragged rows
    plain = _loss_grads_loads(model, lm_loss, tokens, mask)
    fast = _loss_grads_loads(model, partial(sft_loss, shared_prefix=True), tokens, mask)
    assert fast[0] == pytest.approx(plain[0], rel=1e-6) and fast[1]["lm_loss"] == pytest.approx(plain[0], rel=1e-6)
    assert plain[2].keys() == fast[2].keys()
    for name, g in plain[2].items():
        torch.testing.assert_close(fast[2][name], g, atol=1e-6, rtol=1e-4, msg=name)
    for a, b in zip(fast[3], plain[3]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert sum(load.sum() for load in plain[3]) > 0 or arch == "dense-gqa"


def test_shared_prefix_len():
    t = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 3, 5, 6], [1, 2, 9, 9, 9]])
    m = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert shared_prefix_len(t, m) == 2
    assert shared_prefix_len(t[:2], m[:2]) == 3
    assert shared_prefix_len(t[:1], m[:1]) == 0                                  # one row: nothing to share
    same = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0]])                             # identical rows: keep a token
    assert shared_prefix_len(same, torch.tensor([[1, 1, 1, 0]] * 2, dtype=torch.bool)) == 2


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
