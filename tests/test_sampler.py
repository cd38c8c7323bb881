"""Sampler tests on tiny CPU models: an MLA + MoE model (DeepSeek-V3 shaped) and a dense GQA model (a student)."""
import pytest
import torch

from nanor1.model import Transformer, get_config
from nanor1.sampler import (SamplingParams, StopStrings, generate, group_token_logprobs, kv_bytes_per_token, pack,
                            sample, token_logprobs)

SAMPLING = {"max_new_tokens", "temperature", "top_p", "top_k", "greedy", "stop_strings"}


def gen(model, prompts, eos_id=None, **kw):
    """generate() with the SamplingParams fields passed as keywords (eos_id: the stop token ids)."""
    params = SamplingParams(**{k: kw.pop(k) for k in list(kw) if k in SAMPLING},
                            stop_ids=() if eos_id is None else eos_id)
    return generate(model, prompts, params, **kw)


CONFIGS = {"mla_moe": dict(), "gqa_dense": dict(attn="gqa", n_routed_experts=0, n_kv_heads=2)}
PROMPTS = [[5, 17, 33, 2], [9], [40, 41, 42, 43, 44, 45, 46, 47, 48], [3, 100]]


def make_model(kind, seed=0):
    torch.manual_seed(seed)
    return Transformer(get_config("tiny", **CONFIGS[kind])).eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return make_model(request.param)


def greedy_by_recompute(model, prompt, n):
    """The reference: no cache, no padding, the whole sequence re-run for every new token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_greedy_cached_equals_recompute(model):
    ro = gen(model, PROMPTS, max_new_tokens=10, greedy=True)
    assert ro.tokens.shape == (len(PROMPTS), 10) and ro.mask.all()
    for row, p in zip(ro.tokens.tolist(), PROMPTS):
        assert row == greedy_by_recompute(model, p, 10)
    assert ro.finish_reason == ["length"] * len(PROMPTS)


def test_padding_invariance(model):
    p = PROMPTS[0]
    alone = gen(model, [p], max_new_tokens=10, greedy=True)
    mixed = gen(model, [PROMPTS[2], p, PROMPTS[1]], max_new_tokens=10, greedy=True)  # longer and shorter
    assert mixed.tokens[1].tolist() == alone.tokens[0].tolist()
    torch.testing.assert_close(mixed.logprobs[1], alone.logprobs[0], atol=1e-5, rtol=0)
    # sampled: with one seed per prompt a row's samples do not depend on its batch
    alone = gen(model, [p], max_new_tokens=10, seed=[7], temperature=0.8)
    mixed = gen(model, [PROMPTS[2], p, PROMPTS[1]], max_new_tokens=10, seed=[3, 7, 5], temperature=0.8)
    assert mixed.tokens[1].tolist() == alone.tokens[0].tolist()


def test_group_prefill_equals_separate_prefills(model):
    a, b = PROMPTS[0], PROMPTS[2]
    grouped = gen(model, [a, b], max_new_tokens=8, greedy=True, group_size=3)
    separate = gen(model, [a, a, a, b, b, b], max_new_tokens=8, greedy=True)
    assert grouped.prompts == [a, a, a, b, b, b]                             # prompt-major rows
    assert grouped.tokens.tolist() == separate.tokens.tolist()
    torch.testing.assert_close(grouped.logprobs, separate.logprobs, atol=1e-5, rtol=0)
    # sampled: the G rows of a group share the prompt but not the noise
    ro = gen(model, [a], max_new_tokens=8, group_size=4, seed=0)
    assert len({tuple(r) for r in ro.tokens.tolist()}) > 1


def test_sampler_logprobs_equal_trainer_forward(model):
    kw = dict(max_new_tokens=12, temperature=0.7, group_size=2, seed=1, record_routing=True)
    free = gen(model, PROMPTS, **kw)
    ro = gen(model, PROMPTS, eos_id=[free.tokens[0, 2].item(), free.tokens[5, 6].item()], **kw)  # same draws
    assert ro.mask[0].sum() <= 3 and ro.mask[5].sum() <= 7 and ro.mask.sum(1).max() == 12  # ragged lengths
    batch = pack(ro.prompts, ro.tokens, ro.mask)
    logp = token_logprobs(model, batch, ro.temperature)
    torch.testing.assert_close(logp, ro.logprobs, atol=1e-5, rtol=0)
    assert (logp[~ro.mask] == 0).all()
    logp2, entropy = token_logprobs(model, batch, ro.temperature, with_entropy=True)
    probs = (model(batch.tokens[:, :-1], pos=batch.pos[:, :-1], key_mask=batch.key_mask[:, :-1]).logits[:, -12:]
             / ro.temperature).softmax(-1)                                    # [N, T, V] direct, for the entropy
    torch.testing.assert_close(entropy, (-(probs * probs.log()).sum(-1)).masked_fill(~ro.mask, 0), atol=1e-4, rtol=0)
    assert torch.equal(logp2, logp)
    # the same rows packed from lists, and a subset of rows (narrower prompt padding) give the same numbers
    lists = pack(ro.prompts, ro.completions())
    torch.testing.assert_close(token_logprobs(model, lists, ro.temperature)[:, :lists.mask.size(1)],
                               ro.logprobs[:, :lists.mask.size(1)], atol=1e-5, rtol=0)
    sub = [2, 3]  # prompt [9] twice: its own padding is 0
    routing = None if ro.routing is None else [r[sub] for r in ro.routing]
    b = pack([ro.prompts[i] for i in sub], ro.tokens[sub], ro.mask[sub], routing)
    assert b.prompt_len == 1
    torch.testing.assert_close(token_logprobs(model, b, ro.temperature), ro.logprobs[sub], atol=1e-5, rtol=0)


def test_top_k_top_p_keep_set_and_distribution():
    torch.manual_seed(0)
    V, M = 50, 40000
    logits = torch.randn(V) * 2
    u = torch.rand(M, dtype=torch.float64)
    for top_k, top_p in [(5, 1.0), (0, 0.6), (10, 0.8), (0, 1.0)]:
        tok, logp = sample(logits.expand(M, V), u, temperature=1.3, top_k=top_k, top_p=top_p)
        # the distribution we expect, built independently: sort, take k, take the nucleus of what is left
        probs = (logits / 1.3).softmax(-1).double()
        p_sorted, order = probs.sort(descending=True)
        keep = torch.ones(V, dtype=torch.bool)
        if top_k:
            keep[top_k:] = False
        if top_p < 1:
            kept_mass = p_sorted * keep
            kept_mass = kept_mass / kept_mass.sum()
            n = int((kept_mass.cumsum(0) < top_p).sum()) + 1                  # smallest prefix reaching top_p
            keep[n:] = False
        expected = torch.zeros(V, dtype=torch.float64)
        expected[order[keep]] = p_sorted[keep] / p_sorted[keep].sum()
        counts = torch.bincount(tok, minlength=V).double() / M
        assert (counts[expected == 0] == 0).all(), "drew a token outside the kept set"
        assert (counts - expected).abs().max() < 0.012
        # logp is the untruncated temperature-scaled log-prob of the drawn token
        torch.testing.assert_close(logp, (logits / 1.3).log_softmax(-1)[tok])


def test_top_k_one_is_greedy(model):
    greedy = gen(model, PROMPTS, max_new_tokens=6, greedy=True)
    k1 = gen(model, PROMPTS, max_new_tokens=6, top_k=1, seed=4)
    assert greedy.tokens.tolist() == k1.tokens.tolist()


def test_seed_reproducible():
    model = make_model("gqa_dense")
    a = gen(model, PROMPTS, max_new_tokens=8, seed=123)
    b = gen(model, PROMPTS, max_new_tokens=8, seed=123)
    c = gen(model, PROMPTS, max_new_tokens=8, seed=124)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert a.tokens.tolist() != c.tokens.tolist()
    longer = gen(model, PROMPTS, max_new_tokens=12, seed=123)          # step-major noise: same prefix
    assert longer.tokens[:, :8].tolist() == a.tokens.tolist()
    torch.manual_seed(9)
    d = gen(model, PROMPTS, max_new_tokens=8)
    torch.manual_seed(9)
    assert gen(model, PROMPTS, max_new_tokens=8).tokens.tolist() == d.tokens.tolist()


def test_eos_stops_rows_individually():
    model = make_model("gqa_dense")
    free = gen(model, PROMPTS, max_new_tokens=10, greedy=True)
    eos = free.tokens[0, 3].item()                                            # row 0 reaches it at step <= 3
    ro = gen(model, PROMPTS, max_new_tokens=10, greedy=True, eos_id=eos, check_every=4)
    for i, row in enumerate(free.tokens.tolist()):
        n = row.index(eos) + 1 if eos in row else 10
        assert ro.mask[i].sum() == n and ro.tokens[i, :n].tolist() == row[:n]
        assert (ro.tokens[i, n:] == 0).all() and (ro.logprobs[i, n:] == 0).all()
        assert ro.finish_reason[i] == ("stop" if eos in row else "length")
    assert "stop" in ro.finish_reason


def test_stop_strings_across_tokens():
    model = make_model("mla_moe")
    decode = lambda ids: "".join(f"t{i}," for i in ids)                       # a stand-in tokenizer
    free = gen(model, PROMPTS, max_new_tokens=12, greedy=True)
    row = free.tokens[1].tolist()
    stop = f"{row[4]},t{row[5]}"                                              # spans the tokens at steps 4 and 5
    results = [gen(model, PROMPTS, max_new_tokens=12, greedy=True, stop_strings=[stop, "never"],
                        decode=decode, check_every=k) for k in (1, 5, 64)]
    for ro in results:
        assert ro.tokens.tolist() == results[0].tokens.tolist()
        for i, full in enumerate(free.tokens.tolist()):
            # reference: the first prefix whose text contains the stop string
            n = next((j + 1 for j in range(12) if stop in decode(full[:j + 1])), 12)
            assert ro.mask[i].sum() == n and ro.tokens[i, :n].tolist() == full[:n]
            assert ro.finish_reason[i] == ("stop" if n < 12 or stop in decode(full) else "length")
    assert results[0].mask[1].sum() <= 6 and results[0].finish_reason[1] == "stop"


def test_stop_strings_find_non_ascii_and_empty_text():
    table = {1: "a", 2: "\xe9", 3: "", 4: "b"}
    s = StopStrings(["\xe9b", "zz"], lambda ids: "".join(table[i] for i in ids))
    assert s.find([1, 2, 3, 4, 1], 0) == 3
    assert s.find([1, 1, 4], 0) is None


def test_routing_record_and_replay():
    model = make_model("mla_moe")
    ro = gen(model, PROMPTS, max_new_tokens=10, seed=2, group_size=2, record_routing=True)
    n_moe = len(model.moe_layers())
    P, T = max(map(len, PROMPTS)), ro.tokens.size(1)
    assert len(ro.routing) == n_moe and ro.routing[0].shape == (8, P + T - 1, model.cfg.n_activated_experts)
    # move the router as an optimizer step would: the model's own routing changes, the replayed one does not
    batch = pack(ro.prompts, ro.tokens, ro.mask, ro.routing)
    for moe in model.moe_layers():
        moe.gate.bias += torch.randn_like(moe.gate.bias)
    own = token_logprobs(model, pack(ro.prompts, ro.tokens, ro.mask), ro.temperature)
    replayed = token_logprobs(model, batch, ro.temperature)
    assert (own - ro.logprobs).abs().max() > 1e-3                            # routing moved
    torch.testing.assert_close(replayed, ro.logprobs, atol=1e-5, rtol=0)


def test_mode_restored_and_no_grad():
    model = make_model("gqa_dense").train()
    ro = gen(model, PROMPTS, max_new_tokens=3)
    assert model.training and not ro.logprobs.requires_grad
    logp = token_logprobs(model, pack(ro.prompts, ro.tokens, ro.mask), ro.temperature)
    assert logp.requires_grad                                                 # the trainer's forward keeps grad


def test_kv_bytes_per_token():
    mla, gqa = make_model("mla_moe").cfg, make_model("gqa_dense").cfg
    assert kv_bytes_per_token(make_model("mla_moe")) == mla.n_layers * (mla.kv_lora_rank + mla.qk_rope_head_dim) * 4
    assert kv_bytes_per_token(make_model("gqa_dense")) == gqa.n_layers * 2 * gqa.n_kv_heads * gqa.head_dim * 4


def test_bad_input_errors():
    model = make_model("gqa_dense")
    for kwargs, words in [(dict(prompts=[[1, 2], []]), "prompt 1"), (dict(prompts=[[1, 9999]]), "outside"),
                          (dict(max_new_tokens=600), "max_seq_len"), (dict(temperature=0.0), "greedy=True"),
                          (dict(stop_strings=["x"]), "decode"), (dict(top_p=0.0), "top_p"),
                          (dict(seed=[1, 2, 3]), "one int per prompt")]:
        args = dict(prompts=[[1, 2], [3]], max_new_tokens=4) | kwargs
        with pytest.raises(ValueError, match=words):
            gen(model, args.pop("prompts"), **args)
    with pytest.raises(TypeError, match="SamplingParams"):
        generate(model, [[1, 2]], dict(max_new_tokens=4))
    for bad, words in [(dict(max_new_tokens=0), "max_new_tokens"), (dict(top_k=-1), "top_k"),
                       (dict(stop_ids=(-1,)), "stop_ids"), (dict(stop_strings="x"), "stop_strings")]:
        with pytest.raises(ValueError, match=words):
            SamplingParams(**{"max_new_tokens": 4, **bad})
    with pytest.raises(ValueError, match="routing"):
        pack([[1], [2]], torch.zeros(2, 3, dtype=torch.long), routing=[torch.zeros(2, 1, 2)])


def test_static_decode_equals_eager(model):
    """The static-shape step (what a CUDA graph captures) gives the eager step's tokens, log-probs and routing, with
    ragged prompts, groups, EOS and stop strings in play."""
    kw = dict(max_new_tokens=14, temperature=0.9, group_size=2, seed=[4, 5, 6, 7], record_routing=True)
    free = gen(model, PROMPTS, **kw)
    kw |= dict(eos_id=free.tokens[1, 3].item(), stop_strings=["@"],
               decode=lambda ids: "".join("@" if i == free.tokens[6, 5].item() else "." for i in ids))
    eager = gen(model, PROMPTS, **kw)
    static = gen(model, PROMPTS, decode_mode="static", **kw)
    assert eager.mask.sum(1).min() < eager.mask.sum(1).max()                 # rows did stop at different steps
    assert static.tokens.tolist() == eager.tokens.tolist() and static.finish_reason == eager.finish_reason
    torch.testing.assert_close(static.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    if eager.routing is not None:
        assert all(torch.equal(a, b) for a, b in zip(static.routing, eager.routing))
    greedy = [gen(model, PROMPTS, max_new_tokens=10, greedy=True, decode_mode=m) for m in ("eager", "static")]
    assert greedy[0].tokens.tolist() == greedy[1].tokens.tolist()


def test_static_forward_equals_sliced_forward(model):
    """model.forward with a tensor start attends over every cache slot (the unwritten ones masked) and gives the
    logits of the int-start path, which attends over the written slots only."""
    torch.manual_seed(3)
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 7))
    S = 12
    caches = [model.new_cache(2, S), model.new_cache(2, S)]
    for c in caches:  # garbage in the unwritten slots must not leak into the static path's output
        for layer in c:
            for t in layer.values():
                t.normal_()
    key_mask = torch.ones(2, S, dtype=torch.bool)
    key_mask[0, :2] = False                                                   # row 0: two pad slots
    pos = (torch.arange(7) - torch.tensor([[2], [0]])).clamp(min=0)           # [2, 7]
    with torch.no_grad():
        ref = model(tokens[:, :5], pos=pos[:, :5], key_mask=key_mask, cache=caches[0], start=0).logits
        out = model(tokens[:, :5], pos=pos[:, :5], key_mask=key_mask, cache=caches[1], start=torch.tensor(0)).logits
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        for i in (5, 6):
            ref = model(tokens[:, i:i + 1], pos=pos[:, i:i + 1], key_mask=key_mask, cache=caches[0], start=i).logits
            out = model(tokens[:, i:i + 1], pos=pos[:, i:i + 1], key_mask=key_mask, cache=caches[1],
                        start=torch.tensor(i)).logits
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        last = model(tokens, pos=pos, key_mask=key_mask[:, :7], last_only=True).logits
        torch.testing.assert_close(last, model(tokens, pos=pos, key_mask=key_mask[:, :7]).logits[:, -1:])
    with pytest.raises(ValueError, match="tensor start"):
        model(tokens[:, :1], start=torch.tensor(0))


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_dropping_finished_rows_changes_nothing(model, mode, monkeypatch):
    """Compaction (finished rows leave the decode batch) gives the same tokens, log-probs, routing and finish
    reasons as decoding every row to the end."""
    from nanor1 import sampler
    calls = []
    real = sampler._compact
    monkeypatch.setattr(sampler, "_compact", lambda d: calls.append(d.rows.numel()) or real(d))
    kw = dict(max_new_tokens=20, temperature=1.2, group_size=3, seed=[1, 2, 3, 4], record_routing=True,
              check_every=2, decode_mode=mode)
    free = gen(model, PROMPTS, compact=False, **kw)
    eos = sorted({free.tokens[i, 2 + i].item() for i in range(0, 12, 2)})  # rows stop at many different steps
    kw |= dict(eos_id=eos, stop_strings=["#"],
               decode=lambda ids: "".join("#" if i == free.tokens[3, 8].item() else "." for i in ids))
    full = gen(model, PROMPTS, compact=False, **kw)
    assert not calls
    dropped = gen(model, PROMPTS, compact=True, **kw)
    assert len(calls) >= 2 and calls[0] == 12                                 # it compacted, more than once
    assert dropped.tokens.tolist() == full.tokens.tolist() and dropped.finish_reason == full.finish_reason
    torch.testing.assert_close(dropped.logprobs, full.logprobs, atol=1e-5, rtol=0)
    if full.routing is not None:  # the columns that feed a scored token (past a row's end nothing reads them)
        P = max(map(len, PROMPTS))
        for i, n in enumerate(full.mask.sum(1).tolist()):
            assert all(torch.equal(a[i, :P + n - 1], b[i, :P + n - 1]) for a, b in zip(dropped.routing, full.routing))


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_static_step_needs_no_host(kind, monkeypatch):
    """CUDA-graph capture needs a decode step with no host sync and no data-dependent shape. On CPU, dynamo reports
    both as graph breaks, so the static step (model, sampling and bookkeeping) must trace as one graph. bf16, so that
    the MoE takes the grouped GEMM as it does on a GPU."""
    import torch._dynamo as dynamo
    from nanor1 import sampler

    class Traced(Exception):
        pass

    def explain_instead_of_capture(step, d):
        raise Traced(dynamo.explain(step)())
    monkeypatch.setattr(sampler, "_cuda_graph", explain_instead_of_capture)
    model = make_model(kind).to(torch.bfloat16)
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=20)
    with torch.no_grad(), pytest.raises(Traced) as traced:  # called below generate(), which refuses a CPU model
        sampler._generate(model, PROMPTS, params, eos=torch.tensor([3, 4]), stops=None, G=2, seed=0, record=True,
                          check_every=4, compact=True, decode_mode="cuda_graph", compile=False)
    report = traced.value.args[0]
    assert report.graph_count == 1 and report.graph_break_count == 0, report.break_reasons
    dynamo.reset()


def test_cuda_graph_mode_errors_off_cuda():
    model = make_model("gqa_dense")
    with pytest.raises(ValueError, match="CUDA device"):
        gen(model, PROMPTS, max_new_tokens=4, decode_mode="cuda_graph")
    with pytest.raises(ValueError, match="decode_mode"):
        gen(model, PROMPTS, max_new_tokens=4, decode_mode="graph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled fast path is checked on a GPU")
def test_compiled_equals_eager_on_gpu():
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", **CONFIGS["gqa_dense"])).cuda().eval()
    eager = gen(model, PROMPTS, max_new_tokens=16, greedy=True)
    fast = gen(model, PROMPTS, max_new_tokens=16, greedy=True, compile=True)
    assert fast.tokens.tolist() == eager.tokens.tolist()
    torch.testing.assert_close(fast.logprobs, eager.logprobs, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_cuda_graph_equals_static_on_gpu(kind):
    """Replaying the captured step gives what running the static step gives. The dense model in fp32 must give the
    same tokens; the MoE graph needs bf16 (the grouped GEMM), where expert outputs are summed with atomics
    (index_add_), so a few near-tie samples may differ."""
    bf16 = kind == "mla_moe"
    model = make_model(kind).cuda().to(torch.bfloat16 if bf16 else torch.float32)
    kw = dict(max_new_tokens=24, temperature=0.9, group_size=3, seed=0, record_routing=True, check_every=5)
    first = gen(model, PROMPTS, **kw)
    kw["eos_id"] = sorted({first.tokens[i, 3 + i].item() for i in range(0, 12, 3)})  # ragged: compaction happens
    static = gen(model, PROMPTS, decode_mode="static", **kw)
    assert static.mask.sum(1).min() < static.mask.sum(1).max()
    for compile in (False, True):
        graph = gen(model, PROMPTS, decode_mode="cuda_graph", compile=compile, **kw)
        same = (graph.tokens == static.tokens).all(1)                         # [N] rows that agree throughout
        if not bf16 and not compile:
            assert same.all() and graph.finish_reason == static.finish_reason
        assert same.float().mean() >= 0.75, f"only {same.float().mean():.0%} of rows match the static step"
        torch.testing.assert_close(graph.logprobs[same], static.logprobs[same], atol=3e-2 if bf16 else 1e-5, rtol=0)


def _grads_and_loads(model, fn, batch, temperature, adv):
    """fn's log-probs and entropy, the gradients of a GRPO-like loss on them, and the MoE load counts it added."""
    model.zero_grad()
    for moe in model.moe_layers():
        moe.gate.load.zero_()
    logp, entropy = fn(model, batch, temperature, with_entropy=True)
    (logp * adv[:, None]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, grads, [moe.gate.load.clone() for moe in model.moe_layers()]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_group_token_logprobs_equal_token_logprobs_with_gradients(kind):
    """Each prompt run once + completions over its cache == one full forward: log-probs, entropy, gradients, and the
    MoE load counts that drive the routing-bias update; for shuffled subsets of rows too, and with routing replay."""
    model = make_model(kind)
    ro = gen(model, PROMPTS, max_new_tokens=10, seed=1, group_size=4, eos_id=list(range(1, 60)),
                  record_routing=True)
    assert not ro.mask.all() and ro.mask[:, 0].all()                         # ragged completions
    batch = pack(ro.prompts, ro.tokens, ro.mask)
    adv = torch.randn(len(ro.prompts), generator=torch.Generator().manual_seed(0))
    model.train()
    ref = _grads_and_loads(model, token_logprobs, batch, ro.temperature, adv)
    fast = _grads_and_loads(model, group_token_logprobs, batch, ro.temperature, adv)
    torch.testing.assert_close(fast[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast[1], ref[1], atol=1e-5, rtol=0)
    assert fast[2].keys() == ref[2].keys()
    for name, g in ref[2].items():
        assert (fast[2][name] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-9, name
    for a, b in zip(fast[3], ref[3]):
        assert torch.equal(a, b) and a.sum() > 0
    # a shuffled subset of rows (micro-batches need not hold whole groups)
    rows = torch.randperm(len(ro.prompts), generator=torch.Generator().manual_seed(1))[:11]
    sub = pack([ro.prompts[i] for i in rows], ro.tokens[rows], ro.mask[rows])
    with torch.no_grad():
        torch.testing.assert_close(group_token_logprobs(model, sub, ro.temperature),
                                   token_logprobs(model, sub, ro.temperature), atol=1e-5, rtol=0)
    if ro.routing is not None:  # replay the sampler's experts, after the router moved
        replay = pack(ro.prompts, ro.tokens, ro.mask, ro.routing)
        for moe in model.moe_layers():
            moe.gate.bias += torch.randn_like(moe.gate.bias)
        with torch.no_grad():
            torch.testing.assert_close(group_token_logprobs(model, replay, ro.temperature), ro.logprobs,
                                       atol=1e-5, rtol=0)



@pytest.mark.parametrize("kind", ["gqa_bias", "mla_moe"])
def test_fast_decode_paths_give_the_plain_paths_tokens(kind, monkeypatch):
    """Greedy and seeded sampling with the decode fast paths (model.Decoder's steps on a CPU, fused q/k/v for the
    prefill, pair RoPE tables, one-op RMSNorm, the T == 1 mask) give the same tokens as with FAST_PATHS off (the
    model's plain forward at every step): a GQA model with q/k/v biases, and the MLA + MoE model with 40 rows (the
    sparse expert path) and 8 (all experts)."""
    import nanor1.model as nanor1_model
    torch.manual_seed(0)
    if kind == "gqa_bias":
        model = Transformer(get_config("tiny", attn="gqa", n_routed_experts=0, n_kv_heads=2, qkv_bias=True)).eval()
        with torch.no_grad():
            for b in model.layers:  # biases away from their zero init, so the fused bias is exercised
                b.attn.wq.bias.normal_(0, 0.1), b.attn.wk.bias.normal_(0, 0.1), b.attn.wv.bias.normal_(0, 0.1)
    else:
        model = make_model("mla_moe")
        with torch.no_grad():
            for moe in model.moe_layers():
                moe.gate.bias.normal_(0, 0.1)
    steps = []
    step = nanor1_model.Decoder.step
    monkeypatch.setattr(nanor1_model.Decoder, "step", lambda self, *a: steps.append(1) or step(self, *a))
    runs = []
    for fast in (True, False):
        monkeypatch.setattr(nanor1_model, "FAST_PATHS", fast)
        g = generate(model, PROMPTS, SamplingParams(max_new_tokens=12, greedy=True), record_routing=True)
        s = generate(model, PROMPTS, SamplingParams(max_new_tokens=12), group_size=10, seed=3, record_routing=True)
        runs.append((g.tokens, s.tokens, s.logprobs, g.routing, s.routing))
        assert (len(steps) > 0) == fast                                # the decoder runs exactly when fast
        steps.clear()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    torch.testing.assert_close(runs[0][2], runs[1][2], atol=1e-5, rtol=1e-5)
    if kind == "mla_moe":
        assert all(torch.equal(a, b) for i in (3, 4) for a, b in zip(runs[0][i], runs[1][i]))
