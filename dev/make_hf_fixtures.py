"""
Make the tiny HuggingFace-format fixtures that tests/test_checkpoint.py loads with nanor1.checkpoint.load.

Each fixture is a random model built with the transformers library (the independent reference), saved as a
HuggingFace folder (config.json + model.safetensors) next to reference.safetensors: the inputs, the reference logits
(float32) and a greedy continuation. The test then checks that nanor1 reproduces the logits and the continuation.

transformers is a development tool only, never a runtime or test dependency. Run (from the repo root):
    python -m venv .ref-venv && .ref-venv/bin/pip install torch==2.13.0 transformers safetensors
    .ref-venv/bin/python dev/make_hf_fixtures.py

Weights are drawn with a larger spread than the default init (norm gains around 1, biases and the routing bias
random) so that a layout mistake (a wrong RoPE permute, a swapped expert weight, an ignored routing bias) moves the
logits far beyond the test's tolerance. Some configs are written the way the published checkpoints spell them
(rope_theta + rope_scaling), others the way current transformers writes them (rope_parameters); the script reloads
every folder with transformers and checks it gives the same logits, so each config.json means what was measured.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
VOCAB, PROMPT_LEN, NEW_TOKENS = 128, 12, 8
PAD_LENGTHS = (12, 9, 5)  # real tokens per row of the left-padded batch

COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, rms_norm_eps=1e-6, hidden_act="silu",
              initializer_range=0.02, attention_dropout=0.0, bos_token_id=0, eos_token_id=1, pad_token_id=None)

# DeepSeek-V3: MLA with a low-rank query, sigmoid routing with the balancing bias, 4 groups keep 2, YaRN active
# (max_position_embeddings > original_max_position_embeddings), one dense layer first. Published spelling.
DEEPSEEK_V3 = dict(COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                   intermediate_size=64, moe_intermediate_size=16, num_attention_heads=4, num_key_value_heads=4,
                   n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2, ep_size=1,
                   routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=8,
                   qk_nope_head_dim=8, topk_method="noaux_tc", n_group=4, topk_group=2, moe_layer_freq=1,
                   first_k_dense_replace=1, norm_topk_prob=True, scoring_func="sigmoid", aux_loss_alpha=0.001,
                   seq_aux=True, num_nextn_predict_layers=1, max_position_embeddings=128, pretraining_tp=1,
                   tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False, torch_dtype="float32",
                   rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})

# DeepSeek-V2: plain query (q_lora_rank null), softmax routing without bias, group-limited greedy, YaRN with
# mscale 0.707 (as V2-Lite). Current transformers spelling (rope_parameters).
DEEPSEEK_V2 = dict(COMMON, architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
                   intermediate_size=64, moe_intermediate_size=16, num_attention_heads=4, num_key_value_heads=4,
                   n_shared_experts=2, n_routed_experts=8, num_experts_per_tok=3, routed_scaling_factor=1.5,
                   kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=8, qk_nope_head_dim=8,
                   topk_method="group_limited_greedy", n_group=4, topk_group=2, first_k_dense_replace=1,
                   norm_topk_prob=False, max_position_embeddings=256, tie_word_embeddings=False,
                   attention_bias=False, mlp_bias=False,
                   rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                                    "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
                                    "mscale": 0.707, "mscale_all_dim": 0.707})

# Qwen2 (the R1-Distill-Qwen students): GQA with q/k/v biases, rotate-half RoPE layout in the checkpoint.
QWEN2_TIED = dict(COMMON, architectures=["Qwen2ForCausalLM"], model_type="qwen2", intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0,
                  tie_word_embeddings=True, use_sliding_window=False, sliding_window=64, max_window_layers=2,
                  torch_dtype="float32")  # published spelling
QWEN2_UNTIED = dict(COMMON, architectures=["Qwen2ForCausalLM"], model_type="qwen2", intermediate_size=64,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6})

# Llama: GQA without biases, head_dim * heads != hidden_size.
LLAMA = dict(COMMON, architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=48,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
             tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0})

# Llama 3.1 (the R1-Distill-Llama students): llama3 RoPE scaling with Llama 3.1's factors, published spelling.
# head_dim 16 at theta 5e5 has wavelengths 6.3, 32, 168, 869, ... tokens: against original 64 (wavelength bounds
# 64/4 = 16 and 64/1 = 64) the first pair is kept, the second blended, the other six slowed 8x, so ignoring the
# scaling moves the logits far (checked below).
LLAMA3 = dict(COMMON, architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=48,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
              tie_word_embeddings=False, attention_bias=False, mlp_bias=False, rope_theta=500000.0,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64})

FIXTURES = {"deepseek_v3": DEEPSEEK_V3, "deepseek_v2": DEEPSEEK_V2, "qwen2_tied": QWEN2_TIED,
            "qwen2_untied": QWEN2_UNTIED, "llama": LLAMA, "llama3": LLAMA3}


@torch.no_grad()
def randomise(model, gen):
    """Spread the weights: matrices N(0, 0.15), norm gains 1 + N(0, 0.2), biases N(0, 0.2), routing bias N(0, 0.1)."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def left_padded_batch(gen):
    """ids, attention_mask, position_ids [B, T] with rows of PAD_LENGTHS real tokens, padded on the left."""
    T = max(PAD_LENGTHS)
    ids = torch.randint(2, VOCAB, (len(PAD_LENGTHS), T), generator=gen)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(PAD_LENGTHS):
        mask[b, T - n:] = 1
    ids = ids.masked_fill(mask == 0, 0)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@torch.no_grad()
def greedy(model, prompt, n):
    """n greedy tokens by re-running the full sequence each step; also the smallest top-1 vs top-2 logit gap."""
    ids, min_gap = prompt, float("inf")
    for _ in range(n):
        last = model(ids).logits[:, -1]
        top2 = last.topk(2, dim=-1).values
        min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, min_gap


@torch.no_grad()
def make(name, cfg_dict, seed):
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    config = transformers.AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    gen = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    randomise(model, gen)
    model.save_pretrained(folder)
    for extra in folder.iterdir():  # keep only what a loader reads
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")  # the spelling chosen above

    prompt = torch.randint(2, VOCAB, (1, PROMPT_LEN), generator=gen)
    ids, mask, pos = left_padded_batch(gen)
    logits = model(prompt).logits
    padded_logits = model(ids, attention_mask=mask, position_ids=pos).logits
    continuation, min_gap = greedy(model, prompt, NEW_TOKENS)
    if min_gap < 1e-3:
        raise SystemExit(f"{name}: greedy top-2 gap {min_gap:.2e} too small to compare; change the seed")

    # the folder as written must mean the same model to transformers
    again = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    diff = (again(prompt).logits - logits).abs().max().item()
    if diff > 1e-6:
        raise SystemExit(f"{name}: reloaded folder differs from the in-memory model by {diff:.2e}")
    scaling = cfg_dict.get("rope_scaling") or cfg_dict.get("rope_parameters") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":  # the scaling must matter here
        plain = {k: v for k, v in cfg_dict.items() if k not in ("rope_scaling", "rope_parameters", "architectures")}
        plain["rope_theta"] = scaling.get("rope_theta", cfg_dict.get("rope_theta", 10000.0))
        unscaled = AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**plain),
                                                    attn_implementation="eager", dtype=torch.float32).eval()
        unscaled.load_state_dict(model.state_dict())
        moved = (unscaled(prompt).logits - logits).abs().max().item()
        print(f"{name:14s} without its RoPE scaling the logits move by {moved:.3f}")

    save_file({"input_ids": prompt, "logits": logits.float().contiguous(),
               "padded_ids": ids, "padded_mask": mask, "padded_pos": pos,
               "padded_logits": padded_logits.float().contiguous(), "greedy": continuation},
              folder / "reference.safetensors", metadata={"transformers": transformers.__version__})
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{name:14s} {size / 1024:7.1f} KiB  greedy gap {min_gap:.3f}  |logits| max {logits.abs().max():.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    names = sys.argv[1:] or list(FIXTURES)
    for name in names:
        make(name, FIXTURES[name], seed=1000 + list(FIXTURES).index(name))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total {total / 1024:.1f} KiB in {OUT}")
