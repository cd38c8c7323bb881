"""
The DeepSeek-V3 transformer, and the dense students of R1's distillation, in one file.

DeepSeek-R1 is trained from DeepSeek-V3-Base (arXiv 2412.19437). Its ingredients, in reading order:
  RMSNorm -> RoPE with YaRN -> Multi-head Latent Attention (MLA, V2 sec. 2.1) -> MoE with fine-grained routed
  experts + shared experts, sigmoid scores and auxiliary-loss-free balancing (V3 sec. 2.1.2) -> Block -> Transformer
  -> Multi-Token Prediction (V3 sec. 2.2, training only).
The distilled students (Qwen2.5, Llama) use grouped-query attention and a dense SwiGLU; every difference between
the families is a field of ModelConfig, never a magic switch.

MLA has two equivalent paths (a test checks they give the same logits):
  naive:    decompress the KV latent into per-head keys/values, then ordinary attention (training, prefill).
  absorbed: fold wkv_b into the query and the output, attend in latent space (decode; the cache holds only the
            normalised latent c_kv and the shared RoPE key, (kv_lora_rank + qk_rope_head_dim) numbers per token).
MoE experts have two equivalent paths: a readable per-expert loop, and a batched path (tokens sorted by expert,
one grouped matmul). Decoder, at the end of the file, is the sampler's CPU decode step: forward for one token per
row, with attention in fewer ops (tested equal).

Deviations from the reference code: RoPE is applied with real cos/sin tables (same interleaved pair layout as
DeepSeek's complex multiply); routing scores are computed in float32; the sequence-wise balance loss counts every
position (padding included). Parameter counts: total excludes the MTP module (as the published 671B does); active
counts what one token touches: every non-expert weight except the input embedding table, plus the shared and top-k
routed experts of each MoE layer.

Shape letters: B batch, T new tokens, S key/cache length, D model dim, H heads, Hk kv heads, Dh head dim,
C kv latent (kv_lora_rank), R rope dim, E routed experts, K experts per token, N tokens (B*T), V vocab.
"""
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanor1.fsdp import all_reduce_sum

# The CPU fast paths (experts by contiguous row blocks or all at once for a few tokens, SDPA's fused kernel for MLA,
# is_causal instead of a causal mask). False runs the plain paths they are tested against; bench/speed.py flips it to
# time both in one process. CUDA paths do not depend on it.
FAST_PATHS = True
DENSE_EXPERTS_MAX_TOKENS = 32   # CPU, no autograd: up to this many tokens, run every expert (see MoE.experts_dense)


@dataclass
class ModelConfig:
    vocab_size: int = 512
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_seq_len: int = 512
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    init_std: float = 0.02
    # attention: "mla" (DeepSeek) or "gqa" (Qwen2.5 / Llama students)
    attn: str = "mla"
    q_lora_rank: int = 0            # 0: plain query projection (V2-Lite); >0: low-rank query (V3)
    kv_lora_rank: int = 64          # C, the KV latent
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16      # R, the decoupled RoPE key shared by all heads
    v_head_dim: int = 32
    n_kv_heads: int = 4             # gqa only
    head_dim: int = 32              # gqa only
    qkv_bias: bool = False          # gqa only (Qwen2.5 has q/k/v biases)
    # RoPE and YaRN (YaRN is active only when max_seq_len > original_seq_len)
    rope_theta: float = 10000.0
    original_seq_len: int = 4096
    rope_factor: float = 40.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    rope_type: str = "yarn"         # "yarn" (above), or "llama3": Llama 3.1's scaling by rope_factor, on at any length
    low_freq_factor: float = 1.0    # llama3: wavelengths > original_seq_len / low_freq_factor are stretched fully,
    high_freq_factor: float = 4.0   # < original_seq_len / high_freq_factor not at all, a smooth blend in between
    # feed-forward: dense SwiGLU in the first n_dense_layers blocks (all blocks if n_routed_experts == 0)
    inter_dim: int = 384
    n_dense_layers: int = 1
    # mixture of experts
    n_routed_experts: int = 8       # E; 0 makes a dense model
    n_shared_experts: int = 1
    n_activated_experts: int = 2    # K
    moe_inter_dim: int = 96
    n_expert_groups: int = 1        # group-limited routing: keep the topk_groups best of n_expert_groups
    n_limited_groups: int = 1
    score_func: str = "sigmoid"     # "sigmoid" (V3) or "softmax" (V2)
    norm_topk_prob: bool = True     # renormalise the top-k weights to sum to 1 (V3: yes, V2-Lite: no)
    route_scale: float = 1.0
    routing_bias: bool = True       # auxiliary-loss-free balancing bias (V3); used for selection only
    balance_loss_alpha: float = 0.0  # the small sequence-wise balance loss (V3 eq. 17-20); 0 disables it
    # multi-token prediction (training only)
    n_mtp: int = 0
    mtp_loss_weight: float = 0.3

    def __post_init__(self):
        if self.attn not in ("mla", "gqa"):
            raise ValueError(f"attn must be 'mla' or 'gqa', got {self.attn!r}")
        if self.score_func not in ("sigmoid", "softmax"):
            raise ValueError(f"score_func must be 'sigmoid' or 'softmax', got {self.score_func!r}")
        if self.n_mtp not in (0, 1):
            raise ValueError(f"n_mtp must be 0 or 1, got {self.n_mtp}")
        if self.attn == "gqa" and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.n_routed_experts:
            if self.n_routed_experts % self.n_expert_groups:
                raise ValueError("n_routed_experts must be a multiple of n_expert_groups")
            if not 1 <= self.n_limited_groups <= self.n_expert_groups:
                raise ValueError("need 1 <= n_limited_groups <= n_expert_groups")
            per_group = self.n_routed_experts // self.n_expert_groups
            if self.n_activated_experts > self.n_limited_groups * per_group:
                raise ValueError("n_activated_experts exceeds the experts in the kept groups")
        if self.rope_dim % 2:
            raise ValueError(f"the RoPE dimension must be even, got {self.rope_dim}")
        if self.rope_type not in ("yarn", "llama3") or (self.rope_type == "llama3" and self.attn != "gqa"):
            raise ValueError(f"rope_type must be 'yarn', or 'llama3' on a gqa model, got {self.rope_type!r}")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("llama3 RoPE needs high_freq_factor > low_freq_factor")

    @property
    def rope_dim(self) -> int:
        """R: the dimension RoPE rotates (MLA: the decoupled rope key; GQA: the whole head)."""
        return self.qk_rope_head_dim if self.attn == "mla" else self.head_dim

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict; an unknown key is an error that names it (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# Named presets. tiny runs in seconds on a CPU; the others are the published shapes.
PRESETS: dict[str, dict] = {
    "tiny": dict(),
    # the distillation student (distill.py, paper sec. 4.1): dense GQA + SwiGLU, no MoE; 0.50M parameters, 0.46M
    # active (tiny: 1.55M / 0.82M)
    "tiny-dense": dict(attn="gqa", dim=96, n_heads=4, n_kv_heads=2, head_dim=24, inter_dim=256, n_routed_experts=0),
    "small": dict(vocab_size=32768, dim=1024, n_layers=16, n_heads=16, max_seq_len=4096, q_lora_rank=384,
                  kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, inter_dim=2816,
                  n_dense_layers=1, n_routed_experts=64, n_shared_experts=2, n_activated_experts=6,
                  moe_inter_dim=352, n_expert_groups=8, n_limited_groups=4, route_scale=2.5),
    "deepseek-v2-lite": dict(vocab_size=102400, dim=2048, n_layers=27, n_heads=16, max_seq_len=163840,
                             q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                             v_head_dim=128, inter_dim=10944, n_dense_layers=1, n_routed_experts=64,
                             n_shared_experts=2, n_activated_experts=6, moe_inter_dim=1408, score_func="softmax",
                             norm_topk_prob=False, routing_bias=False, route_scale=1.0, mscale=0.707),
    "deepseek-v3": dict(vocab_size=129280, dim=7168, n_layers=61, n_heads=128, max_seq_len=163840,
                        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                        v_head_dim=128, inter_dim=18432, n_dense_layers=3, n_routed_experts=256,
                        n_shared_experts=1, n_activated_experts=8, moe_inter_dim=2048, n_expert_groups=8,
                        n_limited_groups=4, route_scale=2.5, n_mtp=1),
    "qwen2.5-0.5b": dict(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                         max_seq_len=32768, attn="gqa", qkv_bias=True, rope_theta=1e6, original_seq_len=32768,
                         inter_dim=4864, n_routed_experts=0, tie_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                         max_seq_len=32768, attn="gqa", qkv_bias=True, rope_theta=1e6, original_seq_len=32768,
                         inter_dim=8960, n_routed_experts=0, tie_embeddings=True),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A preset by name, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------------
# RMSNorm and RoPE


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if FAST_PATHS and x.dtype == self.weight.dtype == torch.float32:  # the same arithmetic in one op
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        # normalise in float32 (as the reference does), scale in the input dtype
        return F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).type_as(x) * self.weight


def yarn_mscale(factor: float, mscale: float) -> float:
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_tables(dim: int, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_seq_len, dim/2] for RoPE; with YaRN's frequency interpolation when the context is extended,
    or Llama 3.1's frequency scaling (rope_type "llama3")."""
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # [dim/2]
    if cfg.rope_type == "llama3":
        # long wavelengths are slowed by rope_factor, short ones kept, a linear blend in 1/wavelength between
        wavelen = 2 * math.pi / freqs
        keep = ((cfg.original_seq_len / wavelen - cfg.low_freq_factor)
                / (cfg.high_freq_factor - cfg.low_freq_factor)).clamp(0, 1)        # [dim/2], 1 = unchanged
        freqs = freqs / cfg.rope_factor * (1 - keep) + freqs * keep
    elif cfg.max_seq_len > cfg.original_seq_len:
        # YaRN: low frequencies (long wavelengths) are interpolated by rope_factor, high ones kept, ramp between.
        def correction_dim(n_rot):  # the dimension whose wavelength makes n_rot turns over the original context
            return dim * math.log(cfg.original_seq_len / (n_rot * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
        low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
        high = min(math.ceil(correction_dim(cfg.beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        freqs = freqs / cfg.rope_factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), freqs)  # [max_seq_len, dim/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x0,x1),(x2,x3)... of the last dim. x [B, T, H, R], cos/sin [B, T, R/2], or the
    pair tables of rope_pairs [B, T, 1, R] (the fast path: fewer ops, the same numbers)."""
    if cos.dim() == 4:  # (x0, x1) -> (x0 cos + x1 (-sin), x1 cos + x0 sin): each product and sum as below, exactly
        xf = x.float()
        swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)    # [B, T, H, R]: (x1, x0) in each pair
        return (xf * cos + swapped * sin).type_as(x)
    xf = x.float().unflatten(-1, (-1, 2))                            # [B, T, H, R/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]                                  # [B, T, H, R/2]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)                    # [B, T, 1, R/2]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)                                 # [B, T, H, R]


def rope_pairs(cos, sin):
    """cos, sin [B, T, R/2] -> [B, T, 1, R] tables for apply_rope's fast path: cos repeated in each pair, sin as
    (-sin, +sin). Built once per forward, so each rotation is then two products and a sum."""
    pair = lambda a, b: torch.stack([a, b], -1).flatten(-2).unsqueeze(2)  # noqa: E731
    return pair(cos, cos), pair(-sin, sin)


def attention_mask(key_mask, start, T: int):
    """Boolean mask [B, 1, T, S] (True = attend): causal over cache slots and restricted to real (non-pad) keys.

    key_mask [B, >= S] marks the slots that hold real tokens. start is an int (the queries sit in slots
    start..start+T-1 and attend to S = start + T slots) or a 0-dim long tensor (static shapes: attend over all
    S = key_mask.size(1) slots; the causal part hides the ones not written yet). A padding query would see no key at
    all (NaN softmax), so every query may always see its own slot; pad outputs are never read.
    """
    if FAST_PATHS and T == 1 and not torch.is_tensor(start):  # decode: every slot up to the query's own is causal
        mask = key_mask[:, :start + 1].clone()                           # [B, S]
        mask[:, start] = True                                            # always see yourself
        return mask[:, None, None, :]                                    # [B, 1, 1, S]
    S = key_mask.size(1) if torch.is_tensor(start) else start + T
    q_slot = start + torch.arange(T, device=key_mask.device)             # [T]
    k_slot = torch.arange(S, device=key_mask.device)                     # [S]
    causal = k_slot[None, :] <= q_slot[:, None]                          # [T, S]
    mask = causal[None] & key_mask[:, None, :S]                          # [B, T, S]
    mask = mask | (k_slot[None, :] == q_slot[:, None])[None]             # always see yourself
    return mask.unsqueeze(1)                                             # [B, 1, T, S]


def causal_mask(T: int, device) -> torch.Tensor:
    """[1, 1, T, T] bool, True on and below the diagonal: what mask=None means (plain causal, no padding)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]


def write_cache(cache: dict, new: dict, start) -> dict:
    """Write each new[name] [B, T, ...] into cache[name] at slots start..start+T-1 and return what attention reads:
    slots [0, start+T) for an int start; all S slots for a tensor start (the slot is data, not shape, so one
    captured CUDA graph serves every decode step). A cache of exactly `start` slots is extended out of place instead
    (the caller keeps the result, not the cache): sampler.group_token_logprobs does so under FSDP2 with gradients,
    whose views of a block's inputs cannot be written in place."""
    out = {}
    for name, x in new.items():
        c = cache[name][:x.size(0)]                                      # [B, S, ...] (a view: writes go through)
        if torch.is_tensor(start):
            c.index_copy_(1, start + torch.arange(x.size(1), device=x.device), x.to(c.dtype))
            out[name] = c
        elif c.size(1) == start:
            out[name] = torch.cat([c, x.to(c.dtype)], 1)                 # [B, start + T, ...]
        else:
            c[:, start:start + x.size(1)] = x
            out[name] = c[:, :start + x.size(1)]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Attention: Multi-head Latent Attention (DeepSeek) and grouped-query attention (students)


class MLA(nn.Module):
    """Multi-head Latent Attention. Keys and values are compressed into a latent c_kv [C] per token; RoPE lives on a
    separate rope key [R] shared by all heads, because RoPE does not commute with the latent up-projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.C, self.R = cfg.n_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
        self.nope, self.dv = cfg.qk_nope_head_dim, cfg.v_head_dim
        qk_dim = self.nope + self.R
        if cfg.q_lora_rank == 0:
            self.wq = nn.Linear(cfg.dim, self.n_heads * qk_dim, bias=False)
        else:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank)  # latent norms: eps fixed at 1e-6, as in DeepSeek's code
            self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * qk_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, self.C + self.R, bias=False)
        self.kv_norm = RMSNorm(self.C)
        self.wkv_b = nn.Linear(self.C, self.n_heads * (self.nope + self.dv), bias=False)
        self.wo = nn.Linear(self.n_heads * self.dv, cfg.dim, bias=False)
        self.scale = qk_dim ** -0.5
        if cfg.max_seq_len > cfg.original_seq_len:  # YaRN's attention temperature correction
            self.scale *= yarn_mscale(cfg.rope_factor, cfg.mscale) ** 2

    def new_cache(self, B: int, S: int, dtype, device) -> dict:
        return {"kv": torch.zeros(B, S, self.C, dtype=dtype, device=device),   # normalised latent c_kv
                "pe": torch.zeros(B, S, self.R, dtype=dtype, device=device)}   # rope key, already rotated

    def forward(self, x, cos, sin, mask, cache=None, start=0, absorb=False):
        B, T, _ = x.shape
        q = self.wq(x) if hasattr(self, "wq") else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(B, T, self.n_heads, self.nope + self.R)                    # [B, T, H, nope+R]
        q_nope, q_pe = q.split([self.nope, self.R], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)                                      # [B, T, H, R]
        kv, k_pe = self.wkv_a(x).split([self.C, self.R], dim=-1)               # [B, T, C], [B, T, R]
        kv = self.kv_norm(kv)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin).squeeze(2)             # [B, T, R]
        if cache is not None:  # write this step's latents, then read back everything so far
            c = write_cache(cache, {"kv": kv, "pe": k_pe}, start)
            kv, k_pe = c["kv"], c["pe"]                                         # [B, S, C], [B, S, R]
        S = kv.size(1)
        wkv_b = self.wkv_b.weight.view(self.n_heads, self.nope + self.dv, self.C)  # [H, nope+dv, C]
        if not absorb:
            kv_full = self.wkv_b(kv).view(B, S, self.n_heads, self.nope + self.dv)
            k_nope, v = kv_full.split([self.nope, self.dv], dim=-1)            # [B, S, H, nope], [B, S, H, dv]
            k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, self.n_heads, -1)], dim=-1)
            q = torch.cat([q_nope, q_pe], dim=-1)                              # [B, T, H, nope+R]
            if FAST_PATHS and not x.is_cuda and self.dv != q.size(-1):
                # SDPA's fused CPU kernel needs v's head dim to equal q's, else it takes the slow math path: pad v
                # with zeros and drop those output columns (same attention, ~3x faster on the tiny model)
                v = F.pad(v, (0, q.size(-1) - self.dv))                        # [B, S, H, nope+R]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask, is_causal=mask is None, scale=self.scale)
            out = out.transpose(1, 2)[..., :self.dv]                           # [B, T, H, dv]
        else:
            # absorb wkv_b's key half into the query: q_nope . (W_k c) = (W_k^T q_nope) . c
            q_lat = torch.einsum("bthd,hdc->bthc", q_nope, wkv_b[:, :self.nope])  # [B, T, H, C]
            scores = (torch.einsum("bthc,bsc->bhts", q_lat, kv) +
                      torch.einsum("bthr,bsr->bhts", q_pe, k_pe)) * self.scale    # [B, H, T, S]
            mask = causal_mask(T, x.device) if mask is None else mask
            scores = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1).type_as(x)
            out = torch.einsum("bhts,bsc->bthc", scores, kv)                       # [B, T, H, C]
            out = torch.einsum("bthc,hdc->bthd", out, wkv_b[:, self.nope:])        # [B, T, H, dv]
        return self.wo(out.flatten(2))                                          # [B, T, D]


class GQA(nn.Module):
    """Grouped-query attention (Qwen2.5, Llama): n_kv_heads key/value heads shared by groups of query heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.hd, cfg.dim, bias=False)
        self.wqkv = None  # (weight, bias) of wq, wk, wv concatenated, while inside fused_qkv(); not a parameter

    def qkv_weights(self) -> tuple:
        """(weight [(H + 2 Hk) Dh, D], bias or None): wq, wk and wv concatenated, for one projection matmul."""
        bias = None if self.wq.bias is None else torch.cat([self.wq.bias, self.wk.bias, self.wv.bias])
        return torch.cat([self.wq.weight, self.wk.weight, self.wv.weight]), bias

    def new_cache(self, B: int, S: int, dtype, device) -> dict:
        return {"k": torch.zeros(B, S, self.n_kv, self.hd, dtype=dtype, device=device),
                "v": torch.zeros(B, S, self.n_kv, self.hd, dtype=dtype, device=device)}

    def forward(self, x, cos, sin, mask, cache=None, start=0, absorb=False):
        B, T, _ = x.shape
        if self.wqkv is not None and not torch.is_grad_enabled():  # one matmul, one rotation for q and k together
            qkv = F.linear(x, *self.wqkv).view(B, T, self.n_heads + 2 * self.n_kv, self.hd)
            qk = apply_rope(qkv[:, :, :self.n_heads + self.n_kv], cos, sin)      # [B, T, H + Hk, Dh]
            q, k = qk.split([self.n_heads, self.n_kv], dim=2)
            v = qkv[:, :, self.n_heads + self.n_kv:]
        else:
            q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.hd), cos, sin)  # [B, T, H, Dh]
            k = apply_rope(self.wk(x).view(B, T, self.n_kv, self.hd), cos, sin)     # [B, T, Hk, Dh]
            v = self.wv(x).view(B, T, self.n_kv, self.hd)
        if cache is not None:
            c = write_cache(cache, {"k": k, "v": v}, start)
            k, v = c["k"], c["v"]                                               # [B, S, Hk, Dh]
        # Fold each KV head's group of `rep` query heads into the query axis instead of copying K/V rep times:
        # query head h = kv * rep + r attends with KV head kv. Decode then reads the cache once, not rep times.
        rep = self.n_heads // self.n_kv
        q = q.view(B, T, self.n_kv, rep, self.hd).permute(0, 2, 3, 1, 4).reshape(B, self.n_kv, rep * T, self.hd)
        mask = causal_mask(T, x.device) if mask is None else mask  # folded queries cannot use is_causal
        mask = mask if T == 1 else mask.repeat(1, 1, rep, 1)  # [B, 1, rep*T, S]; one query row broadcasts as it is
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)  # [B,Hk,rep*T,Dh]
        out = out.view(B, self.n_kv, rep, T, self.hd).permute(0, 3, 1, 2, 4)        # [B, T, Hk, rep, Dh]
        return self.wo(out.reshape(B, T, self.n_heads * self.hd))                   # [B, T, D]


@contextmanager
def fused_qkv(model):
    """Inside this block, every GQA layer projects q, k and v with one matmul over their weights concatenated here,
    once, and rotates q and k in one call (the sampler's decode: thousands of steps on fixed weights, where each op
    costs more than its arithmetic). The parameters stay as they are (checkpoints, optimisers and FSDP see no
    change); the copy is used only without autograd and is dropped on exit. Do not change the weights inside.
    Weights that are not plain tensors (FSDP's sharded DTensors) are left unfused."""
    attns = [m for m in model.modules() if isinstance(m, GQA)] if FAST_PATHS else []
    try:
        with torch.no_grad():
            for a in attns:
                if all(type(w.data) is torch.Tensor for w in (a.wq.weight, a.wk.weight, a.wv.weight)):
                    a.wqkv = a.qkv_weights()                                     # [(H + 2 Hk) Dh, D]
        yield model
    finally:
        for a in attns:
            a.wqkv = None


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward: dense SwiGLU and the DeepSeekMoE layer


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). Also the shared experts (inter_dim = n_shared * moe_inter_dim)."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Gate(nn.Module):
    """The router. Scores s = sigmoid(x W^T) (V3) or softmax (V2). The balancing bias b is added for *selection only*
    (V3 eq. 16); the weights that scale the experts come from the unbiased scores."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.n_routed_experts
        self.weight = nn.Parameter(torch.empty(E, cfg.dim))
        # not trained by gradients: moved by +-gamma after each optimizer step (update_routing_bias)
        self.register_buffer("bias", torch.zeros(E), persistent=cfg.routing_bias)
        self.register_buffer("load", torch.zeros(E), persistent=False)  # tokens routed per expert since last update

    def forward(self, x, replay_idx=None, real=None):
        """x [N, D] -> weights [N, K], indices [N, K], scores [N, E]. replay_idx [N, K] reuses a recorded routing.
        real [N] bool: the tokens that are not padding; only they count in the load (default: all)."""
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())                       # [N, E]
        scores = logits.sigmoid() if cfg.score_func == "sigmoid" else logits.softmax(dim=-1)
        if replay_idx is not None:
            idx = replay_idx
        else:
            choice = scores + self.bias if cfg.routing_bias else scores        # [N, E]
            if cfg.n_expert_groups > 1:
                choice = choice.view(x.size(0), cfg.n_expert_groups, -1)       # [N, groups, E/groups]
                if cfg.routing_bias:
                    group_score = choice.topk(2, dim=-1).values.sum(dim=-1)    # V3: sum of the best two
                else:
                    group_score = choice.amax(dim=-1)                          # V2: the best one
                keep = group_score.topk(cfg.n_limited_groups, dim=-1).indices  # [N, topk_groups]
                dropped = torch.ones_like(group_score, dtype=torch.bool).scatter_(1, keep, False)
                choice = choice.masked_fill(dropped.unsqueeze(-1), float("-inf")).flatten(1)
            idx = choice.topk(cfg.n_activated_experts, dim=-1).indices         # [N, K]
        weights = scores.gather(1, idx)                                         # [N, K]
        if cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * cfg.route_scale
        if self.training:  # the load the balancing bias follows: padding is not a token (ranks pad differently)
            counted = torch.ones_like(idx, dtype=self.load.dtype) if real is None else \
                real[:, None].expand_as(idx).to(self.load.dtype)               # [N, K]
            self.load.index_add_(0, idx.flatten(), counted.flatten())
        return weights.type_as(x), idx, scores


def grouped_mm(x, w, counts):
    """Row-blocks of x [M, A] (sorted by expert, counts [E]) times their expert's w [E, A, Bo] -> [M, Bo].
    In bf16 this is one grouped GEMM (F.grouped_mm; on CPU only without autograd: its CPU backward fails in torch 2.13,
    "Invalid strides/sizes"). Otherwise the blocks are padded into [E, max_count, A] for one bmm, a shape that needs
    the busiest expert's count on the host (so that path cannot be captured in a CUDA graph)."""
    grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    aligned = x.size(1) % 8 == 0 and w.size(2) % 8 == 0                         # 16-byte rows in bf16
    if hasattr(F, "grouped_mm") and x.dtype == torch.bfloat16 and aligned and (x.is_cuda or not grad):
        return F.grouped_mm(x, w.to(x.dtype), offs=counts.cumsum(0).to(torch.int32))  # autocast skips grouped_mm
    E, M = w.size(0), x.size(0)
    starts = counts.cumsum(0) - counts                                          # [E]
    expert = torch.repeat_interleave(torch.arange(E, device=x.device), counts)  # [M]
    slot = torch.arange(M, device=x.device) - starts[expert]                    # [M] position inside its expert
    padded = x.new_zeros(E, int(counts.max()) if M else 0, x.size(1))           # [E, max_count, A]
    padded[expert, slot] = x
    return torch.bmm(padded, w)[expert, slot]                                   # [M, Bo]


class MoE(nn.Module):
    """DeepSeekMoE: n_shared always-on experts plus the top-K of E fine-grained routed experts.
    Expert weights are stacked [E, ...] so that one expert is a view and a grouped matmul sees them all."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        E, D, I = cfg.n_routed_experts, cfg.dim, cfg.moe_inter_dim
        self.gate = Gate(cfg)
        self.w1 = nn.Parameter(torch.empty(E, I, D))   # gate_proj of each expert, [E, I, D] like nn.Linear
        self.w2 = nn.Parameter(torch.empty(E, D, I))   # down_proj
        self.w3 = nn.Parameter(torch.empty(E, I, D))   # up_proj
        self.shared = MLP(D, cfg.n_shared_experts * I) if cfg.n_shared_experts else None
        self.batched = True
        self.aux_loss = None

    def experts_loop(self, x, weights, idx):
        """The readable reference: for each expert, run the tokens routed to it. x [N, D] -> [N, D]."""
        y = torch.zeros_like(x)
        for e in range(self.w1.size(0)):
            tok, k = (idx == e).nonzero(as_tuple=True)                          # tokens (and their slot) using e
            if tok.numel() == 0:
                continue
            h = F.silu(x[tok] @ self.w1[e].T) * (x[tok] @ self.w3[e].T)        # [n_e, I]
            y.index_add_(0, tok, (h @ self.w2[e].T) * weights[tok, k, None])
        return y

    def experts_batched(self, x, weights, idx):
        """Same result: sort the N*K (token, expert) pairs by expert, so each expert's rows are one contiguous block.
        On CUDA one grouped matmul per weight (the counts stay on the device); on a CPU, where reading the counts on
        the host costs nothing, one plain matmul per expert over its block (no padding to the busiest expert)."""
        N, K = idx.shape
        flat = idx.flatten()                                                    # [N*K]
        order = flat.argsort(stable=True)
        tok = order // K                                                        # token of each sorted pair
        xs = x[tok]                                                             # [N*K, D], grouped by expert
        if FAST_PATHS and not x.is_cuda:
            blocks = xs.split(torch.bincount(flat, minlength=self.w1.size(0)).tolist())  # E blocks [n_e, D]
            out = torch.cat([F.linear(F.silu(F.linear(xe, self.w1[e])) * F.linear(xe, self.w3[e]), self.w2[e])
                             for e, xe in enumerate(blocks) if xe.size(0)])    # [N*K, D]
        else:
            counts = torch.zeros(self.w1.size(0), dtype=torch.long, device=x.device)
            counts.scatter_add_(0, flat, torch.ones_like(flat))                 # [E] (bincount syncs on CUDA)
            h = F.silu(grouped_mm(xs, self.w1.transpose(1, 2), counts)) * grouped_mm(xs, self.w3.transpose(1, 2),
                                                                                      counts)
            out = grouped_mm(h, self.w2.transpose(1, 2), counts)                # [N*K, D]
        out = out * weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, tok, out)

    def experts_dense(self, x, weights, idx):
        """Same result for a few tokens: every expert on every token, each output weighted by the router (0 for the
        experts a token did not choose). E/K times the arithmetic in a handful of large ops: on a CPU that is faster
        for decode's few tokens per step, where the sparse paths are all per-op overhead."""
        gate = torch.zeros(x.size(0), self.w1.size(0), dtype=x.dtype, device=x.device)
        gate.scatter_(1, idx, weights)                                          # [N, E]
        h = F.silu(torch.matmul(x, self.w1.transpose(1, 2))) * torch.matmul(x, self.w3.transpose(1, 2))  # [E, N, I]
        y = torch.matmul(h * gate.T[:, :, None], self.w2.transpose(1, 2))       # [E, N, D]
        return y.sum(0)                                                         # [N, D]

    def forward(self, x, replay_idx=None, real=None):
        B, T, D = x.shape
        flat = x.reshape(-1, D)                                                 # [N, D]
        replay = None if replay_idx is None else replay_idx.reshape(-1, self.cfg.n_activated_experts)
        weights, idx, scores = self.gate(flat, replay, None if real is None else real.reshape(-1))
        if not self.batched:
            experts = self.experts_loop
        elif (FAST_PATHS and not x.is_cuda and flat.size(0) <= DENSE_EXPERTS_MAX_TOKENS
              and not (torch.is_grad_enabled() and self.w1.requires_grad)):
            experts = self.experts_dense
        else:
            experts = self.experts_batched
        y = experts(flat, weights, idx)
        if self.shared is not None:
            y = y + self.shared(flat)
        self.aux_loss = self.balance_loss(scores, idx, B, T) if self.training and self.cfg.balance_loss_alpha else None
        return y.view(B, T, D), idx.view(B, T, -1)

    def balance_loss(self, scores, idx, B, T):
        """V3's complementary sequence-wise balance loss: alpha * sum_i f_i P_i, per sequence, averaged."""
        E, K = scores.size(-1), idx.size(-1)
        s = scores.view(B, T, E)
        s = s / s.sum(dim=-1, keepdim=True)                                     # normalised affinities
        chosen = torch.zeros(B, T, E, device=s.device).scatter_(2, idx.view(B, T, K), 1.0)
        f = chosen.sum(dim=1) * E / (K * T)                                     # [B, E] load fraction * E/K
        P = s.mean(dim=1)                                                       # [B, E]
        return self.cfg.balance_loss_alpha * (f * P).sum(dim=-1).mean()


# ----------------------------------------------------------------------------------------------------------------
# Block, multi-token prediction, and the model


class Block(nn.Module):
    def __init__(self, layer_id: int, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg) if cfg.attn == "mla" else GQA(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        moe = cfg.n_routed_experts > 0 and layer_id >= cfg.n_dense_layers
        self.ffn = MoE(cfg) if moe else MLP(cfg.dim, cfg.inter_dim)

    def forward(self, x, cos, sin, mask, cache=None, start=0, absorb=False, replay_idx=None, real=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, start, absorb)
        if isinstance(self.ffn, MoE):
            h, idx = self.ffn(self.ffn_norm(x), replay_idx, real)
            return x + h, idx
        return x + self.ffn(self.ffn_norm(x)), None


class MTP(nn.Module):
    """One multi-token-prediction module (V3 eq. 21-25): combine the main model's hidden state at i with the
    embedding of token i+1, run one more block, predict token i+2 with the shared head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = Block(cfg.n_layers, cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


@dataclass
class ModelOutput:
    """What Transformer.forward returns, whatever it is asked: the logits, and what some callers also need."""
    logits: torch.Tensor                                  # [B, T, V] ([B, 1, V] with last_only)
    routing: list[torch.Tensor] = field(default_factory=list)  # per MoE layer [B, T, K]: the experts chosen
    hidden: torch.Tensor | None = None                    # [B, T, D]: the last block's output (MTP reads it)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(i, cfg) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.mtp = nn.ModuleList(MTP(cfg) for _ in range(cfg.n_mtp))
        self.init_buffers()
        self.reset_parameters()

    @torch.no_grad()
    def init_buffers(self, device=None):
        """(Re)build the buffers no checkpoint stores: the RoPE tables, every router's load counts, and the routing
        bias when it is not persistent (routing_bias=False). checkpoint.load calls this after filling a meta-built
        model, so a new non-persistent buffer is built here and nowhere else."""
        cfg = self.cfg
        device = device or self.embed.weight.device
        cos, sin = rope_tables(cfg.rope_dim, cfg)
        self.register_buffer("cos", cos.to(device), persistent=False)          # [max_seq_len, R/2]
        self.register_buffer("sin", sin.to(device), persistent=False)
        for gate in (m for m in self.modules() if isinstance(m, Gate)):          # the MTP block's router too
            gate.load = torch.zeros(cfg.n_routed_experts, device=device)
            if not cfg.routing_bias:
                gate.bias = torch.zeros(cfg.n_routed_experts, device=device)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the RoPE tables (apply_rope works in float32), and a checkpoint loaded in
        # bf16 rebuilds them in float32 (init_buffers): keep them float32 always; only their device follows the model
        cos, sin = self.cos, self.sin
        super()._apply(fn, recurse)
        if self.cos.dtype != cos.dtype:
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self

    @torch.no_grad()
    def reset_parameters(self):
        """GPT-2 style init: N(0, init_std), output projections scaled down by sqrt(2 * n_layers)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue  # norm weights stay 1
            scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight", "w2")) else 1
            nn.init.normal_(p, 0.0, std * scale)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.layers if isinstance(b.ffn, MoE)]

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> list[dict]:
        """One preallocated cache per layer: MLA keeps the latent + rope key, GQA keeps K and V."""
        dtype = dtype or self.embed.weight.dtype
        device = device or self.embed.weight.device
        return [b.attn.new_cache(batch, max_len, dtype, device) for b in self.layers]

    def forward(self, tokens, *, pos=None, key_mask=None, cache=None, start=0, absorb=None, routing=None,
                last_only=False, real=None) -> "ModelOutput":
        """tokens [B, T] -> ModelOutput: logits [B, T, V], the experts each MoE layer chose, the last hidden state.

        pos [B, T]: RoPE positions (default start..start+T-1; left-padded rows pass their own).
        key_mask [B, start+T] bool: which key slots hold real tokens (default: all).
        cache: from new_cache(); this call writes slots [start, start+T) and attends to [0, start+T).
        start: an int, or a 0-dim long tensor on the model's device for static shapes (needs cache, pos and a key_mask
            over all S cache slots; attends over every slot, the unwritten ones masked): no shape depends on the step
            and nothing syncs with the host, so the sampler can capture one decode step as a CUDA graph.
        absorb: MLA path; default absorbed when decoding with a cache (T == 1), naive otherwise.
        routing: list of [B, T, K] expert indices per MoE layer to replay (e.g. a previous output's .routing).
        last_only: logits for the last column only, [B, 1, V] (prefill needs no more).
        real [B, T] bool: which of these tokens are not padding, for the MoE load counts only (training mode; the
            routing-bias update must not follow padding, which differs between batch layouts and data-parallel
            ranks). Default: this call's columns of key_mask, else all (right padding: lm_loss passes it).
        """
        B, T = tokens.shape
        if torch.is_tensor(start) and (cache is None or pos is None or key_mask is None):
            raise ValueError("a tensor start (static shapes) needs cache, pos and key_mask [B, S] over all cache slots")
        if pos is None:
            if start + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
            pos = torch.arange(start, start + T, device=tokens.device).expand(B, T)
        if absorb is None:
            absorb = cache is not None and T == 1
        cos, sin, mask = self.attention_inputs(pos, key_mask, cache, start)
        if real is None and key_mask is not None and not torch.is_tensor(start):
            real = key_mask[:, start:start + T]                                  # [B, T]
        x = self.embed(tokens)                                                   # [B, T, D]
        chosen, m = [], 0
        for i, layer in enumerate(self.layers):
            replay = None
            if isinstance(layer.ffn, MoE) and routing is not None:
                replay, m = routing[m], m + 1
            x, idx = layer(x, cos, sin, mask, None if cache is None else cache[i], start, absorb, replay, real)
            if idx is not None:
                chosen.append(idx)
        logits = self.head(self.norm(x[:, -1:] if last_only else x))             # [B, T, V] ([B, 1, V])
        return ModelOutput(logits=logits, routing=chosen, hidden=x)

    def attention_inputs(self, pos, key_mask=None, cache=None, start=0):
        """cos, sin [B, T, R/2] at positions pos [B, T] (FAST_PATHS: rope_pairs' [B, T, 1, R] tables), and the
        attention mask [B, 1, T, S] (True = attend) for queries in slots start..start+T-1 (see attention_mask); None
        for plain causal attention (no cache, no padding), which SDPA then runs with is_causal=True, without building
        or reading a mask."""
        B, T = pos.shape
        if key_mask is None and cache is None and start == 0:
            mask = None if FAST_PATHS else causal_mask(T, pos.device)
        else:
            if key_mask is None:
                key_mask = torch.ones(B, start + T, dtype=torch.bool, device=pos.device)
            mask = attention_mask(key_mask, start, T)                            # [B, 1, T, S]
        cos, sin = self.cos[pos], self.sin[pos]                                 # [B, T, R/2]
        return (*rope_pairs(cos, sin), mask) if FAST_PATHS else (cos, sin, mask)

    def mtp_logits(self, hidden, tokens, *, pos=None, key_mask=None, real=None):
        """Depth-1 MTP: logits [B, T-1, V] for token i+2 from the last hidden state i (a forward's .hidden [B, T, D])
        and token i+1. pos, key_mask and real as given to that forward."""
        B, T = tokens.shape
        pos = torch.arange(T, device=tokens.device).expand(B, T) if pos is None else pos
        cos, sin, mask = self.attention_inputs(pos[:, :-1], None if key_mask is None else key_mask[:, :-1])
        mtp = self.mtp[0]
        x = mtp.eh_proj(torch.cat([mtp.hnorm(hidden[:, :-1]), mtp.enorm(self.embed(tokens[:, 1:]))], dim=-1))
        if real is None and key_mask is not None:
            real = key_mask
        x, _ = mtp.block(x, cos, sin, mask, real=None if real is None else real[:, 1:])   # position i reads token i+1
        return self.head(mtp.norm(x))

    @torch.no_grad()
    def update_routing_bias(self, gamma: float):
        """Auxiliary-loss-free balancing (V3 sec. 2.1.2): after an optimizer step, raise the bias of experts that got
        fewer tokens than average by gamma and lower the overloaded ones. Counts are summed over data-parallel ranks."""
        mtp_moes = [m.block.ffn for m in self.mtp if isinstance(m.block.ffn, MoE)]
        for moe in self.moe_layers() + mtp_moes:
            load = all_reduce_sum(moe.gate.load)
            moe.gate.bias += gamma * torch.sign(load.mean() - load)
            load.zero_()

    def num_params(self) -> dict:
        """total: every parameter but the MTP module; active: what one token touches (see module docstring)."""
        total = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("mtp."))
        routed = sum(m.w1.numel() + m.w2.numel() + m.w3.numel() for m in self.moe_layers())
        routed_active = sum((m.w1.numel() + m.w2.numel() + m.w3.numel()) * self.cfg.n_activated_experts
                            // self.cfg.n_routed_experts for m in self.moe_layers())
        embed = 0 if self.cfg.tie_embeddings else self.embed.weight.numel()
        return {"total_params": total, "active_params": total - routed + routed_active - embed}


# ----------------------------------------------------------------------------------------------------------------
# Decode on a CPU: one token per row, in fewer ops


class Decoder:
    """Transformer.forward for one new token per row over a cache (the sampler's decode step), with attention
    rewritten for a CPU, where a small decode step is per-op overhead (bench/compare_hf.py counts the ops):
      - all of a layer's attention projections in one matmul (weights concatenated once: GQA reuses fused_qkv's),
        q and k rotated in one apply_rope call, no module calls inside attention, and the RoPE tables and mask built
        once per step (Transformer.attention_inputs), not once per layer;
      - MLA attends in latent space over its cache, wkv_b absorbed into the query and the output with two bmm.
    The feed-forward layers run the model's own modules and expert paths: fusing their matmuls measured slower from
    ~8 rows up. Built once per generate() call from a float32 model (the weights must not change while it lives; the
    attention weights are copied, ~1/3 of a dense model). step() gives the logits, cache contents and expert choices
    of forward(..., last_only=True) in eval mode, to float32 rounding (tests/test_model.py).
    """

    def __init__(self, model: "Transformer"):
        self.model = model
        self.layers = [(b, self._pack(b.attn)) for b in model.layers]

    @staticmethod
    @torch.no_grad()
    def _pack(a) -> dict:
        """The attention weights of one layer, concatenated and transposed to [in, out]."""
        t = lambda w: w.detach().t().contiguous()  # noqa: E731
        if isinstance(a, GQA):  # inside fused_qkv (as in generate) its copy, else one made here
            L = {"qkv": a.wqkv if a.wqkv is not None else a.qkv_weights()}     # weight [(H + 2 Hk) Dh, D], bias
        else:
            H, nope, R, C = a.n_heads, a.nope, a.R, a.C
            kv, pe = a.wkv_a.weight.split([C, R])                               # [C, D], [R, D]
            if hasattr(a, "wq"):  # q_nope of every head, the latent, then the rope inputs: q's heads and k last
                qn, qp = a.wq.weight.view(H, nope + R, -1).split([nope, R], dim=1)
                L = {"proj": t(torch.cat([qn.flatten(0, 1), kv, qp.flatten(0, 1), pe]))}  # [D, H nope + C + (H+1) R]
            else:  # low-rank query: the first matmul makes its latent, a second one the query
                qn, qp = a.wq_b.weight.view(H, nope + R, -1).split([nope, R], dim=1)
                L = {"proj": t(torch.cat([a.wq_a.weight, kv, pe])),
                     "wq_b": t(torch.cat([qn.flatten(0, 1), qp.flatten(0, 1)]))}
            wkv_b = a.wkv_b.weight.detach().view(H, nope + a.dv, C)
            L["absorb_k"] = wkv_b[:, :nope].contiguous()                        # [H, nope, C]
            L["absorb_v"] = wkv_b[:, nope:].transpose(1, 2).contiguous()        # [H, C, dv]
        L["wo"] = t(a.wo.weight)                                                # [H Dv, D]
        return L

    @torch.no_grad()
    def step(self, tok, pos, key_mask, cache: list[dict], start: int):
        """tok [B] long (one new token per row), pos [B] its RoPE positions, key_mask [B, >= start+1] (real slots),
        cache from model.new_cache, written at slot start. -> logits [B, V] float32, routing: per MoE layer [B, K]."""
        model = self.model
        cos, sin, mask = model.attention_inputs(pos[:, None], key_mask, start=start)  # [B, 1, 1, R], [B, 1, 1, S]
        if not isinstance(self.layers[0][0].attn, GQA):  # MLA adds the mask to its scores: 0 or -inf, [B, 1, S]
            mask = torch.zeros(mask.shape, dtype=model.embed.weight.dtype).masked_fill_(~mask, float("-inf"))[:, 0]
        x = model.embed(tok)                                                    # [B, D]
        routing = []
        for (block, L), c in zip(self.layers, cache):
            attend = self._gqa if isinstance(block.attn, GQA) else self._mla
            x = x + attend(L, block.attn, block.attn_norm(x), c, start, cos, sin, mask)
            if isinstance(block.ffn, MoE):  # the experts as forward runs them (eval mode: no load counts)
                y, idx = block.ffn(block.ffn_norm(x)[:, None])                  # [B, 1, D], [B, 1, K]
                x = x + y[:, 0]
                routing.append(idx[:, 0])
            else:
                x = x + block.ffn(block.ffn_norm(x))
        return model.head(model.norm(x)), routing                               # [B, V]

    @staticmethod
    def _gqa(L, a: GQA, h, c, start, cos, sin, mask):
        B, H, Hk, Dh = h.size(0), a.n_heads, a.n_kv, a.hd
        p = F.linear(h, *L["qkv"])                                              # [B, (H + 2 Hk) Dh]
        qk = apply_rope(p[:, None, :(H + Hk) * Dh].view(B, 1, H + Hk, Dh), cos, sin)[:, 0]  # q and k: [B, H+Hk, Dh]
        c["k"][:, start] = qk[:, H:]
        c["v"][:, start] = p[:, (H + Hk) * Dh:].view(B, Hk, Dh)
        k, v = c["k"][:, :start + 1].transpose(1, 2), c["v"][:, :start + 1].transpose(1, 2)  # [B, Hk, S, Dh]
        q = qk[:, :H].view(B, Hk, H // Hk, Dh)                                  # query head h = kv * rep + r
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)          # [B, Hk, rep, Dh]
        return out.reshape(B, H * Dh) @ L["wo"]                                 # [B, D]

    @staticmethod
    def _mla(L, a: MLA, h, c, start, cos, sin, mask):
        B, H, nope, R, C = h.size(0), a.n_heads, a.nope, a.R, a.C
        p = h @ L["proj"]
        if "wq_b" in L:
            Lq = a.wq_a.out_features
            kv, k_pe = p[:, Lq:].split([C, R], dim=1)
            q_nope, q_pe = (a.q_norm(p[:, :Lq]) @ L["wq_b"]).split([H * nope, H * R], dim=1)
            pe = torch.cat([q_pe.view(B, H, R), k_pe[:, None]], 1)             # [B, H+1, R]
        else:
            q_nope, kv, pe = p.split([H * nope, C, (H + 1) * R], dim=1)
            pe = pe.view(B, H + 1, R)
        pe = apply_rope(pe[:, None], cos, sin)[:, 0]                            # RoPE: q's heads, then k
        c["kv"][:, start] = a.kv_norm(kv)
        c["pe"][:, start] = pe[:, H]
        kv, k_pe = c["kv"][:, :start + 1], c["pe"][:, :start + 1]               # [B, S, C], [B, S, R]
        q_lat = torch.bmm(q_nope.view(B, H, nope).transpose(0, 1), L["absorb_k"]).transpose(0, 1)  # [B, H, C]
        scores = torch.baddbmm(mask, q_lat, kv.transpose(1, 2), alpha=a.scale)          # [B, H, S]; mask additive
        scores = torch.baddbmm(scores, pe[:, :H], k_pe.transpose(1, 2), alpha=a.scale)
        out = torch.bmm(scores.softmax(-1), kv)                                  # [B, H, C]
        out = torch.bmm(out.transpose(0, 1), L["absorb_v"]).transpose(0, 1)     # [B, H, dv]
        return out.reshape(B, -1) @ L["wo"]                                     # [B, D]


def right_padded_real(loss_mask):
    """[B, T] bool: the real (non-pad) tokens of right-padded rows, each row through its last loss position."""
    return loss_mask.flip(1).cumsum(1).flip(1) > 0


def lm_loss(model: Transformer, tokens, loss_mask, *, pos=None, key_mask=None):
    """Next-token cross-entropy over positions where loss_mask [B, T] is set (mask of the *target* token), plus the
    MTP loss (weighted by mtp_loss_weight) and MoE balance losses when enabled. Returns (loss, stats).
    Without key_mask the rows are right-padded (sft.collate): each row's real tokens run through its last loss
    position, which is what the MoE load counts see."""
    real = right_padded_real(loss_mask) if key_mask is None else None
    out = model(tokens, pos=pos, key_mask=key_mask, real=real)
    logits = out.logits
    target_mask = loss_mask[:, 1:].float()                                       # [B, T-1]
    n = target_mask.sum().clamp(min=1)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    lm = (ce.view_as(target_mask) * target_mask).sum() / n
    loss, stats = lm, {"lm_loss": lm.item()}
    if model.cfg.n_mtp > 0 and model.training:
        mtp_mask = loss_mask[:, 2:].float()
        mtp_logits = model.mtp_logits(out.hidden, tokens, pos=pos, key_mask=key_mask, real=real)  # [B, T-1, V]
        mtp_ce = F.cross_entropy(mtp_logits[:, :-1].flatten(0, 1).float(),
                                 tokens[:, 2:].flatten(), reduction="none")
        mtp = (mtp_ce.view_as(mtp_mask) * mtp_mask).sum() / mtp_mask.sum().clamp(min=1)
        loss = loss + model.cfg.mtp_loss_weight * mtp
        stats["mtp_loss"] = mtp.item()
    aux = [m.aux_loss for m in model.moe_layers() if m.aux_loss is not None]
    if aux:
        loss = loss + sum(aux)
        stats["balance_loss"] = float(sum(a.item() for a in aux))
    return loss, stats


if __name__ == "__main__":
    # python -m nanor1.model PRESET: build on the meta device (no memory) and print the parameter counts
    name = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    with torch.device("meta"):
        model = Transformer(get_config(name))
    print(json.dumps({"preset": name, **model.num_params()}))
