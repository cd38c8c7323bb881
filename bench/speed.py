"""
CPU speed of the tiny path, old vs new in one process: pretraining tokens/s, the RL update, decode tokens/s.

    python bench/speed.py --quick                 # tiny preset, about a minute and a half on 2 cores
    python bench/speed.py                         # tiny and mini (~30M MoE, bench/sampler.py's), longer runs
    python bench/speed.py --quick --cpu-time      # the same, 1 thread, CPU time: for a machine others share
    python bench/speed.py --omp                   # OMP_WAIT_POLICY default vs PASSIVE, alone and beside a busy job

"old" is the plain path: model.FAST_PATHS = False (padded-bmm experts, SDPA's math kernel for MLA with an explicit
causal mask), AdamW without fused, token_logprobs (every row's prompt recomputed). "new" is the default:
FAST_PATHS = True (experts by contiguous row blocks, or all experts for <= DENSE_EXPERTS_MAX_TOKENS tokens without
autograd; MLA's v padded to the q/k head dim so SDPA takes its fused kernel; is_causal), make_optimizer's fused
AdamW, and group_token_logprobs (each distinct prompt once). Each measurement alternates old and new and keeps the
median, so a job that shares the machine slows both alike; still, quote ratios, not absolute numbers.
Weights and tokens are random: speed does not depend on them.
  pretrain: lm_loss forward + backward + AdamW step on a batch of --pretrain-batch x --pretrain-len tokens; and
            (tiny) sft_loss steps over 24 length-bucketed batches of 48 documents of the default pretraining corpus,
            where the templated transcripts' common prefix (the R1-Zero instructions) runs once per batch.
  RL update: log-probs forward + backward of 8 prompts x G=8 completions (prompts 50-70 tokens, completions 20-60:
             about 60% of the columns are prompt, as in the R1-Zero default).
  decode: generate() of 8 prompts x G=8 (and of 1 prompt) x --new-tokens tokens, prefill included; new with each
          step on model.forward (sampler.CPU_DECODER = False) and on model.Decoder (the default).
"""
import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nanor1.model as M  # noqa: E402
import nanor1.sampler as S  # noqa: E402
from nanor1.sampler import SamplingParams, generate, group_token_logprobs, pack, token_logprobs  # noqa: E402
from nanor1.training import make_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler import MODELS  # noqa: E402  (bench/sampler.py's presets: tiny, mini, ...)


def build(name: str) -> M.Transformer:
    preset, overrides = MODELS[name]
    torch.manual_seed(0)
    return M.Transformer(M.get_config(preset, **overrides))


def paths(new: bool):
    """Switch the model's CPU fast paths on (new) or off (old)."""
    M.FAST_PATHS = new


CLOCK = time.perf_counter  # --cpu-time: time.process_time, with one thread


def alternate(fns: dict, repeats: int) -> dict:
    """Median seconds of each fn, calling them in turn `repeats` times (after one warm-up call each)."""
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t0 = CLOCK()
            fn()
            if r:
                times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_pretrain(name, args, kinds=("old", "new")) -> dict:
    B, T = args.pretrain_batch, args.pretrain_len
    g = torch.Generator().manual_seed(0)
    models, opts = {}, {}
    for kind in kinds:
        models[kind] = build(name).train()
        params = list(models[kind].parameters())
        opts[kind] = (make_optimizer(models[kind], 1e-4, 0.1) if kind == "new" else
                      torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                        lr=1e-4, betas=(0.9, 0.95)))
    tokens = torch.randint(1, models[kinds[0]].cfg.vocab_size, (B, T), generator=g)

    def step(kind):
        def fn():
            paths(kind == "new")
            loss, _ = M.lm_loss(models[kind], tokens, torch.ones_like(tokens))
            opts[kind].zero_grad(set_to_none=True)
            loss.backward()
            opts[kind].step()
        return fn
    t = alternate({k: step(k) for k in kinds}, args.repeats)
    return {k: B * T / v for k, v in t.items()}                      # tokens/s


def bench_pretrain_corpus(args, n_batches=24) -> dict:
    """Tokens/s of pretraining steps on the default corpus's own batches (pretrain.py: 80% worked examples in the
    template with its instructions cut at a random word, 20% whole R1-Zero transcripts; no batch of one epoch shares
    more than BOS, so the shared-prefix pass saves nothing here): old, new without sft_loss's shared-prefix pass,
    new. Real tokens only (padding excluded)."""
    import pretrain
    from nanor1 import sft
    from nanor1.tasks import make_task
    from nanor1.tokenizer import train_bpe
    pargs = pretrain.get_args(["--n-docs", str(48 * n_batches * 4)])
    docs, _ = pretrain.build_corpus(make_task(pargs.task, **pargs.task_kwargs), pargs)
    tok = train_bpe([pretrain.doc_text(d) for d in docs[:5000]], vocab_size=pargs.vocab_size)
    seqs = [pretrain.render_doc(tok, d) for d in docs]
    batches = sft.length_bucketed_batches([len(ids) for ids, _ in seqs], 48, random.Random(0))[:n_batches]
    batches = [sft.collate([seqs[i] for i in b], tok.pad_id) for b in batches]
    n_real = sum(int(m.sum()) for _, m in batches)
    models, opts = {}, {}
    kinds = {"old": (False, False), "new, no shared prefix": (True, False), "new": (True, True)}
    for kind in kinds:
        models[kind] = build("tiny").train()
        opts[kind] = make_optimizer(models[kind], 1e-4, 0.1)

    def epoch(kind):
        def fn():
            paths(kinds[kind][0])
            for tokens, mask in batches:
                loss, _ = sft.sft_loss(models[kind], tokens, mask, shared_prefix=kinds[kind][1])
                opts[kind].zero_grad(set_to_none=True)
                loss.backward()
                opts[kind].step()
        return fn
    t = alternate({k: epoch(k) for k in kinds}, max(1, args.repeats // 2))
    paths(True)
    return {k: n_real / v for k, v in t.items()}


def rl_batch(model, n_prompts=8, G=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.vocab_size
    prompts = [torch.randint(1, V, (int(torch.randint(50, 71, (), generator=g)),), generator=g).tolist()
               for _ in range(n_prompts)]
    rows = [p for p in prompts for _ in range(G)]
    lengths = torch.randint(20, 61, (len(rows),), generator=g)
    T = int(lengths.max())
    comp = torch.randint(1, V, (len(rows), T), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    return pack(rows, comp, mask)


def bench_rl_update(name, args) -> dict:
    model = build(name).train()
    batch = rl_batch(model)
    adv = torch.randn(batch.tokens.size(0), generator=torch.Generator().manual_seed(1))

    def update(fn, new):
        def run():
            paths(new)
            model.zero_grad(set_to_none=True)
            logp, _ = fn(model, batch, 1.0, with_entropy=True)
            (logp * adv[:, None]).sum().backward()
        return run
    t = alternate({"old": update(token_logprobs, False), "new, full forward": update(token_logprobs, True),
                   "new": update(group_token_logprobs, True)}, args.repeats)
    return t                                                           # seconds


@torch.no_grad()
def bench_decode(name, args) -> dict:
    model = build(name).eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, model.cfg.vocab_size, (24,), generator=g).tolist() for _ in range(8)]
    out = {}
    for label, ps, G in (("batch 64 (8 x G 8)", prompts, 8), ("batch 1", prompts[:1], 1)):
        def run(new, decoder=True, ps=ps, G=G):
            def fn():
                paths(new)
                S.CPU_DECODER = decoder
                generate(model, ps, SamplingParams(max_new_tokens=args.new_tokens), group_size=G, seed=0)
            return fn
        t = alternate({"old": run(False), "new, model.forward steps": run(True, False), "new": run(True)},
                      args.repeats)
        S.CPU_DECODER = True
        out[label] = {k: len(ps) * G * args.new_tokens / v for k, v in t.items()}  # tokens/s
    paths(True)
    return out


def omp_contention(args):
    """Pretraining tokens/s of the tiny preset in a child process, OMP_WAIT_POLICY default vs PASSIVE, alone and with
    one busy single-thread job (a pure-python loop) beside it."""
    cmd = [sys.executable, __file__, "--child-pretrain", "--repeats", str(args.repeats)]
    busy = [sys.executable, "-c", "while True: pass"]
    rows = []
    for contended in (False, True):
        for policy in (None, "PASSIVE"):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            hog = subprocess.Popen(busy) if contended else None
            try:
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            rows.append((policy or "default (active)", "1 busy job beside it" if contended else "alone",
                         float(out.strip().splitlines()[-1])))
    print("\n| OMP_WAIT_POLICY | machine | tiny pretraining tok/s (new path) |\n| --- | --- | --- |")
    for policy, where, tok_s in rows:
        print(f"| {policy} | {where} | {tok_s:,.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny only, fewer repeats: about a minute and a half")
    ap.add_argument("--models", default=None, help="comma-separated, from bench/sampler.py's MODELS (default "
                    "tiny,mini; --quick: tiny)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per path (median kept)")
    ap.add_argument("--pretrain-batch", type=int, default=48, help="rows of a pretraining batch")
    ap.add_argument("--pretrain-len", type=int, default=100, help="tokens per pretraining row")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode tokens per row (default 64; --quick 32)")
    ap.add_argument("--omp", action="store_true", help="measure OMP_WAIT_POLICY default vs PASSIVE under contention")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, and time this process's CPU time instead "
                    "of the wall clock: ratios that hold when other jobs load the machine (OpenMP spin excluded)")
    ap.add_argument("--child-pretrain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.new_tokens = args.new_tokens or (32 if args.quick else 64)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
        torch.set_num_threads(1)
    if args.child_pretrain:  # one number for omp_contention
        args.pretrain_batch, args.pretrain_len = 48, 100
        print(bench_pretrain("tiny", args, kinds=("new",))["new"])
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    if args.omp:
        omp_contention(args)
        return
    models = (args.models or ("tiny" if args.quick else "tiny,mini")).split(",")
    rows = []
    for name in models:
        t0 = time.perf_counter()
        p = bench_pretrain(name, args)
        rows.append((name, f"pretrain tok/s ({args.pretrain_batch} x {args.pretrain_len})", p["old"], p["new"],
                     p["new"] / p["old"]))
        if name == "tiny":   # the default corpus's batches: shared-prefix pass on the templated documents
            c = bench_pretrain_corpus(args)
            rows.append((name, "pretrain tok/s, default corpus, fast paths, no shared prefix", c["old"],
                         c["new, no shared prefix"], c["new, no shared prefix"] / c["old"]))
            rows.append((name, "pretrain tok/s, default corpus, + shared prefix", c["old"], c["new"],
                         c["new"] / c["old"]))
        u = bench_rl_update(name, args)
        rows.append((name, "RL update s (8 x G 8), fast paths, full forward", u["old"], u["new, full forward"],
                     u["old"] / u["new, full forward"]))
        rows.append((name, "RL update s (8 x G 8), + group_token_logprobs", u["old"], u["new"], u["old"] / u["new"]))
        for label, d in bench_decode(name, args).items():
            rows.append((name, f"decode tok/s, {label}, {args.new_tokens} new, fast paths, model.forward steps",
                         d["old"], d["new, model.forward steps"], d["new, model.forward steps"] / d["old"]))
            rows.append((name, f"decode tok/s, {label}, {args.new_tokens} new, + model.Decoder steps", d["old"],
                         d["new"], d["new"] / d["old"]))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print("\n| model | measure | old | new | new vs old |\n| --- | --- | --- | --- | --- |")
    for name, what, old, new, ratio in rows:
        fmt = (lambda v: f"{v:.3f}") if " s " in what else (lambda v: f"{v:,.0f}")
        print(f"| {name} | {what} | {fmt(old)} | {fmt(new)} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
