"""
nanor1 against HF transformers' generate and TRL's GRPOTrainer, measured side by side in one process.

    /work/refvenv/bin/python bench/compare_hf.py                 # decode (batch 1, 8, 32) + one GRPO step, ~10 min
    /work/refvenv/bin/python bench/compare_hf.py --skip-grpo     # decode only
    /work/refvenv/bin/python bench/compare_hf.py --skip-decode --grpo-steps 3
    /work/refvenv/bin/python bench/compare_hf.py --skip-grpo --threads 1       # steadier on a machine others share

A development benchmark: it needs `transformers` and `trl` (a separate virtual environment, never a dependency of
nanor1 or its tests; without them it says so and exits 0). The model is the issue's Qwen2-shaped comparison: a
random Qwen2ForCausalLM (4 layers, hidden 256, 8 query heads over 2 KV heads, head dim 32, the tiny BPE's vocab)
built by transformers, saved, and loaded into nanor1 by nanor1.checkpoint.load, so both run the same weights.

decode: greedy generate() of --new-tokens tokens per row, no EOS on either side (every row runs to the limit),
  the same left-padded prompts (16-40 tokens). Greedy tokens are checked identical first. Then nanor1 "plain"
  (model.FAST_PATHS = False: the readable reference paths), nanor1 "fast" (the default) and HF
  `model.generate(do_sample=False)` take turns, --repeats times; medians of wall and process CPU time are kept
  (CPU time counts every thread of this process: steadier than the wall clock when other jobs share the machine).
  The aten ops per decode step are counted with torch.profiler (ops of generate() at 2T - at T = 16 new tokens, / T),
  and so is the time a step spends in matrix multiplies (the profiler's self time of mm / addmm / bmm / baddbmm):
  HF's step time over its matmul time is the most any decode running the same matmuls could gain over HF.
--compile adds nanor1's compiled decode (generate(decode_mode="static", compile=True): fixed shapes, the forward
  compiled by inductor once per batch and length; --cpp-wrapper: inductor's C++ wrapper, no Python between its
  kernels): its compile seconds are reported and not timed.
GRPO: one step of 4 prompts x G 8 x 64 tokens (sampling at temperature 1, no EOS), beta 0.04 (a frozen reference
  model), one optimizer step over the 32 rows: nanor1's train_zero.rl_step against TRL's GRPOTrainer
  (generation_batch_size 32 = per_device_train_batch_size 32, num_generations 8, max_completion_length 64 with
  min_new_tokens 64, steps_per_generation 1, num_iterations 1, loss "dapo" = nanor1's token-mean, no vLLM, and
  gradient_checkpointing off: TRL turns it on by default, nanor1 does not recompute activations).
  The steps interleave: a TRL callback runs one nanor1 step after each TRL step; the first of each is a warm-up.
  The reward is a trivial function of the text (same on both sides); prompts are the arithmetic task's, in the
  R1-Zero template. nanor1 samples with the seed of the step; TRL with its own.
Timings are noisy on a shared machine: quote the ratios. Both sides run under the same OMP_WAIT_POLICY, the one in
the environment (unset, as the scripts run by default; until 2026-12-02 this benchmark set PASSIVE itself).
"""
import os
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    import transformers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
except ImportError:
    print("bench/compare_hf.py needs transformers (and trl for the GRPO step) in a separate virtual environment, "
          "e.g. python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers trl; skipped.")
    sys.exit(0)

import nanor1.model as M  # noqa: E402
from nanor1 import checkpoint  # noqa: E402
from nanor1.sampler import SamplingParams, generate, left_pad  # noqa: E402
from nanor1.tasks import make_task  # noqa: E402
from nanor1.templates import get_template  # noqa: E402
from nanor1.tokenizer import train_bpe  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# The model, on both sides


def build(folder: Path, seed: int = 0):
    """A random Qwen2-shaped model and the tiny BPE, saved as an HF folder; returns (hf model, nanor1 model, tok)."""
    task = make_task("arithmetic", n_terms=5)
    template = get_template("r1-zero")
    texts = [template.prompt(p.question) + template.response("a b c", p.answer) for p in task.sample("train", 400, 0)]
    tok = train_bpe(texts, vocab_size=512)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                      rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6, initializer_range=0.05,
                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    hf = Qwen2ForCausalLM(cfg).eval()
    hf.save_pretrained(folder)
    tok.save(folder)
    ours, _, _ = checkpoint.load(folder)
    return hf, ours.eval(), tok


def hf_tokenizer(folder: Path, tok):
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token=tok.bos_token,
                                   eos_token=tok.eos_token, pad_token=tok.pad_token, padding_side="left")


# ----------------------------------------------------------------------------------------------------------------
# Decode


def prompts_for(batch: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (int(torch.randint(16, 41, (), generator=g)),), generator=g).tolist()
            for _ in range(batch)]


def hf_generate(hf, prompts, new_tokens: int) -> torch.Tensor:
    """HF greedy decode of new_tokens per row, no EOS; returns [B, new_tokens]."""
    tokens, _, real = left_pad(prompts)
    out = hf.generate(input_ids=tokens, attention_mask=real.long(), do_sample=False, max_new_tokens=new_tokens,
                      eos_token_id=None, pad_token_id=0, use_cache=True)
    return out[:, tokens.size(1):]


def ours_generate(model, prompts, new_tokens: int, fast: bool = True, compiled: bool = False) -> torch.Tensor:
    """nanor1's greedy decode: the default eager path, the plain reference paths (fast=False), or compiled=True:
    static shapes (every step attends over all cache slots, masked) with the forward torch.compile'd once per batch
    shape (inductor; the first call compiles)."""
    M.FAST_PATHS = fast
    kw = dict(decode_mode="static", compile=True) if compiled else {}
    try:
        return generate(model, prompts, SamplingParams(max_new_tokens=new_tokens, greedy=True), **kw).tokens
    finally:
        M.FAST_PATHS = True


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profiled(fn) -> tuple[int, float]:
    """(aten ops, milliseconds inside matrix multiplies: the profiler's self time of MATMULS) of one call of fn."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = sum(1 for e in prof.events() if e.name.startswith("aten::"))
    return ops, sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS) / 1e3


def per_step(gen, T: int = 16, repeats: int = 3) -> tuple[float, float]:
    """(aten ops, matmul milliseconds) per decode step: a 2T-token generate minus a T-token one, over T (the median
    of `repeats` such differences: one profile's matmul time is noisy). The matmul time is the floor of any decode
    running the same matrix multiplies: a step at HF's time t with m of it in matmuls can be at most t / m faster
    without changing them (fusing them, or a faster GEMM)."""
    diffs = []
    for _ in range(repeats):
        (ops2, mm2), (ops1, mm1) = profiled(lambda: gen(2 * T)), profiled(lambda: gen(T))
        diffs.append(((ops2 - ops1) / T, (mm2 - mm1) / T))
    return statistics.median(d[0] for d in diffs), statistics.median(d[1] for d in diffs)


@torch.no_grad()
def bench_decode(hf, ours, vocab: int, args) -> list[tuple]:
    rows = []
    for B in args.batches:
        prompts = prompts_for(B, vocab, seed=B)
        T = args.new_tokens
        a, b = ours_generate(ours, prompts, T), hf_generate(hf, prompts, T)
        same = torch.equal(a, b)
        plain_same = torch.equal(ours_generate(ours, prompts, T, fast=False), b)
        runs = {"nanor1 plain": lambda: ours_generate(ours, prompts, T, fast=False),
                "nanor1": lambda: ours_generate(ours, prompts, T),
                "HF generate": lambda: hf_generate(hf, prompts, T)}
        compile_s = None
        if args.compile:  # compile first (not timed: its seconds are reported), then time it with the others
            t0 = time.perf_counter()
            same = same and torch.equal(ours_generate(ours, prompts, T, compiled=True), b)
            compile_s = time.perf_counter() - t0
            runs["nanor1 compiled"] = lambda: ours_generate(ours, prompts, T, compiled=True)
        times = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                times[k].append(timed(fn))
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
        steps = {"nanor1 plain": per_step(lambda n: ours_generate(ours, prompts, n, fast=False)),
                 "nanor1": per_step(lambda n: ours_generate(ours, prompts, n)),
                 "HF generate": per_step(lambda n: hf_generate(hf, prompts, n))}
        if args.compile:
            for n in (16, 32):  # compile per_step's two lengths outside its profiles
                ours_generate(ours, prompts, n, compiled=True)
            steps["nanor1 compiled"] = per_step(lambda n: ours_generate(ours, prompts, n, compiled=True))
        ops, mm = ({k: v[i] for k, v in steps.items()} for i in (0, 1))
        rows.append((B, same, plain_same, {k: (B * T / w, B * T / c) for k, (w, c) in med.items()}, ops, mm,
                     compile_s))
        print(f"decode batch {B}: done", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# One GRPO step


class _NoStopTokenizer:
    """nanor1's tokenizer with an EOS id no model can sample: every completion runs to max_new_tokens, as TRL's do
    with min_new_tokens (equal work on both sides)."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_id = 10 ** 9

    def __getattr__(self, name):
        return getattr(self.tok, name)


def trivial_reward(texts) -> list[float]:
    return [float(len(t) % 7) for t in texts]          # varies within a group, so advantages are not all 0


def bench_grpo(folder: Path, tok, args) -> dict:
    import copy
    from dataclasses import replace

    import datasets
    import trl
    from transformers import TrainerCallback

    import train_zero
    from nanor1.grpo import GRPOConfig
    from nanor1.training import make_optimizer

    n_prompts, G, T = 4, 8, 64
    template = replace(get_template("r1-zero"), stop_strings=())
    problems = make_task("arithmetic", n_terms=5).sample("train", n_prompts * (args.grpo_steps + 1), seed=1)

    # nanor1: the policy, a frozen reference copy, AdamW as train_zero makes it
    policy, _, _ = checkpoint.load(folder)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = make_optimizer(policy, 1e-6, 0.0)
    cfg = GRPOConfig(group_size=G, max_new_tokens=T, beta=0.04, micro_batch=n_prompts * G)
    reward_fn = lambda texts, probs: (trivial_reward(texts), {})  # noqa: E731
    ours_tok = _NoStopTokenizer(tok)

    def ours_step(i: int):
        batch = problems[i * n_prompts:(i + 1) * n_prompts]
        return train_zero.rl_step(policy, optimizer, ours_tok, template, batch, reward_fn, cfg, seed=i, ref=ref)

    # TRL: the same weights, the same prompts (as text), the same geometry
    data = datasets.Dataset.from_list([{"prompt": template.prompt(p.question)} for p in problems])
    config = trl.GRPOConfig(
        output_dir=str(folder / "trl"), per_device_train_batch_size=n_prompts * G, generation_batch_size=n_prompts * G,
        num_generations=G, max_completion_length=T, generation_kwargs={"min_new_tokens": T}, temperature=1.0,
        beta=0.04, num_iterations=1, loss_type="dapo", learning_rate=1e-6, max_steps=args.grpo_steps + 1,
        gradient_accumulation_steps=1, logging_steps=10 ** 6, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, fp16=False, gradient_checkpointing=False, shuffle_dataset=False, dataloader_num_workers=0,
        disable_dropout=True, seed=0)
    times = {"nanor1": [], "TRL": [], "nanor1 parts": []}

    class Interleave(TrainerCallback):
        """After each TRL step, one nanor1 step; TRL's step is timed from the end of the previous nanor1 step."""
        mark = None

        def on_train_begin(self, *a, **k):
            self.mark = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a, **k):
            times["TRL"].append((time.perf_counter() - self.mark[0], time.process_time() - self.mark[1]))
            i = len(times["TRL"]) - 1
            w, c = time.perf_counter(), time.process_time()
            m = ours_step(i)
            times["nanor1"].append((time.perf_counter() - w, time.process_time() - c))
            times["nanor1 parts"].append({k: m[k] for k in ("time/generate", "time/ref_logprobs", "time/update")})
            print(f"GRPO step {i}: TRL {times['TRL'][-1][0]:.2f} s, nanor1 {times['nanor1'][-1][0]:.2f} s",
                  file=sys.stderr, flush=True)
            self.mark = (time.perf_counter(), time.process_time())

    trainer = trl.GRPOTrainer(model=str(folder), reward_funcs=lambda completions, **kw: trivial_reward(completions),
                              args=config, train_dataset=data, processing_class=hf_tokenizer(folder, tok),
                              callbacks=[Interleave()])
    trainer.train()
    out = {k: v[1:] for k, v in times.items()}                          # drop the warm-up step
    return {"TRL": (statistics.median(w for w, _ in out["TRL"]), statistics.median(c for _, c in out["TRL"])),
            "nanor1": (statistics.median(w for w, _ in out["nanor1"]), statistics.median(c for _, c in out["nanor1"])),
            "parts": {k: statistics.median(p[k] for p in out["nanor1 parts"]) for k in out["nanor1 parts"][0]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32", help="decode batch sizes")
    ap.add_argument("--new-tokens", type=int, default=64, help="decode tokens per row")
    ap.add_argument("--repeats", type=int, default=5, help="timed decode repeats per side (median kept)")
    ap.add_argument("--grpo-steps", type=int, default=2, help="timed GRPO steps per side, after one warm-up step")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for both sides (default: torch's); "
                    "1 is steadier when other jobs share the machine")
    ap.add_argument("--compile", action="store_true", help="also time nanor1's compiled decode (static shapes, "
                    "torch.compile'd forward; compile seconds reported, not timed)")
    ap.add_argument("--cpp-wrapper", action="store_true", help="with --compile: inductor's C++ wrapper (no Python "
                    "between the compiled kernels; longer compile)")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-grpo", action="store_true")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.compile:  # one compiled step per (batch, length) shape: keep them all rather than fall back to eager
        from torch._dynamo import config as dynamo_config
        dynamo_config.recompile_limit = 64
    if args.cpp_wrapper:
        if not args.compile:
            ap.error("--cpp-wrapper needs --compile")
        from torch._inductor import config as inductor_config
        inductor_config.cpp_wrapper = True
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    try:
        import trl
        versions += f", trl {trl.__version__}"
    except ImportError:
        if not args.skip_grpo:
            print("trl is not installed: the GRPO comparison is skipped", file=sys.stderr)
            args.skip_grpo = True
    print(f"{versions}; {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset: threads spin, as train_zero.py runs)')}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen2-tiny"
        hf, ours, tok = build(folder)
        n = sum(p.numel() for p in hf.parameters())
        print(f"model: Qwen2ForCausalLM, 4 layers, hidden 256, 8 heads / 2 KV heads, vocab {tok.vocab_size}, "
              f"{n / 1e6:.2f}M parameters")
        if not args.skip_decode:
            rows = bench_decode(hf, ours, tok.vocab_size, args)
            print(f"\ndecode, greedy, {args.new_tokens} new tokens per row, prefill included; tokens/s = median over "
                  f"{args.repeats} alternating runs (wall clock | process CPU time)\n")
            print("| batch | tokens equal (fast, plain) | HF generate | nanor1 plain | nanor1 | nanor1 / HF "
                  "(wall, CPU) | aten ops/step: HF, plain, nanor1 | ms/step: HF, in its matmuls, nanor1's matmuls "
                  "| HF step / HF matmuls |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for B, same, plain_same, tps, ops, mm, _ in rows:
                hf_ms = 1e3 * B / tps["HF generate"][0]   # wall ms per decode step (prefill included, as timed)
                cell = lambda k: f"{tps[k][0]:,.0f} \\| {tps[k][1]:,.0f}"  # noqa: E731
                ratio = (f"{tps['nanor1'][0] / tps['HF generate'][0]:.2f}x, "
                         f"{tps['nanor1'][1] / tps['HF generate'][1]:.2f}x")
                print(f"| {B} | {same}, {plain_same} | {cell('HF generate')} | {cell('nanor1 plain')} | "
                      f"{cell('nanor1')} | {ratio} | {ops['HF generate']:.0f}, {ops['nanor1 plain']:.0f}, "
                      f"{ops['nanor1']:.0f} | {hf_ms:.2f}, {mm['HF generate']:.2f}, {mm['nanor1']:.2f} | "
                      f"{hf_ms / mm['HF generate']:.2f}x |")
            print("\nHF step / HF matmuls: the most any decode running HF's matrix multiplies could gain over HF")
            if args.compile:
                print(f"\nnanor1 compiled ({'inductor, C++ wrapper' if args.cpp_wrapper else 'inductor'}; the tokens "
                      "equal column includes it): compile seconds, tokens/s (wall | CPU), / HF, aten ops per step (its fused "
                      "kernels are not aten ops, nor are its matmuls the ones counted above)\n")
                print("| batch | compile s | tokens/s | / HF (wall) | aten ops/step |")
                print("| --- | --- | --- | --- | --- |")
                for B, _, _, tps, ops, _, compile_s in rows:
                    k = "nanor1 compiled"
                    print(f"| {B} | {compile_s:.0f} | {tps[k][0]:,.0f} \\| {tps[k][1]:,.0f} | "
                          f"{tps[k][0] / tps['HF generate'][0]:.2f}x | {ops[k]:.0f} |")
        if not args.skip_grpo:
            r = bench_grpo(folder, tok, args)
            print(f"\nGRPO step, 4 prompts x G 8 x 64 tokens, beta 0.04: median of {args.grpo_steps} interleaved "
                  f"steps after a warm-up (seconds: wall | process CPU)\n")
            print("| TRL GRPOTrainer | nanor1 rl_step | TRL / nanor1 (wall, CPU) | nanor1: generate, ref, update |")
            print("| --- | --- | --- | --- |")
            p = r["parts"]
            print(f"| {r['TRL'][0]:.2f} \\| {r['TRL'][1]:.2f} | {r['nanor1'][0]:.2f} \\| {r['nanor1'][1]:.2f} | "
                  f"{r['TRL'][0] / r['nanor1'][0]:.2f}x, {r['TRL'][1] / r['nanor1'][1]:.2f}x | "
                  f"{p['time/generate']:.2f}, {p['time/ref_logprobs']:.2f}, {p['time/update']:.2f} |")


if __name__ == "__main__":
    main()
