"""Checkpoints: parity with transformers on tiny HF fixtures, exact round trips, atomic saves, clear errors.

The fixtures in tests/fixtures/ were made by dev/make_hf_fixtures.py with the transformers library (not needed
here): random DeepSeek-V3/V2, Qwen2 (tied, untied) and Llama models, their logits and greedy continuations.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import nanor1.checkpoint as ck
from nanor1.model import ModelConfig, Transformer, get_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HF_FIXTURES = ["deepseek_v3", "deepseek_v2", "qwen2_tied", "qwen2_untied", "llama"]
TOL = 1e-4


def reference(name):
    return load_file(FIXTURES / name / "reference.safetensors")


@torch.no_grad()
def max_logit_diff(model, ref):
    return (model(ref["input_ids"]).logits - ref["logits"]).abs().max().item()


def copy_fixture(name, tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def edit_weights(folder: Path, fn):
    """Rewrite model.safetensors through fn(dict) -> dict."""
    save_file(fn(load_file(folder / "model.safetensors")), folder / "model.safetensors")


def edit_config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


# ---- parity with transformers ----

@pytest.mark.parametrize("name", HF_FIXTURES)
@torch.no_grad()
def test_hf_parity(name):
    model, tok, train_state = ck.load(FIXTURES / name)
    model.eval()
    ref = reference(name)
    assert tok is None and train_state is None
    assert max_logit_diff(model, ref) < TOL

    # left-padded batch: nanor1 gets the same positions and a key mask; only real positions are compared
    mask = ref["padded_mask"].bool()
    logits = model(ref["padded_ids"], pos=ref["padded_pos"], key_mask=mask).logits
    assert (logits - ref["padded_logits"]).abs()[mask].max().item() < TOL

    ids = ref["input_ids"]
    for _ in range(ref["greedy"].size(1) - ids.size(1)):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids, ref["greedy"])


def test_parity_catches_layout_mistakes(monkeypatch):
    """The fixtures are sensitive: dropping the RoPE permute or the routing bias moves the logits far past TOL."""
    with monkeypatch.context() as m:
        m.setattr(ck, "half_to_interleaved", lambda w, n_heads: w)
        model, _, _ = ck.load(FIXTURES / "qwen2_untied")
        assert max_logit_diff(model, reference("qwen2_untied")) > 100 * TOL
    model, _, _ = ck.load(FIXTURES / "deepseek_v3")
    assert all(moe.gate.bias.abs().sum() > 0 for moe in model.moe_layers())
    for moe in model.moe_layers():
        moe.gate.bias.zero_()
    assert max_logit_diff(model, reference("deepseek_v3")) > 100 * TOL


def test_hf_config_spellings_agree():
    """rope_scaling (published) and rope_parameters (current transformers) translate to the same config."""
    published = json.loads((FIXTURES / "deepseek_v3" / "config.json").read_text())
    current = {k: v for k, v in published.items() if k not in ("rope_scaling", "rope_theta")}
    current["rope_parameters"] = {**published["rope_scaling"], "rope_type": "yarn",
                                  "rope_theta": published["rope_theta"]}
    cfg, n_mtp = ck.translate_hf_config(published)
    assert ck.translate_hf_config(current) == (cfg, n_mtp)
    assert cfg.max_seq_len > cfg.original_seq_len and cfg.rope_factor == 4.0  # YaRN active
    assert (cfg.routing_bias, cfg.score_func, cfg.n_expert_groups, cfg.n_limited_groups) == (True, "sigmoid", 4, 2)
    assert n_mtp == 1


# config.json of deepseek-ai/DeepSeek-V3 (without its fp8 quantization_config) and DeepSeek-V2-Lite, as published
PUBLISHED_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "attention_bias": False,
    "aux_loss_alpha": 0.001, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
    "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True, "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280}
PUBLISHED_V2_LITE = {
    **PUBLISHED_V3, "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "first_k_dense_replace": 1, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
    "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "routed_scaling_factor": 1.0, "scoring_func": "softmax", "topk_group": 1, "topk_method": "greedy",
    "vocab_size": 102400}
for key in ("ep_size", "num_nextn_predict_layers"):
    PUBLISHED_V2_LITE.pop(key)


def test_published_configs_match_presets():
    """The loader reads the published DeepSeek configs as exactly model.py's presets (MTP is skipped)."""
    assert ck.translate_hf_config(PUBLISHED_V3) == (get_config("deepseek-v3", n_mtp=0), 1)
    assert ck.translate_hf_config(PUBLISHED_V2_LITE) == (get_config("deepseek-v2-lite"), 0)


def test_sharded_index(tmp_path):
    folder = copy_fixture("deepseek_v3", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for k, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]]):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, _, _ = ck.load(folder)
    assert max_logit_diff(model, reference("deepseek_v3")) < TOL

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        ck.load(folder)


def test_mtp_layers_are_skipped(tmp_path):
    """A DeepSeek checkpoint stores its MTP module as layer n_layers; the loader skips it (n_mtp=0)."""
    folder = copy_fixture("deepseek_v3", tmp_path)
    extra = {"model.layers.2.eh_proj.weight": torch.randn(32, 64),
             "model.layers.2.self_attn.q_a_proj.weight": torch.randn(24, 32)}
    edit_weights(folder, lambda t: {**t, **extra})
    model, _, _ = ck.load(folder)
    assert model.cfg.n_mtp == 0 and max_logit_diff(model, reference("deepseek_v3")) < TOL
    edit_config(folder, num_nextn_predict_layers=0)
    with pytest.raises(ValueError, match=r"unexpected key.*model\.layers\.2\."):
        ck.load(folder)


def test_hf_to_nanor1_conversion_is_exact(tmp_path):
    model, _, _ = ck.load(FIXTURES / "qwen2_tied")
    ck.save(tmp_path / "converted", model)
    again, _, _ = ck.load(tmp_path / "converted")
    ref = reference("qwen2_tied")
    with torch.no_grad():
        assert torch.equal(model(ref["input_ids"]).logits, again(ref["input_ids"]).logits)
    assert again.head.weight is again.embed.weight


# ---- nanor1 round trips ----

def tiny_moe():
    return ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=32, q_lora_rank=16, kv_lora_rank=16,
                       qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, inter_dim=48, n_routed_experts=4,
                       n_activated_experts=2, moe_inter_dim=16, n_expert_groups=2, n_limited_groups=1, n_mtp=1)


def tiny_gqa_tied():
    return ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, attn="gqa",
                       qkv_bias=True, inter_dim=48, n_routed_experts=0, tie_embeddings=True, max_seq_len=32,
                       original_seq_len=32)


@pytest.mark.parametrize("make_cfg,dtype", [(tiny_moe, torch.float32), (tiny_gqa_tied, torch.float32),
                                             (tiny_moe, torch.bfloat16)])
def test_roundtrip_is_bit_identical(tmp_path, make_cfg, dtype):
    torch.manual_seed(0)
    model = Transformer(make_cfg())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 64, (2, 10))
    model(tokens).logits.float().logsumexp(-1).mean().backward()
    opt.step()
    for moe in model.moe_layers():
        moe.gate.bias.normal_()  # the balancing bias is a buffer: it must round-trip too
    model = model.to(dtype)
    train_state = {"optimizer": opt.state_dict(), "step": 7, "rng": torch.get_rng_state(), "data": {"epoch": 1}}
    ck.save(tmp_path / "ckpt", model, train_state=train_state, extra={"stage": "sft", "args": {"lr": 1e-3}})

    loaded, tok, state = ck.load(tmp_path / "ckpt")
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)
    assert tok is None and state["step"] == 7 and torch.equal(state["rng"], train_state["rng"])
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])  # the optimizer state fits the loaded parameters
    assert ck.read_extra(tmp_path / "ckpt") == {"stage": "sft", "args": {"lr": 1e-3}}
    if model.cfg.tie_embeddings:
        with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
            assert "head.weight" not in f.keys()
        assert loaded.head.weight is loaded.embed.weight


def test_dtype_cast_keeps_routing_bias_float32(tmp_path):
    ck.save(tmp_path / "ckpt", Transformer(tiny_moe()))
    model, _, _ = ck.load(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    assert all(moe.gate.bias.dtype == torch.float32 for moe in model.moe_layers())


def test_tokenizer_roundtrip(tmp_path):
    tokenizer = pytest.importorskip("nanor1.tokenizer")
    tok = tokenizer.train_bpe(["12 + 34 = 46", "the answer is 7"] * 20, vocab_size=300)
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()), tokenizer=tok)
    _, loaded, _ = ck.load(tmp_path / "ckpt")
    assert loaded.encode("12 + 34") == tok.encode("12 + 34") and loaded.eos_id == tok.eos_id


# ---- atomic saves ----

def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    first, second = Transformer(tiny_gqa_tied()), Transformer(tiny_gqa_tied())
    ck.save(tmp_path / "ckpt", first, train_state={"step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")
    with monkeypatch.context() as m:
        m.setattr(torch, "save", crash)  # dies after model.safetensors of the new checkpoint was written
        with pytest.raises(OSError, match="disk full"):
            ck.save(tmp_path / "ckpt", second, train_state={"step": 2})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no partial folder left behind
    loaded, _, state = ck.load(tmp_path / "ckpt")
    assert state == {"step": 1}
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), loaded.state_dict().values()))

    # a hard crash leaves the temporary folder behind: the next save replaces it
    (tmp_path / ".ckpt.tmp").mkdir()
    (tmp_path / ".ckpt.tmp" / "model.safetensors").write_bytes(b"half")
    ck.save(tmp_path / "ckpt", second, train_state={"step": 2})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and ck.load(tmp_path / "ckpt")[2] == {"step": 2}


def test_crash_between_renames_points_to_previous(tmp_path, monkeypatch):
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()), train_state={"step": 1})
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old checkpoint was moved aside, the new one not yet moved in
            raise OSError("power cut")
        real_replace(src, dst)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace_then_crash)
        with pytest.raises(OSError, match="power cut"):
            ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()), train_state={"step": 2})
    with pytest.raises(FileNotFoundError, match=r"previous checkpoint at .*\.ckpt\.old"):
        ck.load(tmp_path / "ckpt")
    assert ck.load(tmp_path / ".ckpt.old")[2] == {"step": 1}  # complete
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()), train_state={"step": 3})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_only_rank0_writes(tmp_path, monkeypatch):
    barriers = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1))
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()))
    assert not (tmp_path / "ckpt").exists() and barriers == [1]
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 0)
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()))
    assert (tmp_path / "ckpt" / "model.safetensors").is_file() and barriers == [1, 1]


# ---- clear errors ----

def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ck.load(tmp_path / "empty")


def test_missing_unexpected_and_misshaped_keys(tmp_path):
    folder = copy_fixture("deepseek_v3", tmp_path)
    edit_weights(folder, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.experts.3.up_proj.weight"})
    with pytest.raises(ValueError, match=r"missing key.*model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight"):
        ck.load(folder)

    folder = copy_fixture("qwen2_untied", tmp_path)
    edit_weights(folder, lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match=r"missing key.*lm_head\.weight"):
        ck.load(folder)
    edit_weights(folder, lambda t: {**t, "lm_head.weight": torch.zeros(128, 32),
                                    "model.layers.0.self_attn.o_proj.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"unexpected key.*model\.layers\.0\.self_attn\.o_proj\.bias"):
        ck.load(folder)
    edit_weights(folder, lambda t: {k: v for k, v in t.items() if not k.endswith("o_proj.bias")})
    edit_config(folder, intermediate_size=48)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight has shape"):
        ck.load(folder)


@pytest.mark.parametrize("changes,error,match", [
    (dict(architectures=["GPT2LMHeadModel"]), NotImplementedError, "unsupported architecture"),
    (dict(moe_layer_freq=2), NotImplementedError, "moe_layer_freq"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
                        "mscale_all_dim": 0.5}), NotImplementedError, "mscale"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "mscale": 1.0,
                        "mscale_all_dim": 1.0}), NotImplementedError, "original_max_position_embeddings"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), NotImplementedError, "llama3"),
    (dict(topk_method="random"), NotImplementedError, "topk_method"),
    (dict(quantization_config={"quant_method": "fp8"}), NotImplementedError, "fp8"),
    (dict(kv_lora_rank=None), ValueError, "kv_lora_rank"),
])
def test_unsupported_hf_configs(tmp_path, changes, error, match):
    folder = copy_fixture("deepseek_v3", tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(error, match=match):
        ck.load(folder)


def test_nanor1_config_typo(tmp_path):
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()))
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["n_layer"] = cfg.pop("n_layers")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*unknown ModelConfig key.*n_layer"):
        ck.load(tmp_path / "ckpt")


def test_nanor1_shape_mismatch(tmp_path):
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()))
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**cfg, "inter_dim": 64}))
    with pytest.raises(ValueError, match=r"layers\.0\.ffn\.w1\.weight has shape \(48, 32\)"):
        ck.load(tmp_path / "ckpt")
