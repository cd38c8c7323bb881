"""
Sampler throughput: generated tokens/s of cached decode vs full recompute, KV-cache bytes per token (MLA vs an
equal multi-head cache), and the fraction of the memory-bandwidth bound that decode reaches.

    python bench/sampler.py --quick                                  # CPU, tiny models, under a minute
    python bench/sampler.py                                          # CPU, tiny models, full sizes
    python bench/sampler.py --device cuda --out sampler_cuda.json    # GPU, bf16: tiny MLA-MoE + qwen2.5-0.5b, 1k ctx
    python bench/sampler.py --models mini --batches 1,8 --recompute-batches 8    # CPU, a ~30M-parameter MoE
    python bench/sampler.py --models small --batches 1,8 --recompute-batches ''  # the 1.2B-parameter (0.22B active) preset

Weights are random (speed does not depend on them) and no row stops early (eos_id=None), so every row generates
--new-tokens tokens. Rows: one prompt per row (group_size=1), sampled at temperature 1 (the RL setting).
Measured: `total` = one generate() call, prefill included; `decode` = total minus a generate() of one token (the
prefill), per remaining token. The bandwidth bound of one decode step is (weight bytes read + KV bytes read) /
bandwidth, with every routed expert that the batch could touch counted as read; `bw frac` = bound / measured step.
The bandwidth is measured (a 512 MiB copy) unless --bandwidth gives it.
Targets: cached >= 10x recompute at 256 new tokens; batch 8 >= 5x the tokens/s of batch 1; qwen2.5-0.5b on one
H100 at batch 256 and 1k context >= 100k tokens/s.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nanor1.model import Transformer, get_config  # noqa: E402
from nanor1.sampler import (SamplingParams, attention_kernels, generate, kv_bytes_per_token, left_pad,  # noqa: E402
                            sample)

# the presets benchmarked besides those of model.py: the two attention/FFN families at tiny size, where a CPU step is
# all overhead, and at ~30M parameters ("mini"), where the arithmetic a cache saves starts to show on a CPU
MINI = dict(dim=512, n_layers=8, n_heads=8, vocab_size=8192, inter_dim=1536)
MODELS = {"tiny": ("tiny", {}), "tiny-gqa": ("tiny", dict(attn="gqa", n_routed_experts=0, n_kv_heads=2)),
          "mini": ("tiny", MINI | dict(kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                                       n_routed_experts=16, n_activated_experts=4, moe_inter_dim=256)),
          "mini-gqa": ("tiny", MINI | dict(attn="gqa", n_routed_experts=0, n_kv_heads=2, head_dim=64))}
def run(model, prompts, *, max_new_tokens, temperature=1.0, eos_id=(), **kw):
    """generate() with its sampling settings as keywords (random sampling at `temperature`, stops at eos_id)."""
    eos = (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    return generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                   stop_ids=eos), **kw)


# decode modes (generate() arguments); "cached" is the eager reference
MODES = {"cached": dict(), "static": dict(decode_mode="static"), "compiled": dict(compile=True),
         "graph": dict(decode_mode="cuda_graph"), "graph+compile": dict(decode_mode="cuda_graph", compile=True)}


def build(name: str, device, dtype, seq_len: int) -> Transformer:
    preset, overrides = MODELS.get(name, (name, {}))
    cfg = get_config(preset, **overrides)
    if cfg.max_seq_len < seq_len:  # the tiny preset is 512 long
        cfg = get_config(preset, **overrides, max_seq_len=seq_len)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)
    return model.to(dtype).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def generate_recompute(model, prompts, n: int, seed: int = 0):
    """The baseline without a cache: every step re-runs the whole (left-padded) sequence."""
    device = model.embed.weight.device
    tokens, pos, real = left_pad(prompts, device)
    u = torch.rand(n, len(prompts), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    for t in range(n):
        with attention_kernels():  # the same kernels as generate()
            logits = model(tokens, pos=pos, key_mask=real).logits[:, -1].float()
        tok, _ = sample(logits, u[t])
        tokens = torch.cat([tokens, tok[:, None]], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        real = torch.cat([real, real[:, -1:]], 1)
    return tokens


def measure_bandwidth(device, nbytes: int = 2 ** 29) -> float:
    """Bytes/s of a large device-to-device copy (each byte read once and written once), best of 5."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / min(timed(lambda: dst.copy_(src), device) for _ in range(5))


def weight_bytes_per_step(model, rows: int) -> int:
    """Bytes of weights one decode step reads: all but the embedding table (only `rows` rows of it are read,
    unless tied to the head) and, per MoE layer, the routed experts the batch can touch (at most rows * K)."""
    cfg, total = model.cfg, 0
    for name, p in model.named_parameters():
        if name.startswith("mtp.") or (name == "embed.weight" and not cfg.tie_embeddings):
            continue
        nbytes = p.numel() * p.element_size()
        if name.endswith((".ffn.w1", ".ffn.w2", ".ffn.w3")):  # stacked routed experts [E, ...]
            nbytes = nbytes * min(cfg.n_routed_experts, rows * cfg.n_activated_experts) // cfg.n_routed_experts
        total += nbytes
    return total


def mha_kv_bytes_per_token(cfg, nbytes: int) -> int:
    """An ordinary multi-head cache of the same model: every head's full key and value, every layer."""
    if cfg.attn == "mla":
        return cfg.n_layers * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * nbytes
    return cfg.n_layers * 2 * cfg.n_heads * cfg.head_dim * nbytes


def kv_table():
    rows = []
    for name in ["tiny", "small", "deepseek-v2-lite", "deepseek-v3", "qwen2.5-0.5b", "qwen2.5-1.5b"]:
        with torch.device("meta"):
            model = Transformer(get_config(name)).to(torch.bfloat16)
        ours, mha = kv_bytes_per_token(model), mha_kv_bytes_per_token(model.cfg, 2)
        rows.append(dict(preset=name, attn=model.cfg.attn, kv_bytes_per_token=ours, mha_bytes_per_token=mha,
                         ratio=mha / ours))
    return rows


def bench_model(name, args, device, dtype) -> list[dict]:
    model = build(name, device, dtype, args.prompt_len + max(args.new_tokens, args.recompute_new_tokens))
    kv = kv_bytes_per_token(model)
    V = model.cfg.vocab_size
    results = []
    g = torch.Generator().manual_seed(0)

    def prompts(B, P):
        return torch.randint(1, V, (B, P), generator=g).tolist()

    def row(mode, B, P, T, total, decode=None):
        r = dict(model=name, device=device.type, dtype=str(dtype).replace("torch.", ""), mode=mode, batch=B,
                 prompt=P, new=T, total_s=total, gen_tok_s=B * T / total)
        if decode is not None:
            step = decode / (T - 1)
            bound = (weight_bytes_per_step(model, B) + B * (P + T / 2) * kv) / args.bandwidth
            r.update(decode_tok_s=B / step, step_ms=step * 1e3,
                     bw_frac=bound / step)
        results.append(r)
        print(fmt(r), flush=True)
        return r

    for B in args.batches:
        for mode in args.modes:
            ps = prompts(B, args.prompt_len)
            try:
                kw = dict(temperature=1.0, seed=0) | MODES[mode]
                for n in (1, min(8, args.new_tokens)):                                     # warm-up (and compile)
                    run(model, ps, max_new_tokens=n, **kw)
                t_prefill = timed(lambda: run(model, ps, max_new_tokens=1, **kw), device)
                total = timed(lambda: run(model, ps, max_new_tokens=args.new_tokens, **kw), device)
                row(mode, B, args.prompt_len, args.new_tokens, total, total - t_prefill)
            except torch.OutOfMemoryError:
                print(f"{name} batch {B}: out of memory, skipped")
                torch.cuda.empty_cache()
    for B in args.recompute_batches:  # cached vs recompute at the same (usually longer) generation length
        ps, T = prompts(B, args.prompt_len), args.recompute_new_tokens
        kw = dict(temperature=1.0, seed=0) | MODES[args.modes[-1]]  # the fastest mode asked for
        run(model, ps, max_new_tokens=4, **kw)
        generate_recompute(model, ps, 4)
        cached = row(args.modes[-1], B, args.prompt_len, T, timed(lambda: run(model, ps, max_new_tokens=T, **kw),
                                                             device))
        rec = row("recompute", B, args.prompt_len, T, timed(lambda: generate_recompute(model, ps, T), device))
        cached["speedup_vs_recompute"] = rec["total_s"] / cached["total_s"]
        print(f"{name} batch {B}, {T} new tokens: cached is {cached['speedup_vs_recompute']:.1f}x recompute")
    if args.ragged_mean:  # RL-like lengths: ~uniform samples of random weights hit one of V/mean EOS ids per step
        B, T, eos = args.ragged_batch, args.new_tokens, list(range(1, 1 + max(1, V // args.ragged_mean)))
        ps, times = prompts(B, args.prompt_len), {}
        for compact in (False, True):
            kw = dict(temperature=1.0, seed=0, eos_id=eos, compact=compact) | MODES[args.modes[-1]]
            run(model, ps, max_new_tokens=8, **kw)
            out = {}
            total = timed(lambda: out.setdefault("ro", run(model, ps, max_new_tokens=T, **kw)), device)
            lengths = out["ro"].mask.sum(1)
            r = dict(model=name, device=device.type, dtype=str(dtype).replace("torch.", ""), batch=B,
                     prompt=args.prompt_len, new=T, total_s=total, gen_tok_s=int(lengths.sum()) / total,
                     mode=("compact" if compact else "no-compact"), mean_len=lengths.float().mean().item(),
                     max_len=int(lengths.max()))
            results.append(r)
            times[compact] = total
            print(fmt(r), flush=True)
        print(f"{name} batch {B}, ragged lengths (mean {r['mean_len']:.0f}, max {r['max_len']}): dropping finished "
              f"rows is {times[False] / times[True]:.2f}x faster")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def fmt(r: dict) -> str:
    dec = f"{r['decode_tok_s']:>11,.0f} {r['step_ms']:>8.2f}" if "decode_tok_s" in r else f"{'-':>11} {'-':>8}"
    bw = f"{r['bw_frac']:>6.2f}" if r.get("bw_frac") is not None else f"{'-':>6}"
    return (f"{r['model']:<14} {r['device']:<5} {r['dtype']:<9} {r['mode']:<10} {r['batch']:>5} {r['prompt']:>6} "
            f"{r['new']:>5} {r['total_s']:>8.2f} {r['gen_tok_s']:>11,.0f} {dec} {bw}")


HEADER = (f"{'model':<14} {'dev':<5} {'dtype':<9} {'mode':<10} {'batch':>5} {'prompt':>6} {'new':>5} {'total s':>8} "
          f"{'gen tok/s':>11} {'decode t/s':>11} {'step ms':>8} {'bw frac':>6}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to run
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default=None, help="comma-separated presets (or tiny-gqa); default: cpu tiny,tiny-gqa; "
                    "cuda tiny,qwen2.5-0.5b")
    ap.add_argument("--quick", action="store_true", help="small sizes: about a minute on a CPU")
    ap.add_argument("--modes", default=None, help=f"comma-separated decode modes of {list(MODES)}; the last one is "
                    "also timed against recompute (default: cpu cached,static; cuda cached,graph,graph+compile)")
    # sizes
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,64,256)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default cpu 32, cuda 512)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default cpu 128, cuda 512)")
    ap.add_argument("--recompute-batches", default=None, help="batches timed against recompute (default 1,8; '' for none)")
    ap.add_argument("--recompute-new-tokens", type=int, default=256, help="new tokens for the recompute comparison")
    ap.add_argument("--ragged-mean", type=int, default=None, help="mean length of the ragged-length run, compaction "
                    "on vs off (default new-tokens / 4; 0 for none)")
    ap.add_argument("--ragged-batch", type=int, default=64, help="rows of the ragged-length run")
    # hardware
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: cpu float32, cuda bfloat16)")
    ap.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in bytes/s (default: measured)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    ints = lambda s: [int(x) for x in s.split(",") if x]
    models = (args.models or ("tiny,qwen2.5-0.5b" if cuda else "tiny,tiny-gqa")).split(",")
    args.modes = (args.modes or ("cached,graph,graph+compile" if cuda else "cached,static")).split(",")
    if unknown := set(args.modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    if args.quick:
        args.batches = ints(args.batches or "1,8,64")
        args.prompt_len, args.new_tokens = args.prompt_len or 16, args.new_tokens or 64
        args.recompute_batches = ints("1" if args.recompute_batches is None else args.recompute_batches)
    else:
        args.batches = ints(args.batches or "1,8,64,256")
        args.prompt_len = args.prompt_len or (512 if cuda else 32)
        args.new_tokens = args.new_tokens or (512 if cuda else 128)
        args.recompute_batches = ints("1,8" if args.recompute_batches is None else args.recompute_batches)
    args.ragged_mean = args.new_tokens // 4 if args.ragged_mean is None else args.ragged_mean
    args.bandwidth = args.bandwidth or measure_bandwidth(device)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"threads {torch.get_num_threads()}, dtype {dtype}, memory bandwidth {args.bandwidth / 1e9:.1f} GB/s")
    print(json.dumps({k: v for k, v in vars(args).items()}))

    kv = kv_table()
    print(f"\n{'preset':<18} {'attn':<5} {'KV B/token':>11} {'MHA B/token':>12} {'MHA / ours':>10}   (bf16)")
    for r in kv:
        print(f"{r['preset']:<18} {r['attn']:<5} {r['kv_bytes_per_token']:>11,} {r['mha_bytes_per_token']:>12,} "
              f"{r['ratio']:>10.1f}")

    print("\n" + HEADER)
    results = []
    for name in models:
        results += bench_model(name, args, device, dtype)

    print("\n" + HEADER)
    for r in results:
        print(fmt(r))
    print("\ntargets:")
    for name in models:
        mine = [r for r in results if r["model"] == name]
        for r in mine:
            if "speedup_vs_recompute" in r:
                ok = "ok" if r["speedup_vs_recompute"] >= 10 else "MISSED"
                print(f"  {name}: cached / recompute at batch {r['batch']}, {r['new']} new: "
                      f"{r['speedup_vs_recompute']:.1f}x (target >= 10x) {ok}")
        dec = {r["batch"]: r["decode_tok_s"] for r in mine if r["mode"] == "cached" and "decode_tok_s" in r}
        if 1 in dec and 8 in dec:
            ratio = dec[8] / dec[1]
            print(f"  {name}: decode tok/s batch 8 / batch 1: {ratio:.1f}x (target >= 5x) "
                  f"{'ok' if ratio >= 5 else 'MISSED'}")
        if name == "qwen2.5-0.5b" and cuda:
            for r in mine:
                if r["batch"] == 256 and "decode_tok_s" in r:
                    print(f"  {name} {r['mode']} batch 256, {r['prompt']}+{r['new']} tokens: "
                          f"{r['decode_tok_s']:,.0f} decode tok/s (target >= 100k) "
                          f"{'ok' if r['decode_tok_s'] >= 1e5 else 'MISSED'}")
    if args.out:
        meta = dict(torch=torch.__version__, device=torch.cuda.get_device_name() if cuda else "cpu",
                    args=vars(args), dtype=str(dtype))
        Path(args.out).write_text(json.dumps(dict(meta=meta, kv=kv, results=results), indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
