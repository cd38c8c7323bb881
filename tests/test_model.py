"""The model against itself: fast paths equal the plain paths, presets match the published sizes, it learns."""
import pytest
import torch

import nanor1.model as nanor1_model
from nanor1.model import ModelConfig, Transformer, get_config, lm_loss

torch.set_num_threads(1)


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(get_config("tiny", **overrides)).eval()


MOE_MLA = dict(q_lora_rank=32, n_routed_experts=8, n_expert_groups=4, n_limited_groups=2, n_activated_experts=3)
DENSE_GQA = dict(attn="gqa", n_kv_heads=2, head_dim=32, qkv_bias=True, n_routed_experts=0)


@pytest.mark.parametrize("name, total, active", [
    ("deepseek-v3", 671e9, 37e9),       # V3 paper: 671B total, 37B activated per token
    ("deepseek-v2-lite", 15.7e9, 2.4e9),  # V2 paper: 15.7B total, 2.4B activated
    ("qwen2.5-0.5b", 0.494e9, 0.494e9),  # Qwen2.5 card: 0.49B (494,032,768 in the HF weights)
])
def test_preset_parameter_counts(name, total, active):
    with torch.device("meta"):
        counts = Transformer(get_config(name)).num_params()
    assert counts["total_params"] == pytest.approx(total, rel=0.005)
    assert counts["active_params"] == pytest.approx(active, rel=0.03)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="n_layer"):
        ModelConfig.from_dict({"n_layer": 2})
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("gpt-5")


@pytest.mark.parametrize("q_lora_rank", [0, 32])
def test_absorbed_mla_equals_naive(q_lora_rank):
    model = make(q_lora_rank=q_lora_rank)
    x = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        naive = model(x).logits
        absorbed = model(x, cache=model.new_cache(2, 17), absorb=True).logits
    torch.testing.assert_close(absorbed, naive, atol=1e-5, rtol=1e-5)


def test_batched_experts_equal_loop():
    model = make(**MOE_MLA)
    x = torch.randint(0, 512, (3, 11))
    with torch.no_grad():
        batched = model(x).logits
        for moe in model.moe_layers():
            moe.batched = False
        loop = model(x).logits
    torch.testing.assert_close(batched, loop, atol=1e-6, rtol=1e-6)


def test_grouped_mm_paths_equal_per_expert_matmuls(monkeypatch):
    """F.grouped_mm (bf16 inference) and the padded bmm (fp32, or when a gradient is needed) both equal one matmul per
    expert."""
    from nanor1.model import grouped_mm
    torch.manual_seed(0)
    counts = torch.tensor([3, 0, 5, 1, 0, 2])                                 # empty experts included
    x, w = torch.randn(int(counts.sum()), 16).bfloat16(), torch.randn(6, 16, 8).bfloat16()
    ref = torch.cat([xe.float() @ w[e].float() for e, xe in enumerate(x.split(counts.tolist()))])
    calls = []
    real = torch.nn.functional.grouped_mm
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        fused = grouped_mm(x, w, counts)
    padded = grouped_mm(x, w.requires_grad_(), counts)
    assert len(calls) == 1                                                    # the fused path ran once, for `fused`
    for out in (fused, padded, grouped_mm(x.float(), w.float(), counts)):
        torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("fast", [True, False], ids=["cpu-blocks", "padded-bmm"])
def test_batched_experts_gradients_equal_loop(fast, monkeypatch):
    monkeypatch.setattr(nanor1_model, "FAST_PATHS", fast)
    model = make(**MOE_MLA)
    moe = model.moe_layers()[0]
    x = torch.randn(40, model.cfg.dim)
    w, idx, _ = moe.gate(x)
    grads = []
    for path in (moe.experts_loop, moe.experts_batched):
        moe.zero_grad()
        path(x, w.detach(), idx).square().sum().backward()
        grads.append([p.grad.clone() for p in (moe.w1, moe.w2, moe.w3)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_tokens", [1, 5, 32])
def test_dense_experts_equal_loop_and_decode_uses_them(n_tokens, monkeypatch):
    """Every expert on every token, weighted by the router, == the per-expert loop; a no-grad CPU forward of a few
    tokens takes that path, and the padded path (FAST_PATHS off) agrees."""
    model = make(**MOE_MLA)
    moe = model.moe_layers()[0]
    x = torch.randn(n_tokens, model.cfg.dim)
    with torch.no_grad():
        w, idx, _ = moe.gate(x)
        torch.testing.assert_close(moe.experts_dense(x, w, idx), moe.experts_loop(x, w, idx), atol=1e-6, rtol=1e-5)
        calls = []
        monkeypatch.setattr(moe, "experts_dense", lambda *a: calls.append(1) or type(moe).experts_dense(moe, *a))
        fast = moe(x[None])[0]
        monkeypatch.setattr(nanor1_model, "FAST_PATHS", False)
        plain = moe(x[None])[0]
    assert calls == [1]
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "left-padded"])
def test_fast_attention_equals_plain_path(padded, monkeypatch):
    """MLA with v padded to the q/k head dim (SDPA's fused CPU kernel) and is_causal instead of a mask == the plain
    path (math kernel, explicit mask): logits and gradients; MTP included."""
    results = []
    for fast in (True, False):
        monkeypatch.setattr(nanor1_model, "FAST_PATHS", fast)
        model = make(**MOE_MLA, n_mtp=1).train()
        x = torch.randint(1, 512, (3, 13))
        kw = {}
        if padded:
            kw = dict(key_mask=torch.arange(13)[None] >= torch.tensor([[0], [3], [5]]))
            kw["pos"] = (torch.arange(13)[None] - torch.tensor([[0], [3], [5]])).clamp(min=0)
        loss, _ = lm_loss(model, x, torch.ones_like(x), **kw)
        loss.backward()
        results.append((model(x, **kw).logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=2e-5, rtol=1e-5)
    for name, g in results[1][1].items():
        assert (results[0][1][name] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-8, name


def test_group_limited_routing_only_picks_kept_groups():
    model = make(**MOE_MLA)
    gate = model.moe_layers()[0].gate
    gate.bias.normal_(0, 0.5)
    x = torch.randn(64, model.cfg.dim)
    _, idx, scores = gate(x)
    cfg = model.cfg
    biased = (scores + gate.bias).view(64, cfg.n_expert_groups, -1)
    kept = biased.topk(2, dim=-1).values.sum(-1).topk(cfg.n_limited_groups, dim=-1).indices  # [N, kept groups]
    group_of = idx // (cfg.n_routed_experts // cfg.n_expert_groups)                         # [N, K]
    assert (group_of.unsqueeze(-1) == kept.unsqueeze(1)).any(-1).all()


@pytest.mark.parametrize("overrides", [MOE_MLA, DENSE_GQA], ids=["mla-moe", "gqa-dense"])
def test_cached_decode_equals_full_forward(overrides):
    model = make(**overrides)
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 16)
        steps = [model(x[:, :9], cache=cache).logits]
        steps += [model(x[:, t:t + 1], cache=cache, start=t).logits for t in range(9, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [MOE_MLA, DENSE_GQA], ids=["mla-moe", "gqa-dense"])
def test_left_padding_with_positions_matches_unpadded(overrides):
    model = make(**overrides)
    x = torch.randint(1, 512, (1, 10))
    pad = 5
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], dim=1)
    key_mask = torch.arange(pad + 10)[None] >= pad
    pos = (torch.arange(pad + 10) - pad).clamp(min=0)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(padded, pos=pos, key_mask=key_mask).logits[:, pad:], model(x).logits, atol=1e-5, rtol=1e-5)


def test_routing_replay_reproduces_logits_and_changes_them_when_altered():
    model = make(**MOE_MLA)
    x = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model(x, routing=out.routing).logits, out.logits)
        other = [(r + 1) % model.cfg.n_routed_experts for r in out.routing]
        assert not torch.allclose(model(x, routing=other).logits, out.logits)


def _loads(model):
    return torch.stack([m.gate.load.clone() for m in model.moe_layers() + [b.ffn for b in
                        (mtp.block for mtp in model.mtp)]])


@pytest.mark.parametrize("n_mtp", [0, 1])
def test_moe_load_counts_ignore_padding(n_mtp):
    """The routing-bias update follows Gate.load: padding must not count, or the same data padded differently (another
    batch layout, another data-parallel rank's rows) moves the biases differently. Right-padded rows through lm_loss
    and left-padded rows with a key_mask count exactly what the rows count run one by one without padding."""
    model = make(n_mtp=n_mtp).train()
    rows = [torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 9, 12)]
    T = max(map(len, rows))

    def reset():
        for m in model.modules():
            if isinstance(m, nanor1_model.Gate):
                m.load.zero_()

    reset()
    for r in rows:                                              # the reference: no padding anywhere
        lm_loss(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.bool))
    unpadded = _loads(model)
    assert unpadded.sum() > 0
    reset()
    tokens = torch.tensor([r + [0] * (T - len(r)) for r in rows])             # right padding, as sft.collate
    mask = torch.tensor([[i < len(r) for i in range(T)] for r in rows])
    lm_loss(model, tokens, mask)
    torch.testing.assert_close(_loads(model), unpadded, atol=0, rtol=0)
    reset()
    tokens = torch.tensor([[0] * (T - len(r)) + r for r in rows])             # left padding, as the sampler
    key_mask = torch.tensor([[i >= T - len(r) for i in range(T)] for r in rows])
    pos = (key_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        model(tokens, pos=pos, key_mask=key_mask)
    torch.testing.assert_close(_loads(model)[:len(model.moe_layers())], unpadded[:len(model.moe_layers())],
                               atol=0, rtol=0)


def test_routing_bias_update_moves_skewed_load_toward_uniform():
    model = make(n_routed_experts=8, n_activated_experts=2, n_dense_layers=0, n_layers=1)
    gate = model.moe_layers()[0].gate
    with torch.no_grad():
        gate.weight[0] += 1.0  # make expert 0 attractive to every token: a skewed load
    model.train()
    x = torch.randint(0, 512, (8, 32))

    def imbalance():
        with torch.no_grad():
            model(x)
        load = gate.load.clone()
        return (load.max() / load.mean()).item(), load

    before, load = imbalance()
    model.update_routing_bias(0.0)  # only resets the counts
    for _ in range(200):
        with torch.no_grad():
            model(x)
        model.update_routing_bias(0.01)
    after, _ = imbalance()
    assert before > 1.5 and after < 1.25 and after < before - 0.4, (before, after)
    assert gate.bias[0] < 0  # the overloaded expert's bias went down


def test_yarn_only_when_context_is_extended():
    plain = Transformer(get_config("tiny", max_seq_len=64, original_seq_len=64))
    yarn = Transformer(get_config("tiny", max_seq_len=256, original_seq_len=64, rope_factor=4.0))
    n = 64
    # high frequencies (first pairs) are kept, low frequencies are interpolated by rope_factor
    torch.testing.assert_close(yarn.cos[:n, 0], plain.cos[:n, 0])
    assert not torch.allclose(yarn.cos[:n, -1], plain.cos[:n, -1])
    assert yarn.layers[0].attn.scale > plain.layers[0].attn.scale


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", n_mtp=1, balance_loss_alpha=1e-3)).train()
    x = torch.randint(0, 512, (4, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, stats = lm_loss(model, x, torch.ones_like(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_routing_bias(1e-3)
        first = first or stats["lm_loss"]
    assert stats["lm_loss"] < first / 10, (first, stats)
    assert "mtp_loss" in stats and stats["mtp_loss"] < first / 5


def test_rope_tables_stay_float32_when_the_model_is_cast():
    model = make().to(torch.bfloat16)
    assert model.cos.dtype == model.sin.dtype == torch.float32 and model.embed.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.cos, make().cos, atol=0, rtol=0)



def test_decode_fast_paths_equal_plain_exactly(monkeypatch):
    """rope_pairs + apply_rope's pair path, RMSNorm in one op, and the T == 1 decode mask give the plain paths'
    numbers exactly (same products and sums), so no sampled token can move."""
    from nanor1.model import RMSNorm, apply_rope, attention_mask, rope_pairs
    torch.manual_seed(0)
    x, ang = torch.randn(3, 5, 4, 16), torch.rand(3, 5, 8) * 6
    assert torch.equal(apply_rope(x, *rope_pairs(ang.cos(), ang.sin())), apply_rope(x, ang.cos(), ang.sin()))
    norm = RMSNorm(16)
    norm.weight.data.uniform_(0.5, 1.5)
    fast = norm(x)
    key_mask = torch.rand(3, 12) > 0.4
    fast_mask = attention_mask(key_mask, 7, 1)
    monkeypatch.setattr(nanor1_model, "FAST_PATHS", False)
    assert torch.equal(fast, norm(x))
    assert torch.equal(fast_mask, attention_mask(key_mask, 7, 1))


def test_fused_qkv_equals_separate_projections():
    """Inside fused_qkv, a no-grad GQA forward (one q/k/v matmul, one rotation) matches the separate projections;
    with autograd on it uses the parameters (gradients reach wq, wk, wv); outside, the fused copy is gone."""
    from nanor1.model import fused_qkv
    model = make(**DENSE_GQA)
    x = torch.randint(1, 512, (2, 9))
    with torch.no_grad():
        plain = model(x).logits
        with fused_qkv(model):
            assert all(b.attn.wqkv is not None for b in model.layers)
            fused = model(x).logits
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    with fused_qkv(model):
        model(x).logits.sum().backward()
    assert model.layers[0].attn.wk.weight.grad is not None
    assert all(b.attn.wqkv is None for b in model.layers)


@pytest.mark.parametrize("overrides", [dict(), MOE_MLA | dict(max_seq_len=1024, original_seq_len=256, route_scale=2.5),
                                       DENSE_GQA, dict(DENSE_GQA, n_heads=8)],
                         ids=["mla-moe", "mla-qlora-groups-yarn", "gqa-bias", "gqa-4-queries-per-kv"])
@pytest.mark.parametrize("rows", [1, 5, 40])  # 40 > DENSE_EXPERTS_MAX_TOKENS: the sparse expert path
def test_decoder_step_equals_forward(overrides, rows):
    """model.Decoder (the sampler's CPU decode step) gives forward's logits, cache writes and expert choices, step
    after step, on left-padded rows with their own positions; weights and routing biases away from their init."""
    from nanor1.model import Decoder
    model = make(**overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for moe in model.moe_layers():
            moe.gate.bias.normal_(0, 0.1)
    P, S = 7, 14
    key_mask = torch.ones(rows, S, dtype=torch.bool)
    key_mask[0, :3] = False                                                   # row 0 left-padded by 3
    key_mask[-1, P + 2] = False               # a query slot marked padding still sees itself (attention_mask)
    pos = torch.arange(P).expand(rows, P).clone()
    pos[0] = (torch.arange(P) - 3).clamp(min=0)
    prompt = torch.randint(1, 512, (rows, P))
    ref_cache, dec_cache = model.new_cache(rows, S), model.new_cache(rows, S)
    with torch.no_grad():
        model(prompt, pos=pos, key_mask=key_mask, cache=ref_cache)
        model(prompt, pos=pos, key_mask=key_mask, cache=dec_cache)
        decoder = Decoder(model)
        p = pos[:, -1]
        for start in range(P, S):
            tok, p = torch.randint(1, 512, (rows,)), p + 1
            ref = model(tok[:, None], pos=p[:, None], key_mask=key_mask, cache=ref_cache, start=start, last_only=True)
            logits, routing = decoder.step(tok, p, key_mask, dec_cache, start)
            torch.testing.assert_close(logits, ref.logits[:, -1], atol=2e-5, rtol=1e-5)
            assert len(routing) == len(ref.routing)
            for r, want in zip(routing, ref.routing):
                assert torch.equal(r, want[:, 0])
    for got, want in zip(dec_cache, ref_cache):
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=2e-5, rtol=1e-5)
