"""Distributed training in one place: rank / world size, process-group setup, FSDP2 sharding, generation under FSDP,
sharded checkpoints, and a memory planner (`python -m nanor1.fsdp PRESET --gpus N`).

torchtitan's recipe in a few plain functions: `fully_shard` (FSDP2) each transformer block, then the root (embedding,
final norm, head); bf16 parameters with fp32 gradient reduction on GPU (MixedPrecisionPolicy); the model built on
the meta device and materialised shard by shard, so a model larger than one device can be set up. Every function
also works in a single process (torch.distributed not initialised): rank 0, world size 1, collectives no-ops.

Generation under FSDP (`gathered`). A sharded block all-gathers its weights before each forward and frees them
after, so a plain decode loop would re-gather every layer at every token (n_layers collectives per token), and, worse,
every rank would have to decode the same number of steps in lockstep (a rank whose rows all ended early would leave
the others waiting in an all-gather). `gathered(model)` all-gathers every block once and keeps the full weights until
the rollout ends: decoding then runs collective-free on the full weights, ranks may stop at different steps, and the
log-probs are those of the very weights (and dtype, bf16 under mixed precision) the trainer's forward gathers. Memory
cost: one full copy of the weights per rank (in the compute dtype) during rollouts, on top of the sharded training
state; the planner prints it. For DeepSeek-V3 that is 1.3 TB in bf16: beyond any single GPU, so at that scale rollouts
need a tensor/expert-parallel inference engine instead (the planner says so).

Sharded checkpoints use torch.distributed.checkpoint (DCP): every rank writes its shards; a checkpoint loads at any
world size, and `export_full` turns one into the single-process nanor1 format (checkpoint.py) for sampling and export.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# nanor1.model / checkpoint / training import this file, so their imports here are inside the functions (no cycle).

DCP_META = "nanor1_dcp.json"   # written next to DCP's files: config, step, extra


# ---- who am I ----

def is_distributed() -> bool:
    """True once a process group exists (torchrun + init_distributed); collectives are no-ops otherwise."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks in the process group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, and in any single-process run. Prints and file writes happen only where this holds."""
    if is_distributed():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0        # torchrun sets RANK before init_process_group


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op in one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (at the end of a script; nothing in one process)."""
    if is_distributed():
        dist.destroy_process_group()


# ---- data parallelism: each rank's share, gathering, metrics ----

def share(n: int) -> tuple[int, int]:
    """[lo, hi): this rank's contiguous part of n items (sizes differ by at most one; a rank may get none when
    n < world size). The parts in rank order are the n items in order, so a global index is lo + local index."""
    W, r = world_size(), rank()
    return r * n // W, (r + 1) * n // W


def all_gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (pickled: small records, CPU tensors only); [obj] in one process."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_metrics(metrics: dict, *, weight: float = 1.0, weights: dict | None = None, sums=(), maxes=(),
                   mins=()) -> dict:
    """One rank's metrics -> the metrics of all ranks together, identical on every rank: a mean weighted by what
    each rank's value averages over (`weight`, or weights[key]: rows, tokens), a sum for `sums`, max / min for
    `maxes` / `mins`. One process: the metrics, unchanged. A collective: call it on every rank with the same keys."""
    if not is_distributed():
        return metrics
    weights = {k: (weights or {}).get(k, weight) for k in metrics}
    parts = all_gather_objects((metrics, weights))
    out = {}
    for k in metrics:
        values = [m[k] for m, _ in parts]
        if k in sums:
            out[k] = sum(values)
        elif k in maxes or k in mins:
            out[k] = max(values) if k in maxes else min(values)
        else:
            total = sum(w[k] for _, w in parts)
            out[k] = sum(w[k] * m[k] for m, w in parts) / total if total else sum(values) / len(values)
    return out


def token_share(mask: torch.Tensor) -> float | torch.Tensor:
    """world size x this rank's share of the global batch's loss tokens (mask [B, T]): a rank's token-mean loss
    times this is its part of the global token mean, as FSDP's gradient averaging over ranks expects (ranks' rows
    hold different numbers of tokens). 1.0 in one process. (Exact for the LM loss; the MTP loss, which counts one
    token fewer per row, and the balance losses are weighted by the same share.)"""
    if not is_distributed():
        return 1.0
    n = mask.sum().to(torch.float64)
    return (n * world_size() / all_reduce_sum(n.clone())).float()


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1: nccl on CUDA, gloo otherwise) and return this
    rank's device (cuda:LOCAL_RANK under torchrun). A single process gets its device and no process group."""
    from nanor1.training import pick_device
    device = pick_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return device


# ---- sharding ----

def shard_model(model, *, mixed_precision: bool, reshard_after_forward: bool = True,
                activation_checkpointing: bool = False, cpu_offload: bool = False):
    """FSDP2 in place: each block (the MTP module's block too) is one all-gather unit; the root holds the rest
    (embedding, final norm, head, and the MTP module's norms and projection, which Transformer.mtp_logits calls
    directly: the root stays gathered from forward to backward). Returns the model.

    mixed_precision: bf16 compute weights, fp32 gradient reduction, fp32 sharded master weights (pass
    device.type == "cuda", as training.autocast does). activation_checkpointing: each block keeps only its input and
    recomputes the rest in backward (its routers then count tokens twice: the routing-bias update uses only the sign
    of load - mean load, which doubling does not change). cpu_offload (GPU only: it pins host memory): sharded
    weights, gradients and optimizer state live in CPU memory, and the optimizer steps there.
    Create the optimizer after this and before any forward (a no-grad forward leaves the root gathered)."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    if cpu_offload and not torch.cuda.is_available():
        raise ValueError("cpu_offload needs a CUDA device (it keeps pinned host copies of the shards)")
    kw = dict(offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy())
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in _units(model):
        if activation_checkpointing:
            checkpoint(unit)                # composable AC: parameter names stay unchanged
        fully_shard(unit, reshard_after_forward=reshard_after_forward, **kw)
    fully_shard(model, **kw)                # the root: embed, norm, head (kept gathered between forward and backward)
    model.fsdp_reshard_after_forward = reshard_after_forward   # read back by gathered()
    return model


def _units(model) -> list:
    return list(model.layers) + [m.block for m in model.mtp]


def build_sharded(cfg, device, **shard_kw):
    """A Transformer(cfg) sharded over the ranks without ever holding it whole: built on the meta device, sharded,
    then each rank allocates only its shards. Weights follow Transformer.reset_parameters on the caller's RNG: each
    tensor is drawn whole (one at a time, identical on every rank) and each rank keeps its rows, so the result
    equals an unsharded model's reset_parameters() under the same seed; the peak extra memory is the largest tensor
    (a V3 MoE layer's expert stack: 15 GB in fp32). Load real weights with load_weights instead when there are any."""
    from nanor1.model import Transformer
    with torch.device("meta"):
        model = Transformer(cfg)
    shard_model(model, **shard_kw)
    model.to_empty(device=device)
    std, L = cfg.init_std, cfg.n_layers
    with torch.no_grad():
        for name, p in model.named_parameters():    # Transformer.reset_parameters' order and rule
            if p.dim() == 1:                        # linear biases 0, RMSNorm gains 1 (no random draw)
                full = torch.zeros(p.shape) if name.endswith(".bias") else torch.ones(p.shape)
            else:
                scale = 1 / math.sqrt(2 * L) if name.endswith(("wo.weight", "w2.weight", "w2")) else 1
                full = torch.empty(p.shape, device=device).normal_(0.0, std * scale)
            _local(p).copy_(full[_rows(p)])
    _init_buffers(model, device)
    return model


def _local(p) -> torch.Tensor:
    """The part of a parameter this rank stores (the tensor itself when unsharded)."""
    return p.to_local() if hasattr(p, "to_local") else p


def _rows(p) -> slice:
    """The dim-0 rows of the full tensor that this rank holds: FSDP2 splits as torch.chunk does (ceil(n / W) rows
    each, the last ranks may hold fewer or none)."""
    if not hasattr(p, "device_mesh"):
        return slice(None)
    from torch.distributed.tensor import Shard
    if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
        raise ValueError(f"expected FSDP's 1-D Shard(0) placement, got {p.placements} on a {p.device_mesh.ndim}-D mesh")
    n, W, r = p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank()
    chunk = -(-n // W)
    start = min(r * chunk, n)
    stop = min(start + chunk, n)
    assert p.to_local().shape[0] == stop - start, "FSDP's split is no longer torch.chunk's"
    return slice(start, stop)


def _init_buffers(model, device):
    """The buffers no checkpoint holds: RoPE tables, router loads; the routing bias starts at 0."""
    from nanor1.model import Gate, rope_tables
    cfg = model.cfg
    rope_dim = cfg.qk_rope_head_dim if cfg.attn == "mla" else cfg.head_dim
    model.cos, model.sin = (t.to(device) for t in rope_tables(rope_dim, cfg))
    for gate in (m for m in model.modules() if isinstance(m, Gate)):
        gate.load.zero_()
        gate.bias.zero_()


def load_weights(model, folder) -> None:
    """Fill a (sharded or plain) model from a nanor1 checkpoint folder, each rank reading only its rows of each
    tensor (safetensors slices). HF folders: convert once with `python -m nanor1.checkpoint SRC DST` first."""
    from safetensors import safe_open
    from nanor1.checkpoint import CONFIG, FORMAT, WEIGHTS
    folder = Path(folder)
    raw = json.loads((folder / CONFIG).read_text())
    if raw.get("format") != FORMAT or not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} is not a single-file nanor1 checkpoint; convert it with "
                         f"`python -m nanor1.checkpoint {folder} DST` and load DST")
    if {k: v for k, v in raw.items() if k != "format"} != model.cfg.to_dict():
        raise ValueError(f"{folder / CONFIG} does not describe this model's config")
    wanted = dict(model.named_parameters())     # dedups a tied head (the file leaves it out too)
    wanted.update((n, b) for n, b in model.named_buffers() if n in model.state_dict())   # persistent buffers
    with safe_open(folder / WEIGHTS, framework="pt") as f, torch.no_grad():
        missing = sorted(set(wanted) - set(f.keys()))
        unexpected = sorted(set(f.keys()) - set(wanted))
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS}: missing {missing[:8]}, unexpected {unexpected[:8]}")
        for name, t in wanted.items():
            part = f.get_slice(name)
            if tuple(part.get_shape()) != tuple(t.shape):
                raise ValueError(f"{name}: file has shape {part.get_shape()}, the model {tuple(t.shape)}")
            rows = _rows(t)
            _local(t).copy_(part[rows] if rows != slice(None) else part[:])


# ---- generation under FSDP ----

@contextlib.contextmanager
def gathered(model):
    """Inside: every FSDP unit holds its full weights and forwards run without collectives (see the module
    docstring: one all-gather per unit per rollout, one full copy of the weights per rank). Enter and leave on all
    ranks together; in between each rank may generate as much as it likes. A plain model passes through.
    The sampler then uses the trainer's weights in the trainer's dtype: in fp32 its log-probs equal the trainer's
    (a test checks 1e-5); in bf16 they differ as they do without FSDP (cached decode vs one full forward)."""
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in units:
            again = m is not model and getattr(model, "fsdp_reshard_after_forward", True)   # as shard_model set it
            m.set_reshard_after_forward(again, recurse=False)
            m.reshard()


# ---- sharded checkpoints (DCP) ----

def _reshard(model) -> None:
    """Put the sharded parameters back on every unit (a no-grad forward leaves the root gathered: it reshards only
    after backward). No communication. Create optimizers after this too, never while the root is gathered."""
    from torch.distributed.fsdp import FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def save_sharded(folder, model, optimizer=None, *, step: int, extra: dict | None = None,
                 rank_state: dict | None = None) -> None:
    """Every rank writes its shards of the model (and optimizer) state to folder, via a temporary folder renamed on
    completion (so a crash leaves the previous checkpoint). rank_state: this rank's own state (its RNG, for exact
    resume), one torch.save file per rank. Call on all ranks; needs a filesystem they all see."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    folder = Path(folder).absolute()
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    meta = json.dumps({"config": model.cfg.to_dict(), "step": step, "world_size": world_size(), "extra": extra})
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    if rank_state is not None:         # written before dcp.save, whose last step waits for every rank
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(rank_state, tmp / f"rank{rank()}.pt")
    _reshard(model)
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=tmp)
    if is_main():
        (tmp / DCP_META).write_text(meta + "\n")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_sharded(folder, model, optimizer=None) -> dict:
    """Load a save_sharded checkpoint into model (and optimizer), at any world size, sharded or not.
    Returns {"step", "extra", "world_size"} as saved, and "rank_state": this rank's saved rank_state when the
    world size is the one saved (None otherwise: per-rank state does not carry over to another world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    folder = Path(folder)
    meta = json.loads((folder / DCP_META).read_text())
    if meta["config"] != model.cfg.to_dict():
        raise ValueError(f"{folder / DCP_META}: the checkpoint's config differs from this model's")
    _reshard(model)
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    own = folder / f"rank{rank()}.pt"
    same = meta["world_size"] == world_size() and own.is_file()
    return {**{k: meta[k] for k in ("step", "extra", "world_size")},
            "rank_state": torch.load(own, weights_only=False) if same else None}


def export_full(src, dst) -> None:
    """A save_sharded checkpoint -> a single-process nanor1 checkpoint folder (weights only). Run in one process;
    it holds the whole model in CPU memory."""
    from nanor1.checkpoint import save
    from nanor1.model import ModelConfig, Transformer
    meta = json.loads((Path(src) / DCP_META).read_text())
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_dict(meta["config"]))
    model.to_empty(device="cpu")
    _init_buffers(model, "cpu")
    info = load_sharded(src, model)
    save(dst, model, extra={"exported_from": str(src), "step": info["step"], "extra": info["extra"]})


# ---- memory planner ----

GB = 1e9
HEADROOM = 0.9   # plan for 90% of the GPU: CUDA context, NCCL buffers, allocator fragmentation take the rest


def _act_elements_per_token(cfg) -> tuple[int, int, int]:
    """Activation elements one token keeps for backward: (per dense layer, per MoE layer, logits). Counted as the
    inputs autograd saves for each matmul / norm / activation (flash attention keeps its output, not the scores):
      attention MLA: 2D (norm in, out) + 2 q_lora + (C+R) + C + H(qk) [q] + H(nope+dv) [kv] + 2H(qk) [roped q, k]
                     + 2 H dv [v, output];   GQA: 2D + 4 H hd + 4 n_kv hd
      dense MLP: 2D (norm) + 4I (w1 out, w3 out, silu, product);  MoE: 2D + 2E (fp32 scores)
                 + K(2D + 4 I_moe) (routed copies) + 4 n_shared I_moe
      logits: 5V (bf16 logits, their fp32 copy and the fp32 log-softmax lm_loss keeps), in 2-byte units."""
    D, H = cfg.dim, cfg.n_heads
    if cfg.attn == "mla":
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        C, R = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        attn = 2 * D + 2 * cfg.q_lora_rank + (C + R) + C + 3 * H * qk + H * (cfg.qk_nope_head_dim + cfg.v_head_dim) \
            + 2 * H * cfg.v_head_dim
    else:
        attn = 2 * D + 4 * H * cfg.head_dim + 4 * cfg.n_kv_heads * cfg.head_dim
    dense = attn + 2 * D + 4 * cfg.inter_dim
    I, K = cfg.moe_inter_dim, cfg.n_activated_experts
    moe = attn + 2 * D + 2 * cfg.n_routed_experts + K * (2 * D + 4 * I) + 4 * cfg.n_shared_experts * I
    return dense, moe, 5 * cfg.vocab_size


def _activation_bytes(cfg, tokens: int, ac: bool) -> int:
    dense_e, moe_e, logit_e = _act_elements_per_token(cfg)
    n_moe = cfg.n_layers - cfg.n_dense_layers if cfg.n_routed_experts else 0
    n_dense = cfg.n_layers - n_moe + cfg.n_mtp * (cfg.n_routed_experts == 0)
    n_moe += cfg.n_mtp * (cfg.n_routed_experts > 0)                        # the MTP block (same FFN kind as the last)
    if ac:   # each block keeps its bf16 input; one block at a time is recomputed with its full activations
        act = 2 * tokens * ((n_dense + n_moe) * cfg.dim + max(dense_e, moe_e if n_moe else 0))
    else:
        act = 2 * tokens * (n_dense * dense_e + n_moe * moe_e)
    return act + 2 * tokens * logit_e * (1 + cfg.n_mtp)


def plan(cfg, *, gpus: int, seq: int, batch: int, ac: bool = False, offload: bool = False,
         gpu_gb: float = 80.0) -> dict:
    """Per-GPU bytes of FSDP2 training as shard_model sets it up on GPU (fp32 sharded master weights, bf16 compute,
    fp32 reduction, AdamW) and of gathered rollouts. batch: sequences per GPU per micro-step, seq: tokens each."""
    from nanor1.model import Transformer
    with torch.device("meta"):
        model = Transformer(cfg)
    n_all = sum(p.numel() for p in model.parameters())                      # the MTP module included (trained)
    units = [sum(p.numel() for p in u.parameters()) for u in _units(model)]
    unit, root = max(units), n_all - sum(units)
    kv_per_token = sum(t.numel() for c in model.new_cache(1, 1, device="meta") for t in c.values()) * 2  # bf16
    tokens = batch * seq
    act = _activation_bytes(cfg, tokens, ac)
    shard = 0 if offload else 1
    rows = {
        "weights (fp32 shards)": shard * 4 * n_all / gpus,
        "gradients (fp32 shards)": shard * 4 * n_all / gpus,
        "optimizer (AdamW m, v fp32)": shard * 8 * n_all / gpus,
        "gathered units (bf16: 2 blocks + 1 block's grads + fp32 reduce copy, root)": 10 * unit + 2 * root,
        "activations": act,
    }
    train = sum(rows.values())
    kv = kv_per_token * tokens
    rollout = shard * 16 * n_all / gpus + 2 * n_all + kv
    budget = HEADROOM * gpu_gb * GB
    state, working = 16 * n_all, 10 * unit + 2 * root + act        # sharded state (all ranks), per-GPU rest
    advice = []
    if train > budget and not offload:
        if working < budget:
            need = math.ceil(state / (budget - working))
            advice.append(f"use >= {need} GPUs ({math.ceil(need / 8)} node(s) of 8) to fit the sharded state")
        else:
            advice.append(f"the sharded state alone (16 bytes/param) needs >= {math.ceil(state / budget)} GPUs")
        advice.append(f"--offload: weights, grads and optimizer ({state / gpus / GB:.1f} GB per rank) move to CPU RAM")
    if not ac and act > 0.3 * budget:
        advice.append(f"--ac: activations {act / GB:.1f} GB -> "
                      f"{_activation_bytes(cfg, tokens, True) / GB:.1f} GB")
    if 10 * unit + 2 * root > budget:
        advice.append(f"the largest FSDP unit ({unit / 1e9:.1f}B params) gathered in bf16 with its gradients needs "
                      f"{(10 * unit + 2 * root) / GB:.0f} GB: FSDP alone cannot train this model on these GPUs; it "
                      "needs expert / tensor parallelism (not in nanor1)")
    elif working > budget:
        advice.append(f"the per-GPU working set ({working / GB:.1f} GB: gathered units + activations) exceeds the "
                      "GPU: lower --batch / --seq" + ("" if ac else ", or --ac"))
    if 2 * n_all > budget:
        advice.append(f"gathered rollouts need the full bf16 weights on each GPU ({2 * n_all / GB:.0f} GB): "
                      "impossible here; sample with a tensor/expert-parallel inference engine")
    elif rollout > budget:
        advice.append(f"rollouts ({rollout / GB:.1f} GB): more GPUs or --offload (sharded state), a smaller rollout "
                      f"batch (KV cache {kv / GB:.1f} GB)")
    return {**rows, "train total": train, "kv cache (rollout, bf16)": kv,
            "rollout total (sharded state + full bf16 weights + kv)": rollout, "params": n_all,
            "params without MTP": model.num_params()["total_params"], "largest unit": unit, "root": root,
            "fits": max(train, rollout) <= budget, "train fits": train <= budget, "advice": advice}


def main():
    p = argparse.ArgumentParser(description="Per-GPU memory of FSDP2 training and gathered rollouts for a preset.")
    p.add_argument("preset", help="a nanor1.model preset, e.g. tiny, small, deepseek-v3")
    p.add_argument("--gpus", type=int, required=True, help="GPUs the model is sharded over")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence (prompt + completion)")
    p.add_argument("--batch", type=int, default=1, help="sequences per GPU per micro-step (and per rollout batch)")
    p.add_argument("--ac", action="store_true", help="activation checkpointing per block")
    p.add_argument("--offload", action="store_true", help="CPU offload of sharded weights, grads, optimizer")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU in GB")
    args = p.parse_args()
    if args.gpus < 1 or args.seq < 1 or args.batch < 1:
        p.error("--gpus, --seq and --batch must be >= 1")
    from nanor1.model import get_config
    r = plan(get_config(args.preset), gpus=args.gpus, seq=args.seq, batch=args.batch, ac=args.ac,
             offload=args.offload, gpu_gb=args.gpu_gb)
    print(f"{args.preset}: {r['params'] / 1e9:.2f}B parameters ({r['params without MTP'] / 1e9:.2f}B without MTP), "
          f"{args.gpus} GPUs, batch {args.batch} x seq {args.seq} per GPU{', AC' if args.ac else ''}"
          f"{', CPU offload' if args.offload else ''}")
    for k, v in r.items():
        if k in ("params", "params without MTP", "largest unit", "root"):
            break
        print(f"  {k:<75} {v / GB:10.2f} GB")
    budget = HEADROOM * args.gpu_gb
    print(f"  training {'fits' if r['train fits'] else 'does NOT fit'}, and everything "
          f"{'fits' if r['fits'] else 'does NOT fit'}, in {budget:.0f} of {args.gpu_gb:.0f} GB per GPU")
    for a in r["advice"]:
        print(f"  - {a}")


if __name__ == "__main__":
    main()
