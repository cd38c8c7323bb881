"""
Checkpoints: save and load nanor1 models, and load the published HuggingFace checkpoints R1 starts from.

Stages talk only through checkpoint folders. A nanor1 folder holds:
  config.json        ModelConfig.to_dict() plus "format": "nanor1"
  model.safetensors  the state dict (the head is left out when tied to the embedding: safetensors refuses shared
                     tensors, and the tie is restored on load)
  tokenizer.json     (+ tokenizer_config.json) when a tokenizer is given
  train_state.pt     optimizer state, step, RNG state, data position... whatever the caller passes (torch.save)
  extra.json         free-form JSON metadata (stage, resolved arguments), read back with read_extra

save() writes only those files (OWN_FILES) and never moves or deletes anything else: the folder may also hold a run's
metrics, notes or other runs' folders, and they stay where they are. A folder that holds one of those names without
being a nanor1 checkpoint (an HF checkpoint, someone's config.json) is refused rather than overwritten. The save is
atomic in three phases, all inside the folder:
  1. stage:   the new files and a manifest of their names go to <folder>/.nanor1-save.tmp/, fsynced. A crash here
              leaves the previous checkpoint untouched; the next save clears the stage.
  2. commit:  one rename, .nanor1-save.tmp -> .nanor1-save.new. From here on the new checkpoint is complete on disk.
  3. install: each new file is renamed over its old version, old files the new checkpoint lacks are removed, then
              .nanor1-save.new. A crash here leaves a mix in the folder, which find() (called by load() and by the
              next save()) rolls forward to the new checkpoint before anything reads it.
Phases 2-3 hold an exclusive flock on the folder and load() reads under a shared one, so a reader in another
process never sees a mix either (an install waits for the loads in progress; one writer per folder at a time). find() also recovers what saves of earlier nanor1
versions left when interrupted (they swapped whole folders): the sibling .<name>.old (the previous checkpoint, which
is put back) and .<name>.tmp.

load() refuses weights with NaN/inf (allow_nonfinite=True to inspect them), and names the file behind any error: a
truncated model.safetensors, an invalid config.json, a truncated tokenizer.json.

load() also reads HuggingFace folders (config.json, model.safetensors or a sharded model.safetensors.index.json)
of DeepseekV3ForCausalLM (DeepSeek-V3 / R1), DeepseekV2ForCausalLM, Qwen2ForCausalLM and LlamaForCausalLM (the R1
distillation students). This file is the only place that knows HF names; model.py never sees them. It owns:
  - the key map HF_KEYS (one explicit dict), routed experts stacked into nanor1's [E, ...] tensors;
  - the RoPE layout: nanor1 rotates interleaved pairs (x0,x1),(x2,x3)... as DeepSeek does. DeepSeek checkpoints are
    stored that way (transformers' V3 de-interleaves at run time, its V2 uses complex pairs); Qwen2/Llama
    checkpoints use the rotate-half layout (x_i pairs with x_{i+Dh/2}), so their q/k rows (and biases) are permuted
    per head on load;
  - tied heads (tie_word_embeddings, no lm_head key);
  - config translation, accepting both the published spelling (rope_theta + rope_scaling) and current
    transformers' (rope_parameters).
Deviations and limits: MTP layers of a DeepSeek checkpoint (model.layers.{n_layers}.*, num_nextn_predict_layers)
are skipped, so an HF load has n_mtp=0. FP8 checkpoints (quantization_config) must be dequantized first. Options
nanor1 cannot reproduce exactly are errors, never silently approximated: RoPE types other than YaRN and llama3
(linear, dynamic, longrope), YaRN on GQA models (transformers scales their cos/sin), llama3 on MLA models,
mscale != mscale_all_dim, moe_layer_freq != 1, sliding windows, biases nanor1 has no slot for.
"""
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

try:
    import fcntl  # POSIX file locks; without them (Windows) saves are still atomic, readers just do not wait
except ImportError:
    fcntl = None

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nanor1.fsdp import rank as _rank
from nanor1.model import ModelConfig, Transformer

FORMAT = "nanor1"
CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
TRAIN_STATE, EXTRA, TOKENIZER = "train_state.pt", "extra.json", "tokenizer.json"
OWN_FILES = (CONFIG, WEIGHTS, TOKENIZER, "tokenizer_config.json", TRAIN_STATE, EXTRA)  # all that save() writes
STAGE, COMMITTED, MANIFEST = ".nanor1-save.tmp", ".nanor1-save.new", "manifest.json"


# ----------------------------------------------------------------------------------------------------------------
# Saving


def _unwrap(model):
    """The Transformer inside torch.compile (._orig_mod) or DDP (.module) wrappers."""
    for attr in ("_orig_mod", "module"):
        while isinstance(getattr(model, attr, None), torch.nn.Module):
            model = getattr(model, attr)
    return model


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(folder, model, *, tokenizer=None, train_state: dict | None = None, extra: dict | None = None):
    """Write a checkpoint into `folder` atomically, touching only its own files (see the module docstring).

    Distributed: call on every rank. Sharded (DTensor) weights are gathered on all ranks, then only rank 0 writes,
    and all ranks wait at a barrier so that nobody reads the folder before it exists. train_state is written as
    given by rank 0, so pass full (gathered) optimizer state.
    """
    model = _unwrap(model)
    rank0, state = _rank() == 0, {}
    for name, t in model.state_dict().items():
        t = t.full_tensor() if hasattr(t, "full_tensor") else t  # collective for DTensors: every rank takes part
        if rank0:
            state[name] = t.detach().cpu().contiguous()
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)  # the same tensor as embed.weight
    extra_text = None if extra is None else json.dumps(extra, indent=2)  # not JSON-able: fail before writing
    if rank0:
        _write_atomic(_absolute(folder), state, model.cfg, tokenizer, train_state, extra_text)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _absolute(folder) -> Path:
    return Path(os.path.abspath(folder))  # normalised: "." and "runs/" have a name, so siblings can be named


@contextlib.contextmanager
def _lock(folder: Path, exclusive: bool):
    """flock on the folder itself (released when the process dies): install holds it exclusively, load shared."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            except OSError:
                pass  # a filesystem without locks: saves stay atomic, a concurrent reader may have to retry
        yield
    finally:
        os.close(fd)


def _is_nanor1(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_atomic(folder: Path, state, cfg: ModelConfig, tokenizer, train_state, extra_text):
    folder.mkdir(parents=True, exist_ok=True)
    _recover(folder)  # finish (or undo) an interrupted save first
    theirs = [name for name in OWN_FILES if (folder / name).exists()]
    if theirs and not _is_nanor1(folder):
        raise FileExistsError(f"{folder} holds {theirs} but is not a nanor1 checkpoint ({CONFIG} lacks "
                              f"\"format\": \"{FORMAT}\"): refusing to overwrite them; save into another folder")
    stage = folder / STAGE
    shutil.rmtree(stage, ignore_errors=True)  # left by a crash while staging: incomplete, and ours
    stage.mkdir()
    try:
        save_file(state, stage / WEIGHTS, metadata={"format": "pt"})
        (stage / CONFIG).write_text(json.dumps({"format": FORMAT, **cfg.to_dict()}, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(stage)
        if train_state is not None:
            torch.save(train_state, stage / TRAIN_STATE)
        if extra_text is not None:
            (stage / EXTRA).write_text(extra_text + "\n")
        names = sorted(f.name for f in stage.iterdir())
        if set(names) - set(OWN_FILES):  # install only moves OWN_FILES: anything else would be lost
            raise RuntimeError(f"checkpoint.save wrote {sorted(set(names) - set(OWN_FILES))}, not in OWN_FILES")
        (stage / MANIFEST).write_text(json.dumps(names) + "\n")
        for f in stage.iterdir():
            _fsync(f)
        _fsync(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    with _lock(folder, exclusive=True):
        os.replace(stage, folder / COMMITTED)  # the commit point
        _fsync(folder)
        _install(folder)


def _install(folder: Path):
    """Move a committed save's files into place; idempotent, so a crash anywhere in it is finished by a rerun."""
    new = folder / COMMITTED
    if (new / MANIFEST).is_file():  # no manifest: a previous install got as far as deleting it
        names = json.loads((new / MANIFEST).read_text())
        for name in OWN_FILES:
            if (new / name).exists():
                os.replace(new / name, folder / name)
            elif name not in names:
                (folder / name).unlink(missing_ok=True)  # the previous checkpoint had it, the new one does not
        _fsync(folder)
        (new / MANIFEST).unlink()
    shutil.rmtree(new)
    _fsync(folder)


def _only_own_files(folder: Path) -> bool:
    return folder.is_dir() and all(f.name in OWN_FILES for f in folder.iterdir())


def _recover(folder: Path):
    """Finish a committed save; put back the previous checkpoint of an interrupted folder swap (older nanor1)."""
    if (folder / COMMITTED).is_dir():
        with _lock(folder, exclusive=True):
            if (folder / COMMITTED).is_dir():  # not finished by another process while we waited for the lock
                _install(folder)
    old, tmp = (folder.with_name(f".{folder.name}.{ext}") for ext in ("old", "tmp"))
    if not (folder / CONFIG).is_file() and (old / CONFIG).is_file():
        # old versions renamed folder -> .old, then .tmp -> folder: a crash between left no folder. .old is the
        # previous checkpoint, complete for sure; .tmp may be the next one, but cannot be proven complete.
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if not folder.exists():
            os.replace(old, folder)
            _fsync(folder.parent)
    if (folder / CONFIG).is_file():
        for leftover in (old, tmp):  # an unfinished temporary or an already replaced checkpoint of an old save
            if _only_own_files(leftover):
                shutil.rmtree(leftover)


def find(folder) -> Path | None:
    """The complete checkpoint at `folder` (nanor1 or HF), after recovering an interrupted save; None if there is none.

    Use it for --resume: `ckpt = checkpoint.find(out / "checkpoint")`. It may repair the folder (see the module
    docstring), so on several ranks call it on rank 0 before the others look."""
    folder = _absolute(folder)
    if folder.is_dir() or folder.with_name(f".{folder.name}.old").is_dir():
        _recover(folder)
    return folder if (folder / CONFIG).is_file() else None


def read_extra(path) -> dict | None:
    """The `extra` dict a checkpoint was saved with, or None."""
    f = Path(path) / EXTRA
    return json.loads(f.read_text()) if f.is_file() else None


# ----------------------------------------------------------------------------------------------------------------
# The HuggingFace key map. {i}: layer index, {j}: routed expert, stacked into row j of the [E, ...] nanor1 tensor.

HF_KEYS = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "head.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    # attention: q_proj is MLA's plain query (q_lora_rank 0) or GQA's; q_a..kv_b are MLA's; o_proj is both's
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attn.wq.weight",
    "model.layers.{i}.self_attn.q_a_proj.weight": "layers.{i}.attn.wq_a.weight",
    "model.layers.{i}.self_attn.q_a_layernorm.weight": "layers.{i}.attn.q_norm.weight",
    "model.layers.{i}.self_attn.q_b_proj.weight": "layers.{i}.attn.wq_b.weight",
    "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight": "layers.{i}.attn.wkv_a.weight",
    "model.layers.{i}.self_attn.kv_a_layernorm.weight": "layers.{i}.attn.kv_norm.weight",
    "model.layers.{i}.self_attn.kv_b_proj.weight": "layers.{i}.attn.wkv_b.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attn.wo.weight",
    # GQA only: keys, values and the q/k/v biases (Qwen2)
    "model.layers.{i}.self_attn.q_proj.bias": "layers.{i}.attn.wq.bias",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attn.wk.weight",
    "model.layers.{i}.self_attn.k_proj.bias": "layers.{i}.attn.wk.bias",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attn.wv.weight",
    "model.layers.{i}.self_attn.v_proj.bias": "layers.{i}.attn.wv.bias",
    # dense SwiGLU: w2(silu(w1 x) * w3 x)
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.ffn.w1.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.ffn.w3.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.ffn.w2.weight",
    # MoE: router, balancing bias, shared experts, routed experts
    "model.layers.{i}.mlp.gate.weight": "layers.{i}.ffn.gate.weight",
    "model.layers.{i}.mlp.gate.e_score_correction_bias": "layers.{i}.ffn.gate.bias",
    "model.layers.{i}.mlp.shared_experts.gate_proj.weight": "layers.{i}.ffn.shared.w1.weight",
    "model.layers.{i}.mlp.shared_experts.up_proj.weight": "layers.{i}.ffn.shared.w3.weight",
    "model.layers.{i}.mlp.shared_experts.down_proj.weight": "layers.{i}.ffn.shared.w2.weight",
    "model.layers.{i}.mlp.experts.{j}.gate_proj.weight": "layers.{i}.ffn.w1[{j}]",
    "model.layers.{i}.mlp.experts.{j}.up_proj.weight": "layers.{i}.ffn.w3[{j}]",
    "model.layers.{i}.mlp.experts.{j}.down_proj.weight": "layers.{i}.ffn.w2[{j}]",
}
# Stored by old transformers versions, recomputed by every model: not weights.
HF_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)"))


_HF_TO_NANOR1 = [(_template_regex(hf), ours) for hf, ours in HF_KEYS.items()]
_NANOR1_TO_HF = [(_template_regex(ours.removesuffix("[{j}]")), hf) for hf, ours in HF_KEYS.items()]


def hf_to_nanor1(hf_name: str) -> tuple[str, int | None] | None:
    """nanor1 name and expert row (None unless stacked) of an HF key; None if the key is not in the map."""
    for pattern, ours in _HF_TO_NANOR1:
        m = pattern.fullmatch(hf_name)
        if m:
            j = m.groupdict().get("j")
            return ours.removesuffix("[{j}]").format(i=m.groupdict().get("i")), None if j is None else int(j)
    return None


def nanor1_to_hf(name: str, j: int | str = "{j}") -> str:
    """The HF key of a nanor1 name (expert j of a stacked tensor), for error messages."""
    for pattern, hf in _NANOR1_TO_HF:
        m = pattern.fullmatch(name)
        if m:
            return hf.format(i=m.groupdict().get("i"), j=j)
    return name


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half (x_0..x_{Dh/2-1}, y_0..y_{Dh/2-1}) to interleaved pairs
    (x_0, y_0, x_1, y_1, ...). w [H*Dh, D] (weight) or [H*Dh] (bias); the pair (x_i, y_i) turns at frequency i."""
    rest = w.shape[1:]
    return w.view(n_heads, 2, -1, *rest).transpose(1, 2).reshape(w.shape)  # [H, 2, Dh/2, ...] -> [H, Dh/2, 2, ...]


# ----------------------------------------------------------------------------------------------------------------
# HuggingFace config translation

ARCHITECTURES = ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")


def _rope_fields(hf: dict, attn: str, where: str) -> dict:
    """RoPE/YaRN fields of ModelConfig from rope_scaling (published) or rope_parameters (current transformers)."""
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    max_len = hf["max_position_embeddings"]
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise NotImplementedError(f"{where}: partial_rotary_factor != 1 is not supported")
    if kind == "default":
        return dict(rope_theta=theta, original_seq_len=max_len)  # YaRN off: nanor1 enables it beyond original_seq_len
    if kind == "llama3" and attn == "gqa":  # Llama 3.1 / R1-Distill-Llama
        for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in params:
                raise ValueError(f"{where}: llama3 rope scaling lacks {key!r}")
        return dict(rope_theta=theta, rope_type="llama3", rope_factor=float(params["factor"]),
                    low_freq_factor=float(params["low_freq_factor"]),
                    high_freq_factor=float(params["high_freq_factor"]),
                    original_seq_len=int(params["original_max_position_embeddings"]))
    if kind != "yarn" or attn != "mla":
        raise NotImplementedError(f"{where}: RoPE type {kind!r} on a {attn} model is not supported (nanor1 has plain "
                                  "RoPE, YaRN with DeepSeek's MLA softmax scaling, and llama3 on GQA models)")
    for key in ("factor", "original_max_position_embeddings"):
        if key not in params:
            raise ValueError(f"{where}: YaRN rope scaling lacks {key!r}")
    original = params["original_max_position_embeddings"]
    if max_len <= original:
        raise NotImplementedError(f"{where}: YaRN with max_position_embeddings ({max_len}) <= "
                                  f"original_max_position_embeddings ({original}); nanor1 applies YaRN only beyond it")
    # transformers scales cos/sin by mscale(factor, mscale) / mscale(factor, mscale_all_dim) and the softmax by
    # mscale(factor, mscale_all_dim)^2; nanor1 does only the latter, which is exact when the two are equal.
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if not mscale or mscale != mscale_all_dim or params.get("attention_factor", 1.0) != 1.0:
        raise NotImplementedError(f"{where}: YaRN needs mscale == mscale_all_dim (got {mscale}, {mscale_all_dim}) and "
                                  "no attention_factor: nanor1 does not scale cos/sin")
    if params.get("truncate", True) is not True:
        raise NotImplementedError(f"{where}: YaRN with truncate=false is not supported")
    return dict(rope_theta=theta, original_seq_len=original, rope_factor=float(params["factor"]),
                beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
                mscale=float(mscale_all_dim))


def translate_hf_config(hf: dict, where: str = CONFIG) -> tuple[ModelConfig, int]:
    """An HF config.json dict -> (ModelConfig, number of MTP layers stored after the last layer, to skip)."""
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise NotImplementedError(f"{where}: unsupported architecture {archs or hf.get('model_type')}; "
                                  f"nanor1 loads {list(ARCHITECTURES)}")
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?")
        raise NotImplementedError(f"{where}: quantized checkpoint ({method}); dequantize it to bf16 first")
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"{where}: hidden_act {hf['hidden_act']!r} (nanor1 has SwiGLU with silu)")
    for key in ("mlp_bias", "use_sliding_window"):
        if hf.get(key):
            raise NotImplementedError(f"{where}: {key}=true is not supported")

    def need(key):
        if hf.get(key) is None:
            raise ValueError(f"{where}: missing required key {key!r} for {arch}")
        return hf[key]

    fields = dict(vocab_size=need("vocab_size"), dim=need("hidden_size"), n_layers=need("num_hidden_layers"),
                  n_heads=need("num_attention_heads"), max_seq_len=need("max_position_embeddings"),
                  norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings")),
                  inter_dim=need("intermediate_size"))
    n_mtp_skip = 0
    if arch.startswith("Deepseek"):
        v3 = arch == "DeepseekV3ForCausalLM"
        if hf.get("attention_bias"):
            raise NotImplementedError(f"{where}: attention_bias=true is not supported for MLA")
        if hf.get("rope_interleave", True) is not True:
            raise NotImplementedError(f"{where}: rope_interleave=false (rotate-half MLA weights) is not supported")
        if hf.get("moe_layer_freq", 1) != 1:
            raise NotImplementedError(f"{where}: moe_layer_freq={hf['moe_layer_freq']}; nanor1 supports only 1 "
                                      "(every layer after first_k_dense_replace is MoE)")
        if fields["norm_eps"] != 1e-6:  # the reference fixes the latent norms' eps at 1e-6, nanor1 uses norm_eps
            raise NotImplementedError(f"{where}: rms_norm_eps={fields['norm_eps']} (only 1e-6 is exact for MLA)")
        fields.update(attn="mla", q_lora_rank=hf.get("q_lora_rank") or 0, kv_lora_rank=need("kv_lora_rank"),
                      qk_nope_head_dim=need("qk_nope_head_dim"), qk_rope_head_dim=need("qk_rope_head_dim"),
                      v_head_dim=need("v_head_dim"), **_rope_fields(hf, "mla", where))
        n_experts = hf.get("n_routed_experts") or 0
        fields.update(n_routed_experts=n_experts, n_dense_layers=hf.get("first_k_dense_replace", 0))
        if n_experts:
            method = hf.get("topk_method", "noaux_tc" if v3 else "greedy")
            if method not in ("noaux_tc", "group_limited_greedy", "greedy"):
                raise NotImplementedError(f"{where}: topk_method {method!r} is not supported")
            norm = bool(hf.get("norm_topk_prob", v3))
            if not v3 and norm:  # DeepSeek's V2 code then skips routed_scaling_factor, transformers' does not
                raise NotImplementedError(f"{where}: norm_topk_prob=true for DeepSeek-V2 is ambiguous")
            grouped = method != "greedy"
            fields.update(n_shared_experts=hf.get("n_shared_experts") or 0,
                          n_activated_experts=need("num_experts_per_tok"), moe_inter_dim=need("moe_intermediate_size"),
                          n_expert_groups=(hf.get("n_group") or 1) if grouped else 1,
                          n_limited_groups=(hf.get("topk_group") or 1) if grouped else 1,
                          score_func=hf.get("scoring_func", "sigmoid" if v3 else "softmax"), norm_topk_prob=norm,
                          route_scale=float(hf.get("routed_scaling_factor", 1.0)),
                          routing_bias=method == "noaux_tc")
        n_mtp_skip = hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 0)) or 0
    else:
        llama = arch == "LlamaForCausalLM"
        if llama and hf.get("attention_bias"):
            raise NotImplementedError(f"{where}: attention_bias=true (o_proj bias) is not supported")
        n_heads = fields["n_heads"]
        fields.update(attn="gqa", n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                      head_dim=hf.get("head_dim") or fields["dim"] // n_heads, qkv_bias=not llama,
                      n_routed_experts=0, **_rope_fields(hf, "gqa", where))
    try:
        return ModelConfig(**fields), n_mtp_skip
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _tensor_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{folder / INDEX}: not a safetensors index ({type(e).__name__}: {e})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{folder / INDEX} names shard {f.name}, which does not exist")
        return files
    raise FileNotFoundError(f"{folder}: no {WEIGHTS} or {INDEX}")


def _iter_tensors(files: list[Path], device):
    """(name, tensor, file) for every tensor of the files, read one at a time to keep peak memory low."""
    for f in files:
        try:
            with safe_open(f, framework="pt", device=str(device)) as sf:
                for name in sf.keys():
                    yield name, sf.get_tensor(name), f
        except SafetensorError as e:
            raise ValueError(f"{f}: cannot read it ({e}): the file is truncated or corrupt; "
                             "save or download it again") from None


def _finite(tensors, bad: list):
    """Pass (name, tensor, file) through, listing the floating tensors that hold NaN or inf."""
    for name, t, f in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad.append(f"{name} (in {f})")
        yield name, t, f


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def parse_dtype(dtype) -> torch.dtype | None:
    """None, a floating torch dtype, or a name ("bf16", "bfloat16", "fp16", "fp32", "float32", ...) -> torch dtype."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype {dtype!r} is not a floating dtype; use None (keep the stored dtypes), a floating "
                     f"torch.dtype or one of {sorted(DTYPES)}")


def _device(device, folder: Path) -> torch.device:
    """The device to load onto, checked before any file is read (torch's own errors do not say what was asked)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"cannot load {folder} onto {device!r}: CUDA is not available on this machine "
                           f"(torch {torch.__version__}); use device='cpu'")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise RuntimeError(f"cannot load {folder} onto {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"cannot load {folder} onto {device!r}: MPS is not available on this machine")
    return d


def _cast(name: str, t: torch.Tensor, dtype) -> torch.Tensor:
    # the routing bias keeps its stored dtype (float32 in published checkpoints): routing is decided in float32
    if dtype is None or not t.is_floating_point() or name.endswith("gate.bias"):
        return t
    return t.to(dtype)


def _listed(names: list[str]) -> str:
    return f"{names[:8]}" + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _convert_hf(tensors, files, cfg: ModelConfig, n_mtp_skip: int, expected: dict, dtype) -> dict:
    """HF tensors -> a nanor1 state dict: rename, stack experts, permute RoPE rows; check names and shapes."""
    state, stacked, unexpected = {}, {}, []
    for hf_name, t, f in tensors:
        if HF_IGNORED.fullmatch(hf_name):
            continue
        layer = re.match(r"model\.layers\.(\d+)\.", hf_name)
        if layer and cfg.n_layers <= int(layer[1]) < cfg.n_layers + n_mtp_skip:
            continue  # a multi-token-prediction layer: not loaded (see module docstring)
        if hf_name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied: the head is the embedding
        name, j = hf_to_nanor1(hf_name) or (None, None)
        if name not in expected or (j is not None and j >= expected[name].shape[0]):
            unexpected.append(f"{hf_name} (in {f.name})")
            continue
        want = expected[name].shape if j is None else expected[name].shape[1:]
        if tuple(t.shape) != tuple(want):
            raise ValueError(f"{f}: {hf_name} has shape {tuple(t.shape)}, but nanor1's {name} expects "
                             f"{tuple(want)}; config.json and the weights disagree")
        if cfg.attn == "gqa" and name.endswith(("attn.wq.weight", "attn.wq.bias")):
            t = half_to_interleaved(t, cfg.n_heads)
        elif cfg.attn == "gqa" and name.endswith(("attn.wk.weight", "attn.wk.bias")):
            t = half_to_interleaved(t, cfg.n_kv_heads)
        t = _cast(name, t, dtype)
        if j is None:
            state[name] = t
        else:  # write expert j into its row of the [E, ...] tensor, allocated at the first expert seen
            if name not in state:
                state[name] = torch.empty(expected[name].shape, dtype=t.dtype, device=t.device)
            state[name][j] = t
            stacked.setdefault(name, set()).add(j)
    if unexpected:
        raise ValueError(f"unexpected key(s) for this config.json ({cfg.attn}, {cfg.n_layers} layers): "
                         f"{_listed(unexpected)}")
    missing = [nanor1_to_hf(n) for n in expected if n not in state]
    for name, rows in stacked.items():
        missing += [nanor1_to_hf(name, j) for j in range(expected[name].shape[0]) if j not in rows]
    if missing:
        raise ValueError(f"missing key(s) in {[f.name for f in files]}: {_listed(missing)}")
    return state


def _check_nanor1(tensors, files, expected: dict, dtype) -> dict:
    """A nanor1 state dict, its names and shapes checked against the model built from its config."""
    state, unexpected = {}, []
    for name, t, f in tensors:
        if name not in expected:
            unexpected.append(name)
        elif t.shape != expected[name].shape:
            raise ValueError(f"{f}: {name} has shape {tuple(t.shape)}, config.json implies "
                             f"{tuple(expected[name].shape)}")
        else:
            state[name] = _cast(name, t, dtype)
    if unexpected:
        raise ValueError(f"unexpected key(s) in {[f.name for f in files]}: {_listed(unexpected)}")
    missing = [n for n in expected if n not in state]
    if missing:
        raise ValueError(f"missing key(s) in {[f.name for f in files]}: {_listed(missing)}")
    return state


def _materialise(model: Transformer, state: dict, device) -> Transformer:
    """Move the checkpoint tensors into a meta-built model, re-tie the head, rebuild the non-persistent buffers."""
    model.load_state_dict(state, strict=False, assign=True)  # names were checked by the caller
    if model.cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    model.init_buffers(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a new non-persistent buffer in model.py that Transformer.init_buffers does not build
        raise RuntimeError(f"checkpoint.load left tensors unset: {left}")
    return model


def _load_tokenizer(folder: Path):
    """nanor1.tokenizer.Tokenizer from tokenizer.json, or None (no file, or no tokenizer module)."""
    if not (folder / TOKENIZER).is_file() or importlib.util.find_spec("nanor1.tokenizer") is None:
        return None
    from nanor1.tokenizer import Tokenizer
    return Tokenizer.load(folder)


def load(path, *, device="cpu", dtype=None, allow_nonfinite: bool = False
         ) -> tuple[Transformer, object, dict | None]:
    """Load a nanor1 or HuggingFace checkpoint folder -> (model, tokenizer or None, train_state or None).

    dtype: cast floating weights (not the routing bias) to it (a torch dtype or "bf16", "fp32", ...); None keeps the
    stored dtypes, so a nanor1 checkpoint loads back bit-identical. The model is built on the meta device and takes
    the loaded tensors as they are, so no memory is spent on a throw-away initialisation. Weights with NaN or inf
    are refused (the run that saved them diverged) unless allow_nonfinite. An interrupted save is recovered first
    (see find).
    """
    folder = Path(path)
    device, dtype = _device(device, folder), parse_dtype(dtype)
    found = find(folder)
    if found is None:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file; a checkpoint is a folder (config.json, model.safetensors)")
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
        raise FileNotFoundError(f"{folder}: no {CONFIG}")
    for _ in range(3):
        with _lock(found, exclusive=False):
            if not (found / COMMITTED).is_dir():
                return _load(found, device, dtype, allow_nonfinite)
        _recover(found)  # a save died after its commit while we waited: finish it, then read
    raise RuntimeError(f"{found}: a save keeps being interrupted ({COMMITTED} reappears); is another process "
                       "saving into it?")


def _load(folder: Path, device, dtype, allow_nonfinite: bool):
    where = str(folder / CONFIG)
    try:
        raw = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    files = _tensor_files(folder)
    if "format" in raw:
        if raw["format"] != FORMAT:
            raise ValueError(f"{where}: unknown format {raw['format']!r} (expected {FORMAT!r})")
        try:
            cfg = ModelConfig.from_dict({k: v for k, v in raw.items() if k != "format"})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        n_mtp_skip = 0
    else:
        cfg, n_mtp_skip = translate_hf_config(raw, where)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("head.weight")
    nonfinite = []
    tensors = _iter_tensors(files, device)
    tensors = tensors if allow_nonfinite else _finite(tensors, nonfinite)
    if "format" in raw:
        state = _check_nanor1(tensors, files, expected, dtype)
    else:
        state = _convert_hf(tensors, files, cfg, n_mtp_skip, expected, dtype)
    if nonfinite:
        raise ValueError(f"non-finite weights (NaN or inf) in {_listed(nonfinite)}: the run that saved them "
                         "diverged; load an earlier checkpoint (or pass allow_nonfinite=True to inspect this one)")
    model = _materialise(model, state, device)
    train_state = None
    if (folder / TRAIN_STATE).is_file():
        # our own file (written by save): a full pickle, since it may hold numpy/python RNG states
        try:
            train_state = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=False)
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
            raise ValueError(f"{folder / TRAIN_STATE}: cannot read it ({type(e).__name__}: {e}): the file is "
                             "truncated or corrupt") from None
    return model, _load_tokenizer(folder), train_state


if __name__ == "__main__":
    # python -m nanor1.checkpoint SRC [DST]: load a nanor1 or HF checkpoint and print its config and size;
    # with DST, save it as a nanor1 checkpoint (convert once, then every stage loads the nanor1 folder).
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m nanor1.checkpoint SRC [DST]")
    model, tok, _ = load(sys.argv[1])
    print(json.dumps({**model.cfg.to_dict(), **model.num_params(), "tokenizer": tok is not None}, indent=2))
    if len(sys.argv) == 3:
        save(sys.argv[2], model, tokenizer=tok)
        print(f"saved {sys.argv[2]}")
