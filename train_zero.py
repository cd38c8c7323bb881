"""
train_zero.py: DeepSeek-R1-Zero, reproduced in miniature. GRPO straight from a base model, no SFT, rule rewards only.

The paper (sec. 2.2): for each question sample G outputs from the old policy, reward them with rules (accuracy of
the final answer + format: reasoning in <think></think>, answer in <answer></answer>), normalise rewards within
the group into advantages, and maximise the clipped objective (nanor1/grpo.py). Pass@1 rises, responses grow
longer on their own, and the model starts to re-check its work.

The loop, visible below: questions -> G completions each (sampler, KV cache) -> rule rewards -> group advantages
-> mu GRPO updates -> log. Every --eval-every steps: held-out pass@1 over k samples and cons@k, samples saved.

How this run differs from the paper (besides scale): the base model is a 1.5M-parameter MoE+MLA model pretrained
by pretrain.py on a generated corpus (see its docstring: the reasoning modes RL selects are in that corpus);
the task is generated arithmetic instead of math/code competitions; token-mean loss aggregation (DAPO) instead of
the per-sequence mean, which penalises the longer, correct reasoning mode at this scale; beta = 0 by default (the
paper uses a KL term; --beta turns it on and loads a frozen reference model); format reward weight 0.1.

Commands:
  python train_zero.py                                   # the default demonstration: pretrain if needed, RL, eval
  python train_zero.py --base runs/base --steps 200 --out runs/zero-long
  python train_zero.py --base /path/to/hf-folder --task-file data/gsm8k_train.jsonl --device cuda --beta 0.001 \
      --max-new-tokens 1024 --prompts-per-step 32 --group-size 16
  python train_zero.py --resume                          # continue runs/zero from its last checkpoint
Single process for now; the step (nanor1.grpo.rl_step) is data-parallel-ready (global loss normalisation, each
group whole on one rank) for the FSDP issue.
"""
import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from nanor1 import checkpoint
from nanor1.grpo import GRPOConfig, rl_step
from nanor1.rollout import default_reward_fn, evaluate
from nanor1.tasks import load_jsonl, make_task
from nanor1.training import (JsonlLogger, autocast, lr_at, make_optimizer, pick_device, print0, rng_state,
                             seed_everything, set_lr, set_rng_state)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    p.add_argument("--base", default="runs/base", help="base checkpoint (nanor1 or HF folder); made by pretrain.py "
                                                      "when it is the default and missing")
    p.add_argument("--out", default="runs/zero", help="output folder: metrics, samples, checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    # data
    p.add_argument("--task", default="arithmetic", help="built-in task: arithmetic | countdown")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', help="JSON dict of task options")
    p.add_argument("--task-file", default=None, help="train on a JSONL file of {problem, answer} instead")
    p.add_argument("--eval-file", default=None, help="evaluate on a JSONL file instead of the task's test split")
    # GRPO
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--beta", type=float, default=0.0, help="KL weight (k3 estimator) to the frozen base")
    p.add_argument("--eps-low", type=float, default=0.2)
    p.add_argument("--eps-high", type=float, default=0.2)
    p.add_argument("--mu", type=int, default=1, help="GRPO iterations per batch")
    p.add_argument("--minibatches", type=int, default=1, help="optimizer steps per iteration")
    p.add_argument("--micro-batch", type=int, default=64, help="sequences per forward/backward")
    p.add_argument("--loss-agg", default="token-mean", help="seq-mean-token-mean (paper) | token-mean | "
                                                          "seq-mean-token-sum-norm")
    p.add_argument("--adv-scale", default="group", help="group (paper) | none (Dr. GRPO) | batch")
    p.add_argument("--dynamic-sampling", action="store_true", help="DAPO: refill groups with equal rewards")
    p.add_argument("--overlong", default="none", help="none | mask | penalty")
    p.add_argument("--replay-routing", action="store_true", help="MoE: train with the experts the sampler chose")
    p.add_argument("--format-weight", type=float, default=0.1)
    p.add_argument("--accuracy-weight", type=float, default=1.0)
    # evaluation and logging
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--eval-k", type=int, default=8)
    p.add_argument("--eval-temperature", type=float, default=0.6)
    p.add_argument("--eval-top-p", type=float, default=0.95)
    p.add_argument("--save-every", type=int, default=20)
    # run
    p.add_argument("--device", default="auto")
    p.add_argument("--decode-mode", default="eager", help="sampler decode step: eager | static | cuda_graph (GPU: "
                   "one CUDA graph launch per token; MoE models need bf16 weights)")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def problem_source(args):
    """(train_batch(step, n) -> problems, eval problems). Train questions for a step depend only on (seed, step):
    the data position of a resumed run is its step."""
    if args.task_file:
        pool = load_jsonl(args.task_file)
        def train_batch(step, n, salt=0):
            return random.Random(f"{args.seed}-{step}-{salt}").sample(pool, min(n, len(pool)))
    else:
        task = make_task(args.task, **json.loads(args.task_kwargs))
        def train_batch(step, n, salt=0):
            return task.sample("train", n, seed=hash((args.seed, step, salt)) & 0x7FFFFFFF)
    if args.eval_file:
        evals = load_jsonl(args.eval_file)[:args.eval_problems]
    elif args.task_file:
        raise ValueError("--task-file needs --eval-file (a held-out JSONL file)")
    else:
        evals = task.sample("test", args.eval_problems, seed=args.seed)
    return train_batch, evals


def run_eval(model, tokenizer, problems, args, step, out, log):
    t0 = time.time()
    report = evaluate(model, tokenizer, problems, k=args.eval_k, temperature=args.eval_temperature,
                      top_p=args.eval_top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      decode_mode=args.decode_mode)
    with open(out / f"samples_step{step:05d}.jsonl", "w") as f:
        for ex in report.pop("examples"):
            f.write(json.dumps(ex) + "\n")
    log.log(step=step, **{f"eval/{k}": v for k, v in report.items()}, **{"eval/seconds": time.time() - t0})
    return report


def main(argv=None):
    args = get_args(argv)
    seed_everything(args.seed)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    t_start = time.time()

    base = Path(args.base)
    if not base.exists():
        if args.base != get_args([]).base:
            raise FileNotFoundError(f"base checkpoint {base} does not exist")
        print0(f"no base model at {base}: pretraining one (pretrain.py defaults)")
        import pretrain
        # only the forced-mode diagnostic: the sampled base evaluation is the first thing done below
        pretrain.main(["--out", str(base), "--device", args.device, "--eval-k", "0"])

    resume_dir = out / "checkpoint"
    resuming = args.resume and resume_dir.exists()
    if args.resume and not resuming:
        print0(f"--resume: no checkpoint at {resume_dir}, starting fresh")
    policy, tokenizer, state = checkpoint.load(resume_dir if resuming else base, device=device)
    if tokenizer is None:
        raise ValueError(f"{base} has no tokenizer.json; R1-Zero needs one to build prompts and read answers")
    ref = None
    if args.beta > 0:  # the frozen reference: the base model itself
        ref = copy.deepcopy(policy) if not resuming else checkpoint.load(base, device=device)[0]
        ref.eval().requires_grad_(False)
    optimizer = make_optimizer(policy, args.lr, args.weight_decay)
    cfg = GRPOConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     mu=args.mu, minibatches=args.minibatches, micro_batch=args.micro_batch, eps_low=args.eps_low,
                     eps_high=args.eps_high, beta=args.beta, loss_agg=args.loss_agg, adv_scale=args.adv_scale,
                     dynamic_sampling=args.dynamic_sampling, overlong=args.overlong,
                     replay_routing=args.replay_routing, decode_mode=args.decode_mode)
    reward_fn = default_reward_fn({"accuracy": args.accuracy_weight, "format": args.format_weight})
    train_batch, eval_problems = problem_source(args)

    start = 0
    if resuming:
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
        print0(f"resumed from {resume_dir} at step {start}")
    log = JsonlLogger(out / "metrics.jsonl")
    if start == 0:
        base_report = run_eval(policy, tokenizer, eval_problems, args, 0, out, log)
        (out / "base_eval.json").write_text(json.dumps(base_report, indent=2))
        print0("base: " + json.dumps(base_report))

    for step in (bar := tqdm(range(start, args.steps), desc="R1-Zero", initial=start, total=args.steps)):
        set_lr(optimizer, lr_at(step, max_lr=args.lr, warmup=args.warmup, total=args.steps, min_lr_ratio=1.0))
        problems = train_batch(step, args.prompts_per_step)
        metrics = rl_step(policy, optimizer, tokenizer, problems, reward_fn, cfg, seed=args.seed * 100_003 + step,
                          ref=ref, refill=lambda n, s=step: train_batch(s, n, salt=1),
                          autocast=lambda: autocast(device))
        log.log(step=step + 1, **metrics)
        bar.set_postfix(acc=f"{metrics['reward/accuracy']:.2f}", len=f"{metrics['mean_length']:.0f}",
                        refl=f"{metrics['reflection_rate']:.2f}")
        done = step + 1
        if done % args.save_every == 0 or done == args.steps:
            checkpoint.save(resume_dir, policy, tokenizer=tokenizer,
                            train_state={"optimizer": optimizer.state_dict(), "step": done, "rng": rng_state()})
        if done % args.eval_every == 0 or done == args.steps:
            report = run_eval(policy, tokenizer, eval_problems, args, done, out, log)
            print0(f"step {done}: " + json.dumps(report))
    log.close()

    if args.steps > 0 and start < args.steps:
        base_report = json.loads((out / "base_eval.json").read_text()) if (out / "base_eval.json").exists() else {}
        summary = {"base": base_report, "final": report, "minutes": (time.time() - t_start) / 60}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        keys = ["pass@1", f"cons@{args.eval_k}", "format_rate", "mean_length", "reflection_rate"]
        print0(f"\n{'':10s}" + "".join(f"{k:>16s}" for k in keys))
        for name, rep in (("base", base_report), ("R1-Zero", report)):
            print0(f"{name:10s}" + "".join(f"{rep.get(k, float('nan')):16.3f}" for k in keys))
        print0(f"total {summary['minutes']:.1f} min; metrics in {out / 'metrics.jsonl'}")
        try:
            from plot import plot_run
            plot_run(out)
        except ImportError:
            pass
        return summary


if __name__ == "__main__":
    main()
