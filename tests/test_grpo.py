"""GRPO objective: loss and gradient against a float64 loop reference, clipping, micro-batching, advantages."""

import math
import statistics

import pytest
import torch

from nanor1.grpo import (
    LOSS_AGGS,
    filter_groups,
    group_advantages,
    grpo_loss,
    loss_counts,
    mask_truncated,
    overlong_penalty,
)

MAX_LEN = 9


# ---- an independent reference: plain Python floats, one token at a time ----

def loop_reference(logp, old, ref, adv, mask, *, eps_low, eps_high, beta, agg, max_len):
    """Loss, d loss / d logp (derived by hand, case by case) and stats, from the formulas of R1 eq. 1-2."""
    B, T = len(logp), len(logp[0])
    n_tok = [sum(1 for t in range(T) if mask[b][t]) for b in range(B)]
    n_seq = sum(1 for b in range(B) if n_tok[b] > 0)
    total = sum(n_tok)
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    loss, grad = 0.0, [[0.0] * T for _ in range(B)]
    clipped = kl_sum = ratio_sum = 0.0
    ratios = []
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            if agg == "seq-mean-token-mean":
                w = 1.0 / (n_tok[b] * n_seq)
            elif agg == "token-mean":
                w = 1.0 / total
            else:
                w = 1.0 / (max_len * n_seq)
            A = adv[b]
            r = math.exp(logp[b][t] - old[b][t])
            objective = min(r * A, min(max(r, lo), hi) * A)
            # d(objective)/d(logp) = r·A, unless the clipped (constant) term is the smaller one
            clip_active = (A > 0 and r > hi) or (A < 0 and r < lo)
            d_objective = 0.0 if clip_active else r * A
            x = ref[b][t] - logp[b][t]
            k3 = math.exp(x) - x - 1.0
            d_k3 = 1.0 - math.exp(x)            # d/d logp of exp(ref - logp) - (ref - logp) - 1
            loss += w * (-objective + beta * k3)
            grad[b][t] = w * (-d_objective + beta * d_k3)
            clipped += clip_active
            kl_sum += k3
            ratio_sum += r
            ratios.append(r)
    stats = {"clip_frac": clipped / total, "kl": kl_sum / total, "ratio_mean": ratio_sum / total,
             "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return loss, grad, stats


def make_batch(seed=0, B=7, T=MAX_LEN, eps_low=0.2, eps_high=0.28):
    """Random float64 batch whose ratios fall below, inside and above the clip range, with NaN padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 3, 5, 0, 1, 6, 8])[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]                     # [B, T]
    logp = -(0.1 + 3 * torch.rand(B, T, generator=g, dtype=torch.float64))
    delta = 1.2 * torch.rand(B, T, generator=g, dtype=torch.float64) - 0.6   # ratio = exp(-delta) in [0.55, 1.82]
    for bound in (1 - eps_low, 1 + eps_high):                              # keep ratios off the clip kinks
        near = (torch.exp(-delta) - bound).abs() < 1e-3
        delta = torch.where(near, delta + 0.01, delta)
    old = logp + delta
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.3, -0.7, 0.9, 0.4, -1.2, 0.0, -0.3], dtype=torch.float64)[:B]
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    logp, old, ref = (torch.where(mask, x, nan) for x in (logp, old, ref))  # padding is garbage
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("agg", LOSS_AGGS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28)])
def test_loss_and_grad_match_loop_reference(agg, beta, eps_low, eps_high):
    logp, old, ref, adv, mask = make_batch(eps_low=eps_low, eps_high=eps_high)
    # the batch must really exercise every case: both signs of A, ratios below / inside / above the clip range
    r = torch.exp(logp - old)[mask]
    a = adv[:, None].expand_as(mask)[mask]
    for sign in (1, -1):
        sel = r[a * sign > 0]
        assert (sel < 1 - eps_low).any() and (sel > 1 + eps_high).any()
        assert ((sel > 1 - eps_low) & (sel < 1 + eps_high)).any()

    logp.requires_grad_(True)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, eps_low=eps_low, eps_high=eps_high, beta=beta,
                            loss_agg=agg, max_len=MAX_LEN)
    loss.backward()
    ref_loss, ref_grad, ref_stats = loop_reference(
        logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(),
        eps_low=eps_low, eps_high=eps_high, beta=beta, agg=agg, max_len=MAX_LEN)

    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(logp.grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    assert torch.equal(logp.grad[~mask], torch.zeros_like(logp.grad[~mask]))  # NaN padding got exactly 0
    for k, v in ref_stats.items():
        assert stats[k].item() == pytest.approx(v, rel=1e-12), k
        assert not stats[k].requires_grad


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_on_policy_gradient_is_plain_policy_gradient(agg):
    logp, _, _, adv, mask = make_batch()
    logp.requires_grad_(True)
    loss, stats = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, loss_agg=agg, max_len=MAX_LEN)
    loss.backward()
    n_tok = mask.sum(1, keepdim=True).double()                              # [B, 1]
    n_seq = (n_tok > 0).sum()
    norm = {"seq-mean-token-mean": n_tok * n_seq, "token-mean": mask.sum().double(),
            "seq-mean-token-sum-norm": MAX_LEN * n_seq}[agg]
    expected = torch.where(mask, -adv[:, None] / norm, 0.0)                 # -A·mask / normaliser
    torch.testing.assert_close(logp.grad, expected, rtol=1e-14, atol=0.0)
    assert stats["clip_frac"].item() == 0.0 and stats["ratio_max"].item() == 1.0
    # with ratio 1 the surrogate is just -A, so the loss is the mean advantage under this aggregation
    assert loss.item() == pytest.approx(-(torch.where(mask, adv[:, None] / norm, 0.0).sum()).item(), rel=1e-12)


def test_old_logp_none_means_on_policy():
    logp, _, ref, adv, mask = make_batch()
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    loss_a, _ = grpo_loss(a, None, ref, adv, mask)
    loss_b, _ = grpo_loss(b, b.detach(), ref, adv, mask)
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == loss_b.item()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_clipped_tokens_get_zero_surrogate_gradient(beta):
    # rows: A = +1, A = -1; tokens: ratio 0.5 (below 1-eps_low), 1.0 (inside), 1.6 (above 1+eps_high)
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.6], [0.5, 1.0, 1.6]], dtype=torch.float64)).requires_grad_(True)
    ref = torch.full((2, 3), -0.3, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=beta, loss_agg="token-mean")
    loss.backward()
    should_clip = torch.tensor([[False, False, True], [True, False, False]])
    kl_grad = beta * (1 - torch.exp(ref - logp.detach())) / 6              # what is left on a clipped token
    torch.testing.assert_close(logp.grad[should_clip], kl_grad[should_clip], rtol=1e-14, atol=0.0)
    if beta == 0:
        assert torch.equal(logp.grad[should_clip], torch.zeros(2, dtype=torch.float64))
    surrogate_grad = logp.grad - kl_grad
    assert (surrogate_grad[~should_clip].abs() > 1e-3).all()
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 6)


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_micro_batches_sum_to_full_batch(agg):
    # a tiny "policy": linear layer -> log-softmax -> log-prob of the sampled token
    torch.manual_seed(0)
    B, T, D, V = 7, MAX_LEN, 5, 11
    model = torch.nn.Linear(D, V).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    y = torch.randint(V, (B, T))
    _, _, _, adv, mask = make_batch(B=B, T=T)

    def logp_of(rows):
        return torch.log_softmax(model(x[rows]), -1).gather(-1, y[rows, :, None])[..., 0]   # [b, T]

    with torch.no_grad():
        old = logp_of(slice(None)) + 0.3 * torch.randn(B, T, dtype=torch.float64)
        ref = logp_of(slice(None)) + 0.3 * torch.randn(B, T, dtype=torch.float64)
    kw = dict(beta=0.04, eps_high=0.28, loss_agg=agg, max_len=MAX_LEN)

    full, _ = grpo_loss(logp_of(slice(None)), old, ref, adv, mask, **kw)
    full.backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    num_seqs, num_tokens = loss_counts(mask)
    total = 0.0
    default_total = 0.0
    for rows in (slice(0, 2), slice(2, 3), slice(3, 7)):                     # uneven; rows 3 has no tokens
        part, _ = grpo_loss(logp_of(rows), old[rows], ref[rows], adv[rows], mask[rows],
                            num_seqs=num_seqs, num_tokens=num_tokens, **kw)
        part.backward()                                                     # gradients accumulate
        total += part.item()
        with torch.no_grad():
            default_total += grpo_loss(logp_of(rows), old[rows], ref[rows], adv[rows], mask[rows], **kw)[0].item()
    assert total == pytest.approx(full.item(), rel=1e-12)
    for p, g in zip(model.parameters(), full_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)
    # the override matters: with per-micro-batch normalisers the sum is not the full-batch loss
    assert default_total != pytest.approx(full.item(), rel=1e-6)


def test_empty_mask_gives_zero_loss_not_nan():
    logp = torch.full((2, 4), float("nan"), dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 4)
    for agg in LOSS_AGGS:
        loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), torch.ones(2, dtype=torch.float64), mask,
                                loss_agg=agg, max_len=4)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(logp.grad, torch.zeros_like(logp))
        assert all(torch.isfinite(v) for v in stats.values())


def test_bf16_inputs_give_fp32_loss():
    logp, old, ref, adv, mask = make_batch()
    loss, _ = grpo_loss(logp.bfloat16().requires_grad_(True), old.bfloat16(), ref.bfloat16(), adv.float(), mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bad_arguments_raise_clear_errors():
    logp, old, ref, adv, mask = make_batch()
    with pytest.raises(ValueError, match="seq-mean-token-mean, token-mean, seq-mean-token-sum-norm"):
        grpo_loss(logp, old, ref, adv, mask, loss_agg="mean")
    with pytest.raises(ValueError, match="max_len"):
        grpo_loss(logp, old, ref, adv, mask, loss_agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, ref, adv[:3], mask)
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss(logp, old[:, :2], ref, adv, mask)
    # beta = 0 needs no reference model, and gives the same loss as when one is passed
    assert grpo_loss(logp, old, None, adv, mask, beta=0.0)[0].item() == \
        grpo_loss(logp, old, ref, adv, mask, beta=0.0)[0].item()


# ---- advantages ----

def reference_advantages(rows, scale, eps=1e-6):
    all_r = [r for row in rows for r in row]
    out = []
    for row in rows:
        m = statistics.mean(row)
        std = {"group": statistics.stdev(row), "batch": statistics.stdev(all_r), "none": None}[scale]
        out.append([0.0 if len(set(row)) == 1 else (r - m) if std is None else (r - m) / (std + eps) for r in row])
    return out


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
def test_group_advantages_match_reference(scale):
    g = torch.Generator().manual_seed(1)
    rewards = torch.cat([
        torch.rand(3, 6, generator=g, dtype=torch.float64),                       # continuous rewards
        torch.randint(2, (3, 6), generator=g).double(),                           # 0/1 accuracy rewards
        torch.full((1, 6), 0.1, dtype=torch.float64),                             # mean() does not round-trip
        torch.ones(1, 6, dtype=torch.float64),
    ])
    rewards[4] = torch.tensor([0, 1, 0, 0, 0, 1.0])                              # not all equal, for sure
    adv = group_advantages(rewards, scale=scale)
    expected = torch.tensor(reference_advantages(rewards.tolist(), scale), dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-15)
    same = ~filter_groups(rewards)
    assert same.sum() >= 2
    assert torch.equal(adv[same], torch.zeros_like(adv[same]))                  # exactly zero, not 1e-11
    assert adv.sum(1).abs().max() < 1e-12                                       # centred per group


def test_group_advantages_edge_cases():
    assert torch.equal(group_advantages(torch.tensor([[1.0], [0.0]])), torch.zeros(2, 1))   # G = 1: no NaN
    assert group_advantages(torch.tensor([[0, 1]])).dtype == torch.float32                   # int rewards ok
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\[N, G\]"):
        group_advantages(torch.ones(4))
    with pytest.raises(ValueError, match="group, none, batch"):
        group_advantages(torch.ones(2, 2), scale="std")


# ---- DAPO options ----

def test_filter_groups():
    rewards = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0], [0.5, 0.5, 0.2]])
    assert filter_groups(rewards).tolist() == [False, True, False, True]


def test_overlong_penalty():
    # max_len 100, buffer 20: free up to 80, then -1/20 per token, -1 at 100 and beyond
    lengths = torch.tensor([0, 50, 80, 85, 90, 100, 130])
    pen = overlong_penalty(lengths, max_len=100, buffer=20)
    assert pen.tolist() == pytest.approx([0, 0, 0, -0.25, -0.5, -1, -1])
    assert overlong_penalty([99], max_len=100, buffer=20).tolist() == pytest.approx([-0.95])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, max_len=100, buffer=0)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.long])
def test_mask_truncated(dtype):
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]]).to(dtype)
    out = mask_truncated(mask, torch.tensor([False, True, False]))
    assert out.dtype == dtype
    assert out.long().tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="truncated"):
        mask_truncated(mask, torch.tensor([True]))


@pytest.mark.parametrize("field, value, words", [
    ("overlong", "masked", "overlong"), ("loss_agg", "foo", "loss_agg"), ("adv_scale", "std", "adv_scale"),
    ("decode_mode", "graph", "decode_mode"), ("group_size", 1, "group_size"), ("mu", 0, "mu"),
    ("micro_batch", 0, "micro_batch"), ("beta", -1.0, "beta"), ("eps_low", 2.0, "eps_low"),
    ("temperature", 0.0, "temperature"), ("top_p", 1.5, "top_p"), ("max_refills", -1, "max_refills"),
])
def test_grpo_config_refuses_every_bad_field(field, value, words):
    from nanor1.grpo import GRPOConfig
    with pytest.raises(ValueError, match=words):
        GRPOConfig(**{field: value})
    GRPOConfig()                                        # the defaults are valid
