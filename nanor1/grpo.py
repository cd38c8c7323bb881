"""GRPO: the RL objective of DeepSeek-R1 (eq. 1-3), from DeepSeekMath (Shao et al. 2024, eq. 3).

For each question q the old policy samples a group of G completions o_1..o_G, each gets a scalar reward r_i,
and the policy maximises

    J(θ) = 1/G Σ_i 1/|o_i| Σ_t [ min(ρ_it·A_i, clip(ρ_it, 1-ε, 1+ε)·A_i) - β·KL_it ]         (R1 eq. 1)
    ρ_it  = π_θ(o_it | q, o_i<t) / π_old(o_it | q, o_i<t)                     (per-token probability ratio)
    KL_it = π_ref/π_θ - log(π_ref/π_θ) - 1            (R1 eq. 2; Schulman's "k3" estimator of KL(π_θ‖π_ref))
    A_i   = (r_i - mean(r_1..r_G)) / std(r_1..r_G)                                                (R1 eq. 3)

There is no value network: the group mean is the baseline. The KL to the frozen reference model is a term of the
loss, not a per-token penalty folded into the reward as in PPO-RLHF. k3 is non-negative and unbiased under samples
from π_θ, and has far lower variance than -log ρ. We minimise loss = -J.

Where this file departs from the paper, or adds options (all off by default unless stated):
- Ratios are per token, as in DeepSeekMath eq. 3. R1's eq. 1 writes π_θ(o_i|q)/π_old(o_i|q) for the whole
  output; read literally, that is a product of |o_i| token ratios and would sit outside the clip range almost always.
- std is the *unbiased* sample std (Bessel, ddof=1): the paper writes std() without saying which; torch.std, TRL
  and verl all use the unbiased one, so our advantages match theirs. We add eps=1e-6 to the denominator, and a
  group whose rewards are all equal gets exactly 0 advantage (it carries no learning signal; without the explicit
  zero, mean() rounding could leave ±1e-17 / eps noise). A group of one completion also gets 0.
- `scale="none"` (Dr. GRPO, Liu et al. 2025): A_i = r_i - mean, no std division, which otherwise up-weights
  questions that are almost always or almost never solved. `scale="batch"`: divide by the std of the whole batch.
- `eps_low` / `eps_high` may differ ("clip-higher", DAPO, Yu et al. 2025): a larger eps_high lets rare tokens
  with A > 0 grow more before the clip stops them, which slows entropy collapse. Paper: eps_low = eps_high.
- `beta=0` drops the KL term and the reference model (DAPO, Dr. GRPO); `ref_logp` may then be None.
- `loss_agg`, how token losses become one number:
    "seq-mean-token-mean"      (paper)     mean over each sequence's tokens, then mean over sequences;
    "token-mean"               (DAPO)      sum over all tokens / number of tokens, so long answers weigh more;
    "seq-mean-token-sum-norm"  (Dr. GRPO)  each sequence's token sum / max_len (a constant), then mean over
                                           sequences, removing the 1/|o_i| length bias.
  Sequences with no completion token (e.g. masked by `mask_truncated`) are left out of the sequence mean, as in
  verl's loss_agg_mode of the same names.
- Helpers for the training script: `filter_groups` (DAPO dynamic sampling), `overlong_penalty` (DAPO soft
  overlong punishment), `mask_truncated` (DAPO overlong filtering: no loss on truncated completions).

Gradient accumulation and data parallelism: the default normalisers (sequences, tokens) are counted on the tensors
passed in. To split a batch into micro-batches (or across ranks) and still get exactly the full-batch loss and
gradient, count them once on the whole batch with `loss_counts` (all-reduce the counts across ranks) and pass them
as `num_seqs` / `num_tokens`; then the micro-batch losses sum to the full-batch loss. DDP *averages* gradients over
ranks, so multiply each rank's loss by the world size there.

Shapes: N questions, G completions per question, B = N·G sequences, T completion tokens (padded).
"""

import math
from dataclasses import dataclass

import torch

from nanor1.fsdp import all_reduce_sum
from nanor1.sampler import DECODE_MODES

LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
ADV_SCALES = ("group", "none", "batch")
OVERLONG = ("none", "mask", "penalty")


# ---- advantages (R1 eq. 3) ----

def group_advantages(rewards: torch.Tensor, *, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages: (r - group mean) / (std + eps) per row. rewards [N, G] -> [N, G]."""
    if scale not in ADV_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; options: {', '.join(ADV_SCALES)}")
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [N, G] (questions x group), got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; a reward function must return a finite number")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))   # [N, G]
    if r.shape[1] == 1:                                # one sample per question: no baseline, no signal
        return torch.zeros_like(r)
    centred = r - r.mean(dim=1, keepdim=True)          # [N, G]
    if scale == "group":
        adv = centred / (r.std(dim=1, keepdim=True) + eps)   # unbiased std, per group [N, 1]
    elif scale == "batch":
        adv = centred / (r.std() + eps)                # unbiased std over all N·G rewards
    else:
        adv = centred                                  # Dr. GRPO: no std scaling
    same = (r == r[:, :1]).all(dim=1, keepdim=True)    # [N, 1] all rewards equal in the group
    return torch.where(same, torch.zeros_like(adv), adv)


# ---- the clipped surrogate with KL (R1 eq. 1-2) ----

def loss_counts(mask: torch.Tensor) -> tuple[int, int]:
    """Normalisers of a whole batch: (sequences with >= 1 completion token, completion tokens). mask [B, T]."""
    mask = mask.bool()
    return int(mask.any(dim=1).sum()), int(mask.sum())


def _denominator(override, default: torch.Tensor) -> torch.Tensor:
    # clamp at 1: an all-padding batch gives loss 0 (0 / 1), not 0 / 0 = NaN
    d = default if override is None else torch.as_tensor(override, dtype=default.dtype, device=default.device)
    return d.clamp(min=1)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    loss_agg: str = "seq-mean-token-mean",
    max_len: int | None = None,
    num_seqs: int | torch.Tensor | None = None,
    num_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss (-J of R1 eq. 1) and detached 0-d stats.

    logp [B, T]: log π_θ of the sampled tokens (with grad). old_logp [B, T]: log π_old, no grad (None = on-policy,
    i.e. logp.detach(), ratio 1). ref_logp [B, T]: log π_ref (None allowed when beta == 0). advantages [B].
    mask [B, T]: 1 on completion tokens; values under mask 0 are ignored (may be NaN/inf).
    loss_agg: one of LOSS_AGGS; max_len is required for "seq-mean-token-sum-norm".
    num_seqs / num_tokens: whole-batch counts from `loss_counts`, for micro-batching / data parallelism.
    Stats: clip_frac (clip active: the clipped term chosen and different), clip_frac_low / clip_frac_high
    (A < 0, ρ < 1-eps_low / A > 0, ρ > 1+eps_high), kl (token mean of k3, when ref_logp is given),
    ratio_min / ratio_mean / ratio_max, all over this call's completion tokens.
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; options: {', '.join(LOSS_AGGS)}")
    if loss_agg == "seq-mean-token-sum-norm" and not max_len:
        raise ValueError("loss_agg='seq-mean-token-sum-norm' needs max_len (the generation length limit)")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (the reference model's log-probs); pass beta=0 to drop KL")
    if logp.ndim != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp and mask must both be [B, T]; got {tuple(logp.shape)} and {tuple(mask.shape)}")
    for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if x is not None and x.shape != logp.shape:
            raise ValueError(f"{name} must have logp's shape {tuple(logp.shape)}, got {tuple(x.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logp.shape[0]}], got {tuple(advantages.shape)}")

    dtype = torch.promote_types(logp.dtype, torch.float32)   # bf16 log-probs are upcast: exp() of a bf16 diff is coarse
    mask = mask.bool()
    # Select 0 at padding *before* any arithmetic: where() sends exactly zero gradient to the unselected side,
    # so NaN/inf padding can reach neither the loss nor the gradient (multiplying by the mask would: 0·NaN = NaN).
    logp = torch.where(mask, logp.to(dtype), 0.0)                                             # [B, T]
    old_logp = logp.detach() if old_logp is None else torch.where(mask, old_logp.detach().to(dtype), 0.0)
    adv = advantages.detach().to(dtype)[:, None]                                              # [B, 1]

    ratio = torch.exp(logp - old_logp)                                                        # [B, T] ρ
    surr = ratio * adv                                                                        # [B, T]
    surr_clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv                    # [B, T]
    # the pessimistic (smaller) objective; where the clipped term wins and differs, the gradient is 0
    per_token = -torch.minimum(surr, surr_clipped)                                            # [B, T]
    kl = None
    if ref_logp is not None:
        log_ref_over_pi = torch.where(mask, ref_logp.detach().to(dtype), 0.0) - logp          # [B, T] log π_ref/π_θ
        kl = torch.exp(log_ref_over_pi) - log_ref_over_pi - 1.0                               # [B, T] k3 >= 0
        if beta > 0:
            per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, 0.0)                                             # [B, T]

    tokens_per_seq = mask.sum(dim=1)                                                          # [B]
    if loss_agg == "token-mean":
        loss = per_token.sum() / _denominator(num_tokens, tokens_per_seq.sum().to(dtype))
    else:
        seq_sum = per_token.sum(dim=1)                                                        # [B]
        if loss_agg == "seq-mean-token-mean":
            seq_loss = seq_sum / tokens_per_seq.clamp(min=1)                                  # [B]
        else:
            seq_loss = seq_sum / max_len                                                      # [B]
        loss = seq_loss.sum() / _denominator(num_seqs, (tokens_per_seq > 0).sum().to(dtype))

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        clipped = (surr_clipped < surr) & mask                                                # [B, T]
        any_token = mask.any()
        one = ratio.new_ones(())
        stats = {
            "clip_frac": clipped.sum() / n,
            "clip_frac_low": (clipped & (ratio < 1)).sum() / n,
            "clip_frac_high": (clipped & (ratio > 1)).sum() / n,
            "ratio_mean": torch.where(mask, ratio, 0.0).sum() / n,
            "ratio_min": torch.where(any_token, ratio.masked_fill(~mask, float("inf")).amin(), one),
            "ratio_max": torch.where(any_token, ratio.masked_fill(~mask, float("-inf")).amax(), one),
        }
        if kl is not None:
            stats["kl"] = torch.where(mask, kl, 0.0).sum() / n
    return loss, stats


# ---- options used by the training scripts (DAPO) ----

def filter_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling (DAPO): keep mask [N] of groups whose rewards are not all equal. rewards [N, G]."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [N, G], got shape {tuple(rewards.shape)}")
    return (rewards != rewards[:, :1]).any(dim=1)     # an all-equal group has A = 0: no gradient, only noise


def overlong_penalty(lengths, max_len: int, buffer: int) -> torch.Tensor:
    """Soft overlong punishment (DAPO): 0 up to max_len - buffer, linear to -1 at max_len, -1 beyond.

    lengths [B] (completion tokens) -> [B] float, added to the task reward.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}], got {buffer}")
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    return ((max_len - buffer - lengths) / buffer).clamp(min=-1.0, max=0.0)


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering (DAPO): zero the loss mask [B, T] of completions cut at the length limit (truncated [B])."""
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be [B] = [{mask.shape[0]}], got {tuple(truncated.shape)}")
    return torch.where(truncated.bool()[:, None], torch.zeros_like(mask), mask)


# ---- the knobs of a GRPO run, validated once (train_zero.py and train_r1.py run the step itself) ----

@dataclass
class GRPOConfig:
    group_size: int = 8               # G completions per question
    max_new_tokens: int = 160
    temperature: float = 1.0          # sampling temperature; the trainer scores log softmax(logits / temperature)
    top_p: float = 1.0                # keep 1.0 in RL: truncation makes the samples off-policy (see sampler.py)
    mu: int = 1                       # GRPO iterations per batch (DeepSeekMath's mu); each is one pass over the batch
    minibatches: int = 1              # optimizer steps per pass
    micro_batch: int = 64             # sequences per forward/backward (gradient accumulation)
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0                 # KL weight; > 0 needs a reference model
    loss_agg: str = "token-mean"
    adv_scale: str = "group"
    dynamic_sampling: bool = False    # DAPO: drop groups whose rewards are all equal, refill with new questions
    max_refills: int = 3
    overlong: str = "none"            # "none", "mask" (no loss on truncated completions), "penalty" (DAPO soft)
    overlong_buffer: int = 32
    grad_clip: float = 1.0
    bias_update_speed: float = 1e-3   # gamma of auxiliary-loss-free MoE balancing
    replay_routing: bool = False      # MoE: the trainer reuses the experts the sampler chose for every token
    decode_mode: str = "eager"        # the sampler's decode step: "eager", "static" or "cuda_graph" (sampler.py)

    def __post_init__(self):
        """Every enumerated field is checked against its options and every number against its range, so a typo
        fails at start-up, not after an hour (overlong="masked" would otherwise silently mean "none")."""
        enums = {"loss_agg": LOSS_AGGS, "adv_scale": ADV_SCALES, "overlong": OVERLONG, "decode_mode": DECODE_MODES}
        for name, options in enums.items():
            if getattr(self, name) not in options:
                raise ValueError(f"GRPOConfig.{name} must be one of {options}, got {getattr(self, name)!r}")
        for name in ("group_size", "max_new_tokens", "mu", "minibatches", "micro_batch", "overlong_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GRPOConfig.{name} must be an int >= 1, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"GRPOConfig.group_size must be >= 2: a group of one has no baseline, so every "
                             f"advantage is 0 and nothing is trained (got {self.group_size})")
        if isinstance(self.max_refills, bool) or not isinstance(self.max_refills, int) or self.max_refills < 0:
            raise ValueError(f"GRPOConfig.max_refills must be an int >= 0, got {self.max_refills!r}")
        checks = {"temperature": self.temperature > 0, "top_p": 0 < self.top_p <= 1, "eps_low": 0 <= self.eps_low < 1,
                  "eps_high": self.eps_high >= 0, "beta": self.beta >= 0, "grad_clip": self.grad_clip >= 0,
                  "bias_update_speed": self.bias_update_speed >= 0}
        ranges = {"temperature": "> 0", "top_p": "in (0, 1]", "eps_low": "in [0, 1)", "eps_high": ">= 0",
                  "beta": ">= 0", "grad_clip": ">= 0 (0: no clipping)", "bias_update_speed": ">= 0"}
        for name, ok in checks.items():
            if not ok or not math.isfinite(getattr(self, name)):
                raise ValueError(f"GRPOConfig.{name} must be {ranges[name]}, got {getattr(self, name)!r}")
        if self.overlong == "penalty" and self.overlong_buffer > self.max_new_tokens:
            raise ValueError(f"overlong_buffer ({self.overlong_buffer}) must be <= max_new_tokens "
                             f"({self.max_new_tokens})")


def global_counts(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, tokens) of a loss mask [B, T], summed over data-parallel ranks, so every rank normalises its loss
    by the global batch (the bug verl#5625 fixed late: per-rank normalisers bias the gradient)."""
    seqs, toks = loss_counts(mask)
    counts = all_reduce_sum(torch.tensor([seqs, toks], dtype=torch.float64, device=mask.device))
    return counts[0], counts[1]


def minibatches(n_rows: int, n_minibatches: int, *, shuffle: bool, seed: int) -> list[torch.Tensor]:
    """Row indices of each optimizer step of one pass over the batch: cut into n_minibatches parts, after a seeded
    shuffle when the batch is seen more than once (mu > 1)."""
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n_rows)
    return list(order.chunk(n_minibatches))


class StepStats:
    """Token-weighted means of the per-micro-batch stats of grpo_loss (ratio_min / ratio_max: min / max)."""

    def __init__(self):
        self.rows: list[tuple[float, dict]] = []

    def add(self, weight: float, stats: dict):
        self.rows.append((weight, {k: float(v) for k, v in stats.items()}))

    def summary(self) -> dict:
        total = sum(w for w, _ in self.rows) or 1.0
        out = {}
        for key in self.rows[0][1] if self.rows else ():
            values = [s[key] for _, s in self.rows]
            out[key] = (min(values) if key == "ratio_min" else max(values) if key == "ratio_max"
                        else sum(w * s[key] for w, s in self.rows) / total)
        return out
