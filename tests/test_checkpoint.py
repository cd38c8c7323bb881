"""Checkpoints: parity with transformers on tiny HF fixtures, exact round trips, atomic saves, clear errors.

The fixtures in tests/fixtures/ were made by dev/make_hf_fixtures.py with the transformers library (not needed
here): random DeepSeek-V3/V2, Qwen2 (tied, untied), Llama and Llama 3.1 (llama3 RoPE) models, their logits and
greedy continuations.
"""
import dataclasses
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
from nanor1.model import ModelConfig, Transformer, get_config, rope_tables

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HF_FIXTURES = ["deepseek_v3", "deepseek_v2", "qwen2_tied", "qwen2_untied", "llama", "llama3"]
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
    model, _, _ = ck.load(FIXTURES / "llama3")  # plain RoPE tables instead of Llama 3.1's scaled ones
    assert model.cfg.rope_type == "llama3"
    plain = dataclasses.replace(model.cfg, rope_type="yarn", original_seq_len=model.cfg.max_seq_len)
    model.cos, model.sin = rope_tables(model.cfg.head_dim, plain)
    assert max_logit_diff(model, reference("llama3")) > 100 * TOL


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


def test_llama3_rope_config():
    """Llama 3.1's rope_scaling (published) and rope_parameters (current) agree; a missing factor is named."""
    published = json.loads((FIXTURES / "llama3" / "config.json").read_text())
    current = {k: v for k, v in published.items() if k not in ("rope_scaling", "rope_theta")}
    current["rope_parameters"] = {**published["rope_scaling"], "rope_theta": published["rope_theta"]}
    cfg, _ = ck.translate_hf_config(published)
    assert ck.translate_hf_config(current)[0] == cfg
    assert (cfg.rope_type, cfg.rope_factor, cfg.low_freq_factor, cfg.high_freq_factor, cfg.original_seq_len) == \
        ("llama3", 8.0, 1.0, 4.0, 64)
    del current["rope_parameters"]["low_freq_factor"]
    with pytest.raises(ValueError, match="low_freq_factor"):
        ck.translate_hf_config(current)


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
    # a crash while staging leaves the stage inside the folder: the previous checkpoint is intact, the next save
    # clears it
    (tmp_path / "ckpt" / ck.STAGE).mkdir()
    (tmp_path / "ckpt" / ck.STAGE / "model.safetensors").write_bytes(b"half")
    assert ck.load(tmp_path / "ckpt")[2] == {"step": 2}
    ck.save(tmp_path / "ckpt", first, train_state={"step": 3})
    assert ck.STAGE not in os.listdir(tmp_path / "ckpt") and ck.load(tmp_path / "ckpt")[2] == {"step": 3}


def weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_crash_at_any_point_of_a_save_leaves_previous_or_new(tmp_path, monkeypatch):
    """Crash at every rename and fsync of a save: find()/load() then give the previous or the new checkpoint, whole
    (weights and train_state of the same save), the user's files survive, and the next save leaves nothing behind."""
    torch.manual_seed(0)
    first, second = Transformer(tiny_gqa_tied()), Transformer(tiny_gqa_tied())
    real_replace, real_fsync = os.replace, os.fsync
    k, outcomes = 0, set()
    while True:
        folder = tmp_path / f"run{k}"
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
        (folder / "plots").mkdir()
        ck.save(folder, first, train_state={"step": 1})
        calls, committed = [], []

        def crash_at_k(real):
            def op(*args):
                calls.append(1)
                if len(calls) == k + 1:
                    raise OSError("power cut")
                real(*args)
                if real is real_replace and str(args[1]).endswith(ck.COMMITTED):
                    committed.append(1)
            return op
        with monkeypatch.context() as m:
            m.setattr(os, "replace", crash_at_k(real_replace))
            m.setattr(os, "fsync", crash_at_k(real_fsync))
            try:
                ck.save(folder, second, train_state={"step": 2})
                done = True
            except OSError as e:
                assert "power cut" in str(e)
                done = False
        assert ck.find(folder) == folder
        model, _, state = ck.load(folder)
        expect = 2 if committed else 1
        assert state == {"step": expect}, k
        assert weights_equal(model, second if expect == 2 else first), k
        assert (folder / "notes.txt").read_text() == "mine" and (folder / "plots").is_dir()
        outcomes.add(expect)
        ck.save(folder, first, train_state={"step": 3})
        assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "notes.txt", "plots",
                                              "train_state.pt"]
        if done:
            break
        k += 1
    assert outcomes == {1, 2} and k > 5  # crashes before and after the commit were both exercised


def test_save_writes_only_its_own_files(tmp_path, monkeypatch):
    """A save never deletes what it did not write: a run's notes, subfolders, metrics written before the save
    (pretrain.py's pattern), and the current folder (python -m nanor1.checkpoint SRC .)."""
    model = Transformer(tiny_gqa_tied())
    out = tmp_path / "base"
    out.mkdir()
    (out / "pretrain_metrics.jsonl").write_text('{"step": 0}\n')
    ck.save(out, model)
    ck.save(out, model, train_state={"step": 1})
    assert (out / "pretrain_metrics.jsonl").read_text() == '{"step": 0}\n'

    runs = tmp_path / "runs"  # pretrain.py --out runs used to wipe runs/zero
    (runs / "zero" / "checkpoint").mkdir(parents=True)
    (runs / "zero" / "metrics.jsonl").write_text("x")
    ck.save(runs / "zero" / "checkpoint", model)
    ck.save(runs, model)
    assert (runs / "zero" / "metrics.jsonl").read_text() == "x" and ck.find(runs / "zero" / "checkpoint")

    cwd = tmp_path / "cwd"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "notes.md").write_text("notes")
    monkeypatch.chdir(cwd)
    ck.save(".", model)
    assert (cwd / "notes.md").read_text() == "notes" and (cwd / "sub").is_dir()
    assert weights_equal(ck.load(".")[0], model)

    # a later save without tokenizer/train_state removes those files of the previous save (they were its own)
    tok = pytest.importorskip("nanor1.tokenizer").train_bpe(["1 + 2 = 3"] * 10, vocab_size=300)
    ck.save(out, model, tokenizer=tok, train_state={"step": 2})
    assert ck.load(out)[1] is not None
    ck.save(out, model)
    assert ck.load(out)[1:] == (None, None)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "pretrain_metrics.jsonl"]


def test_save_refuses_to_overwrite_foreign_files(tmp_path):
    hf = copy_fixture("qwen2_tied", tmp_path)
    before = {f.name: f.read_bytes() for f in hf.iterdir()}
    with pytest.raises(FileExistsError, match=r"not a nanor1 checkpoint.*refusing"):
        ck.save(hf, Transformer(tiny_gqa_tied()))
    assert {f.name: f.read_bytes() for f in hf.iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{my experiment settings")
    with pytest.raises(FileExistsError, match="config.json"):
        ck.save(tmp_path / "mine", Transformer(tiny_gqa_tied()))
    assert (tmp_path / "mine" / "config.json").read_text() == "{my experiment settings"


def test_find_recovers_an_interrupted_folder_swap(tmp_path):
    """Older saves swapped whole folders: a crash between the two renames left .ckpt.old and .ckpt.tmp (both
    complete) and no ckpt, and --resume used to start from step 0. find() puts the previous checkpoint back."""
    assert ck.find(tmp_path / "ckpt") is None
    ck.save(tmp_path / "a", Transformer(tiny_gqa_tied()), train_state={"step": 1})
    ck.save(tmp_path / "b", Transformer(tiny_gqa_tied()), train_state={"step": 2})
    os.replace(tmp_path / "a", tmp_path / ".ckpt.old")
    os.replace(tmp_path / "b", tmp_path / ".ckpt.tmp")
    assert ck.find(tmp_path / "ckpt") == tmp_path / "ckpt"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and ck.load(tmp_path / "ckpt")[2] == {"step": 1}
    # load() recovers too, from a relative path
    os.replace(tmp_path / "ckpt", tmp_path / ".ckpt.old")
    assert ck.load(tmp_path / "ckpt")[2] == {"step": 1}


def test_readers_wait_for_an_install(tmp_path):
    """load() reads under a shared lock, so it never sees a half-installed save (phase 3 holds the lock)."""
    import threading
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()), train_state={"step": 1})
    got = []
    with ck._lock(tmp_path / "ckpt", exclusive=True):
        reader = threading.Thread(target=lambda: got.append(ck.load(tmp_path / "ckpt")[2]))
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive() and not got
    reader.join()
    assert got == [{"step": 1}]


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


# ---- damaged or diverged checkpoints, bad arguments: errors that name the cause ----

def test_nonfinite_weights_are_refused(tmp_path):
    """A diverged run's NaN weights used to load and crash the sampler later ("index 424 is out of bounds")."""
    model = Transformer(tiny_moe())
    with torch.no_grad():
        model.layers[1].attn.wkv_b.weight[0, 0] = float("nan")
        model.layers[0].ffn.w1.weight[3, 1] = float("inf")
    ck.save(tmp_path / "ckpt", model)
    with pytest.raises(ValueError, match=r"non-finite.*layers\.0\.ffn\.w1\.weight \(in .*model\.safetensors\).*"
                                         r"layers\.1\.attn\.wkv_b\.weight"):
        ck.load(tmp_path / "ckpt")
    loaded, _, _ = ck.load(tmp_path / "ckpt", allow_nonfinite=True)
    assert loaded.layers[1].attn.wkv_b.weight[0, 0].isnan()

    folder = copy_fixture("llama", tmp_path)  # HF names in the message
    edit_weights(folder, lambda t: {**t, "model.norm.weight": t["model.norm.weight"] * float("inf")})
    with pytest.raises(ValueError, match=r"non-finite.*model\.norm\.weight"):
        ck.load(folder)


def test_damaged_files_are_named(tmp_path):
    tok = pytest.importorskip("nanor1.tokenizer").train_bpe(["1 + 2 = 3"] * 10, vocab_size=300)
    ck.save(tmp_path / "ckpt", Transformer(tiny_gqa_tied()), tokenizer=tok, train_state={"step": 1})
    folder = tmp_path / "ckpt"

    def damaged(name, fn):
        copy = tmp_path / f"damaged_{name}"
        shutil.copytree(folder, copy)
        (copy / name).write_bytes(fn((copy / name).read_bytes()))
        return copy
    cases = [("model.safetensors", lambda b: b[: len(b) // 2], r"model\.safetensors: cannot read.*truncated"),
             ("model.safetensors", lambda b: b[:3], r"model\.safetensors: cannot read.*truncated"),
             ("config.json", lambda b: b[:-5], r"config\.json: not valid JSON"),
             ("config.json", lambda b: b"[1, 2]", r"config\.json: expected a JSON object"),
             ("tokenizer.json", lambda b: b[: len(b) // 2], r"tokenizer\.json: cannot read the tokenizer.*truncated"),
             ("tokenizer_config.json", lambda b: b"{", r"tokenizer_config\.json: not valid JSON"),
             ("train_state.pt", lambda b: b[: len(b) // 2], r"train_state\.pt: cannot read.*truncated")]
    for name, fn, match in cases:
        with pytest.raises(ValueError, match=match):
            ck.load(damaged(name, fn))
        shutil.rmtree(tmp_path / f"damaged_{name}")


def test_device_and_dtype_arguments(tmp_path):
    model = Transformer(tiny_moe())
    ck.save(tmp_path / "ckpt", model)
    for name, want in [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp16", torch.float16),
                       ("fp32", torch.float32), ("float32", torch.float32), (torch.bfloat16, torch.bfloat16)]:
        loaded, _, _ = ck.load(tmp_path / "ckpt", dtype=name)
        assert loaded.embed.weight.dtype == want, name
    for bad in ["bf15", torch.int8, 16]:
        with pytest.raises(ValueError, match="not a floating dtype"):
            ck.load(tmp_path / "ckpt", dtype=bad)
    with pytest.raises(ValueError, match="not a device"):
        ck.load(tmp_path / "ckpt", device="gpu0")
    if not torch.cuda.is_available():  # used to say "pin_memory=True requires a CUDA..."
        with pytest.raises(RuntimeError, match=r"cannot load .*ckpt onto 'cuda': CUDA is not available"):
            ck.load(tmp_path / "ckpt", device="cuda")
