"""
train_zero.py: DeepSeek-R1-Zero, reproduced in miniature. GRPO straight from a base model, no SFT, rule rewards only.

The paper (sec. 2.2): for each question sample G outputs from the old policy, reward them with rules (accuracy of
the final answer + format: reasoning in <think></think>, answer in <answer></answer>), normalise rewards within
the group into advantages, and maximise the clipped objective (nanor1/grpo.py). Pass@1 rises, responses grow
longer on their own, and the model starts to re-check its work.

One step, as `rl_step` below spells it out: questions -> G completions each (nanor1/rollout.py, the sampler with its
KV cache; optional DAPO refill of groups with no reward variance) -> rule rewards -> group advantages (R1 eq. 3) ->
for each of mu passes and each minibatch: trainer log-probs, the GRPO loss (R1 eq. 1-2) accumulated over
micro-batches, backward, clip, optimizer step -> metrics. train_r1.py runs the same function.
Every --eval-every steps: held-out pass@1 over k samples and cons@k, samples saved.

How this run differs from the paper (besides scale): the base model is a 1.5M-parameter MoE+MLA model pretrained
by pretrain.py on a generated corpus (see its docstring: the reasoning modes RL selects are in that corpus);
the task is generated arithmetic instead of math/code competitions; token-mean loss aggregation (DAPO) instead of
the per-sequence mean, which penalises the longer, correct reasoning mode at this scale; beta = 0 by default (the
paper uses a KL term; --beta turns it on and loads a frozen reference model); format reward weight 0.1.

Commands:
  python train_zero.py                                   # the default demonstration: pretrain if needed, RL, eval
  python train_zero.py --preset countdown                # the search demonstration (README: retries grow)
  python train_zero.py --base runs/base --steps 200 --out runs/zero-long
  python train_zero.py --base /path/to/hf-folder --task-file data/gsm8k_train.jsonl --eval-file data/gsm8k_test.jsonl \
      --device cuda --beta 0.001 --max-new-tokens 1024 --prompts-per-step 32 --group-size 16
  python train_zero.py --resume                          # continue runs/zero from its last checkpoint
  torchrun --nproc_per_node 8 train_zero.py --base runs/base-gpu --prompts-per-step 64   # FSDP, one node
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train_zero.py ...
Under torchrun (see dev/multinode.md) the model is FSDP-sharded and each rank samples its share of the step's
questions, whole groups, seeded by their global index: the same run at any number of ranks, up to float rounding
(with --minibatches 1: minibatches are cut within each rank's rows; and without --dynamic-sampling, where each rank
refills its own groups and all keep the shortest rank's count, see rollout.fill_groups).
"""
import argparse
import copy
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from nanor1 import checkpoint, fsdp
from nanor1.fsdp import world_size
from nanor1.grpo import (ADV_SCALES, LOSS_AGGS, OVERLONG, GRPOConfig, StepStats, filter_groups, global_counts,
                         group_advantages, grpo_loss, mask_truncated, minibatches, overlong_penalty)
from nanor1.rollout import (behaviour_stats, evaluate, fill_groups, prompt_ids, rollout, rule_rewards,
                            weak_base_warning)
from nanor1.sampler import DECODE_MODES, SamplingParams, group_token_logprobs, pack
from nanor1.tasks import TASKS, JsonlFormatError, load_jsonl, make_task, problem_where, validate_problems
from nanor1.templates import TEMPLATES, get_template
from nanor1.training import (DivergenceGuard, JsonlLogger, RunFolderError, autocast, clip_grad, interrupt_handler,
                             json_dict, lr_at, make_optimizer, nonnegative_float, nonnegative_int,
                             positive_float, positive_int, prepare_run, print0, rng_state, seed_everything, set_lr,
                             set_rng_state)


# Built-in demonstrations. A preset sets the defaults of train_zero's flags (a flag given on the command line still
# wins) and the flags pretrain.py makes the base with when the preset's base folder is missing.
# - arithmetic (the default): sums of five digits; the accuracy rise, cons@k > pass@1 (README "R1-Zero").
# - countdown: reach a target from 3 or 4 numbers (half each); a first attempt is unreliable and retrying after a
#   noticed miss pays, so RL can grow the search: attempts, length, retries (README "R1-Zero on Countdown").
COUNTDOWN_TASK = '{"n_numbers": 4, "min_numbers": 3, "max_number": 9, "max_target": 30}'   # small facts: README
ZERO_PRESETS = {
    "arithmetic": {"flags": {}, "pretrain": []},
    "countdown": {
        # KL 0.1 and no format reward: with rare right answers a format weight makes format the groups' only
        # variance (guesses win it), and without KL the penalised misses unlearn the arithmetic (README)
        "flags": dict(task="countdown", task_kwargs=COUNTDOWN_TASK, base="runs/base-countdown",
                      out="runs/zero-countdown", max_new_tokens=192, steps=150, eval_every=25, save_every=25,
                      beta=0.1, format_weight=0.0, eval_k=4),
        "pretrain": ["--task", "countdown", "--task-kwargs", COUNTDOWN_TASK, "--p-guess", "0.45", "--p-plain", "0.22",
                     "--p-steps", "0.3", "--p-check", "0.03", "--max-new-tokens", "192", "--max-step-value", "40",
                     "--steps", "2000", "--cut-power", "1"],   # (measured with uniform cuts only)
    },
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="arithmetic", choices=sorted(ZERO_PRESETS), help="built-in demonstration: "
                   "sets the defaults below and the base's pretraining flags (ZERO_PRESETS)")
    # model
    p.add_argument("--base", default="runs/base", help="base checkpoint (nanor1 or HF folder); made by pretrain.py "
                                                      "when it is the default and missing")
    p.add_argument("--out", default="runs/zero", help="output folder: metrics, samples, checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--template", default="r1-zero", choices=sorted(TEMPLATES), help="prompt and answer format")
    # data
    p.add_argument("--task", default="arithmetic", choices=sorted(TASKS), help="built-in task")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', type=json_dict, help="JSON dict of task options")
    p.add_argument("--task-file", default=None, help="train on a JSONL file of {problem, answer} instead")
    p.add_argument("--eval-file", default=None, help="evaluate on a JSONL file instead of the task's test split")
    p.add_argument("--skip-bad-problems", action="store_true", help="drop (with a warning) file problems that do not "
                   "fit the context or whose gold the grader cannot parse, instead of refusing the file")
    # GRPO
    p.add_argument("--steps", type=nonnegative_int, default=40, help="RL steps")
    add_grpo_args(p)
    p.add_argument("--format-weight", type=nonnegative_float, default=0.1, help="weight of the format reward")
    p.add_argument("--accuracy-weight", type=nonnegative_float, default=1.0, help="weight of the accuracy reward")
    # evaluation and logging
    p.add_argument("--eval-every", type=positive_int, default=20, help="held-out evaluation every N steps")
    p.add_argument("--eval-problems", type=positive_int, default=200, help="held-out problems")
    p.add_argument("--eval-k", type=positive_int, default=8, help="samples per held-out problem")
    p.add_argument("--eval-temperature", type=positive_float, default=0.6, help="paper: 0.6")
    p.add_argument("--eval-top-p", type=positive_float, default=0.95, help="paper: 0.95")
    p.add_argument("--save-every", type=positive_int, default=20, help="checkpoint every N steps (and at the end)")
    p.add_argument("--guard-patience", type=nonnegative_int, default=3, help="divergence guard: stop after this many "
                   "steps of collapse (reward, entropy, non-finite loss) and fall back to the last checkpoint saved "
                   "before it (always kept when --save-every >= this); 0: off")
    # run
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=1234, help="seed of data order, sampling and initial state")
    preset, _ = p.parse_known_args(argv)   # (an unknown flag is reported by the full parse below)
    p.set_defaults(**ZERO_PRESETS[preset.preset]["flags"])
    args = p.parse_args(argv)
    if args.eval_top_p > 1:
        p.error(f"--eval-top-p must be in (0, 1], got {args.eval_top_p}")
    if args.task_file and not args.eval_file:
        p.error("--task-file needs --eval-file (a held-out JSONL file)")
    try:
        grpo_config(args)                        # GRPOConfig's own checks, before anything is loaded
    except ValueError as e:
        p.error(str(e))
    return args


def add_grpo_args(p):
    """The GRPO flags, shared with train_r1.py's RL stages (it imports this), so both RL scripts take the same knobs."""
    g = p.add_argument_group("GRPO")
    g.add_argument("--prompts-per-step", type=positive_int, default=8, help="questions per step")
    g.add_argument("--group-size", type=positive_int, default=8, help="G: completions per question (>= 2)")
    g.add_argument("--max-new-tokens", type=positive_int, default=160, help="completion length limit")
    g.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature during RL")
    g.add_argument("--lr", type=positive_float, default=2e-4, help="AdamW learning rate of the RL steps")
    g.add_argument("--warmup", type=nonnegative_int, default=5, help="linear warmup steps")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    g.add_argument("--beta", type=nonnegative_float, default=0.0, help="KL weight (k3 estimator) to the frozen base")
    g.add_argument("--eps-low", type=nonnegative_float, default=0.2, help="clip range below 1 (ratio >= 1 - eps_low)")
    g.add_argument("--eps-high", type=nonnegative_float, default=0.2, help="clip range above 1 (DAPO clip-higher)")
    g.add_argument("--mu", type=positive_int, default=1, help="GRPO iterations per batch")
    g.add_argument("--minibatches", type=positive_int, default=1, help="optimizer steps per iteration")
    g.add_argument("--micro-batch", type=positive_int, default=64, help="sequences per forward/backward")
    g.add_argument("--loss-agg", default="token-mean", choices=LOSS_AGGS,
                   help="seq-mean-token-mean (paper), token-mean (DAPO), seq-mean-token-sum-norm (Dr. GRPO)")
    g.add_argument("--adv-scale", default="group", choices=ADV_SCALES, help="group (paper), none (Dr. GRPO), batch")
    g.add_argument("--dynamic-sampling", action="store_true", help="DAPO: refill groups with equal rewards")
    g.add_argument("--overlong", default="none", choices=OVERLONG,
                   help="truncated completions: none, mask (no loss), penalty (DAPO soft length penalty)")
    g.add_argument("--replay-routing", action="store_true", help="MoE: train with the experts the sampler chose")
    g.add_argument("--decode-mode", default="eager", choices=DECODE_MODES, help="sampler decode step; cuda_graph "
                   "(GPU) replays one CUDA graph per token, MoE models need bf16 weights")


def grpo_config(args) -> GRPOConfig:
    """The GRPO knobs of the run; GRPOConfig checks them (before anything is loaded)."""
    return GRPOConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      mu=args.mu, minibatches=args.minibatches, micro_batch=args.micro_batch, eps_low=args.eps_low,
                      eps_high=args.eps_high, beta=args.beta, loss_agg=args.loss_agg, adv_scale=args.adv_scale,
                      dynamic_sampling=args.dynamic_sampling, overlong=args.overlong,
                      replay_routing=args.replay_routing, decode_mode=args.decode_mode)


# ----------------------------------------------------------------------------------------------------------------
# One GRPO step


def rl_step(policy, optimizer, tokenizer, template, problems, reward_fn, cfg: GRPOConfig, *, seed: int, ref=None,
            refill=None, first_index: int = 0) -> dict:
    """One GRPO step on this rank's questions (whole groups); returns the step's metrics, over all ranks.

    reward_fn(texts, problems) -> (totals, components): the rule rewards (R1-Zero), or rules plus reward models
    (R1 stage 4). refill(n) -> n new questions, for dynamic sampling (data parallel: this rank's own questions,
    each rank refilling its own groups). ref: the frozen reference model (beta > 0).
    first_index: the step-wide index of problems[0] (data parallel), which seeds each question's samples.
    """
    device, t0 = policy.embed.weight.device, time.perf_counter()

    # 1. Sample G completions per question from the current policy, which is pi_old for this step, and score them.
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    def sample(questions, seed, first_index=0):  # noqa: E306
        with fsdp.gathered(policy):   # FSDP: full weights once per rollout, decoding without collectives
            if not questions:         # (data parallel: a rank with nothing to refill still joins the gathering)
                return None
            return rollout(policy, tokenizer, questions, template=template, params=params, group_size=cfg.group_size,
                           reward_fn=reward_fn, seed=seed, record_routing=cfg.replay_routing,
                           decode_mode=cfg.decode_mode, first_index=first_index)
    ro, n_sampled = sample(problems, seed, first_index), len(problems)
    if cfg.dynamic_sampling and refill is not None:  # DAPO: replace groups whose rewards are all equal
        ro, n_sampled = fill_groups(ro, lambda n, attempt: sample(refill(n) if n else [], seed + 7919 * (attempt + 1),
                                                                  first_index), cfg.max_refills)
    t_generate = time.perf_counter() - t0

    # 2. Group-relative advantages (R1 eq. 3): no value network, the group mean is the baseline.
    rewards = ro.rewards_by_group().to(device)                                          # [N, G]
    mask = ro.gen.mask.to(device)                                                       # [B, T] completion tokens
    if cfg.overlong == "penalty":   # DAPO: a soft length penalty added to the reward
        rewards = rewards + overlong_penalty(ro.lengths, cfg.max_new_tokens, cfg.overlong_buffer).to(device).view_as(rewards)
    elif cfg.overlong == "mask":    # DAPO: no loss on completions cut at the length limit
        mask = mask_truncated(mask, torch.tensor([r == "length" for r in ro.gen.finish_reason], device=device))
    advantages = group_advantages(rewards, scale=cfg.adv_scale).flatten()               # [B]

    # 3. The trainer's view of the batch. pi_old = the sampler's log-probs (same weights); pi_ref for the KL term.
    t1 = time.perf_counter()
    batch = pack(ro.gen.prompts, ro.gen.tokens.to(device), mask, routing=ro.gen.routing, device=device)
    old_logp = ro.gen.logprobs.to(device)                                               # [B, T]
    ref_logp = None
    if cfg.beta > 0:
        if ref is None:
            raise ValueError(f"beta={cfg.beta} needs a reference model (ref=...)")
        with torch.no_grad(), autocast(device):
            ref_logp = group_token_logprobs(ref, batch, ro.gen.temperature)             # [B, T]
    t_ref = time.perf_counter() - t1

    # 4. mu passes over the batch, each cut into minibatches (one optimizer step each), each accumulated over
    #    micro-batches. Losses are normalised by the minibatch's global counts, so micro-batch losses add up to the
    #    minibatch loss and data-parallel ranks (which average gradients) get the full-batch gradient.
    t2 = time.perf_counter()
    policy.train()
    world = world_size()
    stats, losses, logs = StepStats(), [], {"logp_diff": 0.0, "skipped_steps": 0}
    for it in range(cfg.mu):
        for mb in minibatches(batch.tokens.size(0), cfg.minibatches, shuffle=cfg.mu > 1, seed=seed + it):
            mb_seqs, mb_tokens = global_counts(batch.mask[mb])
            optimizer.zero_grad(set_to_none=True)
            mb_loss = 0.0
            for micro in mb.split(cfg.micro_batch):
                sub = batch.rows(micro)
                with autocast(device):
                    # each group's prompt runs once, its G completions over the prompt's KV cache
                    logp, entropy = group_token_logprobs(policy, sub, ro.gen.temperature, with_entropy=True)
                loss, s = grpo_loss(logp, old_logp[micro], None if ref_logp is None else ref_logp[micro],
                                    advantages[micro], sub.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                    beta=cfg.beta, loss_agg=cfg.loss_agg, max_len=cfg.max_new_tokens,
                                    num_seqs=mb_seqs, num_tokens=mb_tokens)
                (loss * world).backward()
                mb_loss += loss.item()
                n = sub.mask.sum().item()
                stats.add(n, {**s, "entropy": (entropy * sub.mask).sum().item() / max(n, 1)})
                if it == 0:  # sampler vs trainer: the same weights must give the same log-probs
                    diff = ((logp.detach() - old_logp[micro]).abs() * sub.mask).amax().item()
                    logs["logp_diff"] = max(logs["logp_diff"], diff)
            logs["grad_norm"] = clip_grad(policy, cfg.grad_clip)
            if math.isfinite(logs["grad_norm"]):
                optimizer.step()
                policy.update_routing_bias(cfg.bias_update_speed)   # V3's aux-loss-free balancing, after the step
            else:
                logs["skipped_steps"] += 1                            # a non-finite gradient: skip, keep going
            optimizer.zero_grad(set_to_none=True)
            losses.append(mb_loss)
    t_update = time.perf_counter() - t2

    # 5. Metrics, over all ranks (fsdp.reduce_metrics; one process: as they are): means weighted by rows or by
    #    tokens (the loss stats), sums (the loss: each rank's part is normalised by global counts), maxima.
    summary = stats.summary()
    metrics = {
        "reward": ro.rewards.mean().item(),
        **behaviour_stats(ro),
        "zero_variance_groups": 1.0 - filter_groups(ro.rewards_by_group()).float().mean().item(),
        "sampled_groups": n_sampled,
        **summary, **logs, "loss": sum(losses) / len(losses),
        "time/generate": t_generate, "time/ref_logprobs": t_ref, "time/update": t_update,
        "time/step": time.perf_counter() - t0,
        "gen_tokens_per_s": ro.gen.mask.sum().item() / max(t_generate, 1e-9),
        "train_tokens_per_s": cfg.mu * batch.key_mask.sum().item() / max(t_update, 1e-9),
    }
    tokens = sum(w for w, _ in stats.rows)
    return fsdp.reduce_metrics(metrics, weight=len(ro.texts), weights=dict.fromkeys(summary, tokens),
                               sums=("sampled_groups", "loss", "gen_tokens_per_s", "train_tokens_per_s"),
                               maxes=("logp_diff", "ratio_max", "grad_norm", "skipped_steps",
                                      *(k for k in metrics if k.startswith("time/"))), mins=("ratio_min",))


# ----------------------------------------------------------------------------------------------------------------
# The run


def problem_source(args, tokenizer, template, max_seq_len: int):
    """(train_batch(step, n, salt) -> problems, eval problems). Train questions for a step depend only on (seed, step):
    the data position of a resumed run is its step. Problems from files are checked up front (prompt length, gold
    answers the grader can parse): a bad line is reported now, with its file:line, not at the step that samples it."""
    if args.task_file:
        pool = checked(load_jsonl(args.task_file), args, tokenizer, template, max_seq_len)
        def train_batch(step, n, salt=0):  # noqa: E306
            return random.Random(f"{args.seed}-{step}-{salt}").sample(pool, min(n, len(pool)))
    else:
        task = make_task(args.task, **args.task_kwargs)
        def train_batch(step, n, salt=0):  # noqa: E306
            return task.sample("train", n, seed=hash((args.seed, step, salt)) & 0x7FFFFFFF)
    if args.eval_file:
        evals = checked(load_jsonl(args.eval_file), args, tokenizer, template, max_seq_len)[:args.eval_problems]
    else:
        evals = task.sample("test", args.eval_problems, seed=args.seed)
    return train_batch, evals


def checked(problems, args, tokenizer, template, max_seq_len: int):
    """The problems that fit the context and can be graded; the others stop the run (or, with --skip-bad-problems,
    are dropped with a warning)."""
    errors = validate_problems(problems, prompt_tokens=lambda p: len(prompt_ids(tokenizer, template, p.question)),
                               max_prompt_tokens=max_seq_len - args.max_new_tokens)
    if errors and not args.skip_bad_problems:
        raise SystemExit(f"{len(errors)} problem(s) cannot be used (pass --skip-bad-problems to drop them):\n  "
                         + "\n  ".join(errors[:20]) + ("\n  ..." if len(errors) > 20 else ""))
    bad = {e.split(": ", 1)[0] for e in errors}
    for e in errors:
        print0(f"warning: skipping {e}")
    good = [p for p in problems if problem_where(p) not in bad]
    if not good:
        raise SystemExit("no usable problems left")
    return good


def keep_previous(ckpt: Path) -> None:
    """Hard-link the files of the checkpoint about to be replaced into <ckpt>-prev. A save writes new files and renames
    them over the old ones, so the links keep the old contents at no cost in time or disk."""
    if checkpoint.find(ckpt) is None:
        return
    prev, tmp = ckpt.with_name(ckpt.name + "-prev"), ckpt.with_name(f".{ckpt.name}-prev.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in checkpoint.OWN_FILES:
        if (ckpt / name).is_file():
            os.link(ckpt / name, tmp / name)
    shutil.rmtree(prev, ignore_errors=True)
    os.replace(tmp, prev)


def fall_back(ckpt: Path, bad_since: int) -> str:
    """After the divergence guard fired: make <ckpt> the last checkpoint saved before step bad_since, when the latest
    save came after the trouble began (that one is kept as <ckpt>-diverged). Returns what was done, in words."""
    step = lambda c: checkpoint.read_extra(c).get("step", 0) if checkpoint.find(c) else None  # noqa: E731
    latest, prev = step(ckpt), step(ckpt.with_name(ckpt.name + "-prev"))
    if latest is None:
        return "No checkpoint was saved."
    if latest < bad_since:
        return f"The last good checkpoint, {ckpt} (step {latest}), is kept."
    if prev is None or prev >= bad_since:
        return f"No checkpoint from before step {bad_since} is left; {ckpt} (step {latest}) is from after it."
    diverged = ckpt.with_name(ckpt.name + "-diverged")
    shutil.rmtree(diverged, ignore_errors=True)
    os.replace(ckpt, diverged)
    os.replace(ckpt.with_name(ckpt.name + "-prev"), ckpt)
    return (f"{ckpt} is now the last good checkpoint (step {prev}); the one saved after the trouble began "
            f"(step {latest}) is in {diverged}.")


def run_eval(model, tokenizer, template, problems, args, step, out, log):
    t0 = time.time()
    with fsdp.gathered(model):   # data parallel: each rank samples its share of the problems (rollout.evaluate)
        report = evaluate(model, tokenizer, problems, template=template, k=args.eval_k,
                          temperature=args.eval_temperature, top_p=args.eval_top_p,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, decode_mode=args.decode_mode)
    examples = report.pop("examples")
    if fsdp.is_main():
        with open(out / f"samples_step{step:05d}.jsonl", "w") as f:
            for ex in examples:
                f.write(json.dumps(ex) + "\n")
    log.log(step=step, **{f"eval/{k}": v for k, v in report.items()}, **{"eval/seconds": time.time() - t0})
    return report


def main(argv=None):
    args = get_args(argv)                        # every flag (GRPOConfig's checks too) before anything is loaded
    cfg, template = grpo_config(args), get_template(args.template)
    seed_everything(args.seed)
    device = fsdp.init_distributed(args.device)   # torchrun: join the process group; one process: just the device
    if args.prompts_per_step % world_size():
        # every rank must run the same number of forward/backward passes (FSDP's collectives)
        raise SystemExit(f"{world_size()} ranks need --prompts-per-step divisible by {world_size()}")
    out, t_start = Path(args.out), time.time()

    base = Path(args.base)
    if checkpoint.find(base) is None and not base.exists():
        if args.base != get_args(["--preset", args.preset]).base:
            raise SystemExit(f"base checkpoint {base} does not exist")
        flags = ZERO_PRESETS[args.preset]["pretrain"]
        print0(f"no base model at {base}: pretraining one (pretrain.py defaults" + "".join(f" {f}" for f in flags) + ")")
        import pretrain
        # only the forced-mode diagnostic: the sampled base evaluation is the first thing done below
        pretrain.main(["--out", str(base), "--device", args.device, "--eval-k", "0", *flags])

    # A run folder is either resumed or started clean, never mixed (nanor1.training.prepare_run).
    # (a folder holding only args.json is a run that failed at start-up: it may be started again)
    resuming = prepare_run(out, resume=args.resume, args=vars(args), fresh_ok=("args.json",))
    ckpt = out / "checkpoint"
    policy, tokenizer, state = checkpoint.load(checkpoint.find(ckpt) if resuming else base, device=device)
    if tokenizer is None:
        raise SystemExit(f"{base} has no tokenizer.json; R1-Zero needs one to build prompts and read answers")
    if not resuming:   # a base RL cannot use: say so before the run, not after an hour of collapse
        if warning := weak_base_warning((checkpoint.read_extra(base) or {}).get("base_report", {})):
            print0(warning)
    ref = None
    if args.beta > 0:  # the frozen reference: the base model itself
        ref = copy.deepcopy(policy) if not resuming else checkpoint.load(base, device=device)[0]
        ref.eval().requires_grad_(False)
    if world_size() > 1:   # FSDP: each rank keeps its shards of the policy (the reference stays whole on each rank)
        fsdp.shard_model(policy, mixed_precision=device.type == "cuda")
    optimizer = make_optimizer(policy, args.lr, args.weight_decay)   # after sharding, before any forward
    reward_fn = rule_rewards({"accuracy": args.accuracy_weight, "format": args.format_weight}, template)
    train_batch, eval_problems = problem_source(args, tokenizer, template, policy.cfg.max_seq_len)

    start, report = 0, None
    if resuming:
        if world_size() > 1 or state is None:   # saved by a data-parallel run: model, optimizer, each rank's RNG
            info = fsdp.load_sharded(out / "checkpoint-sharded", policy, optimizer)
            if info["step"] != checkpoint.read_extra(ckpt).get("step"):
                raise SystemExit(f"{ckpt} is not the sharded state's step {info['step']}: it was saved by a single "
                                 "process (resume it with one) or replaced by hand")
            state = {"step": info["step"], "rng": (info["rank_state"] or {}).get("rng")}
        else:
            optimizer.load_state_dict(state["optimizer"])
        if state["rng"] is not None:            # (None: a sharded checkpoint of another world size)
            set_rng_state(state["rng"])
        start = state["step"]
        print0(f"resumed from {ckpt} at step {start}")
        if start >= args.steps and (out / "summary.json").exists():
            print0(f"{out} is complete ({start} steps); pass a larger --steps to continue")
            return json.loads((out / "summary.json").read_text())
    log = JsonlLogger(out / "metrics.jsonl", resume_step=start if resuming else None)  # one row per step
    if start == 0:
        base_report = run_eval(policy, tokenizer, template, eval_problems, args, 0, out, log)
        if fsdp.is_main():
            (out / "base_eval.json").write_text(json.dumps(base_report, indent=2))
        print0("base: " + json.dumps(base_report))

    def save(done):
        if world_size() > 1:   # data parallel: the sharded state for --resume, the full weights for sampling
            fsdp.save_sharded(out / "checkpoint-sharded", policy, optimizer, step=done, rank_state={"rng": rng_state()})
            checkpoint.save(ckpt, policy, tokenizer=tokenizer, extra={"template": template.name, "step": done})
            return
        keep_previous(ckpt)        # so the divergence guard can fall back if this save lands after a collapse
        checkpoint.save(ckpt, policy, tokenizer=tokenizer, extra={"template": template.name, "step": done},
                        train_state={"optimizer": optimizer.state_dict(), "step": done, "rng": rng_state()})

    guard, saved = DivergenceGuard(patience=max(1, args.guard_patience)), start
    with interrupt_handler() as stop:
        for step in (bar := tqdm(range(start, args.steps), desc="R1-Zero", initial=start, total=args.steps,
                                 disable=not fsdp.is_main())):
            set_lr(optimizer, lr_at(step, max_lr=args.lr, warmup=args.warmup, total=args.steps, min_lr_ratio=1.0))
            problems = train_batch(step, args.prompts_per_step)
            lo, hi = fsdp.share(len(problems))   # data parallel: this rank's questions, from index lo of the step
            metrics = rl_step(policy, optimizer, tokenizer, template, problems[lo:hi], reward_fn, cfg,
                              seed=args.seed * 100_003 + step, ref=ref, first_index=lo,
                              refill=lambda n, s=step: train_batch(s, n, salt=1 + fsdp.rank()))   # rank's own
            done = step + 1
            log.log(step=done, **metrics)
            bar.set_postfix(acc=f"{metrics['reward/accuracy']:.2f}", len=f"{metrics['mean_length']:.0f}",
                            refl=f"{metrics['reflection_rate']:.2f}")
            reason = guard.update({"step": done, **metrics}) if args.guard_patience else None
            if reason is not None:   # this step's weights are not saved; the last good checkpoint is kept
                log.log(step=done, stopped=reason)
                raise SystemExit(f"step {done}: {reason}.\n{fall_back(ckpt, guard.bad_since or done)} "
                                 "Lower --lr and --resume, or pass --guard-patience 0 to run on regardless.")
            if done % args.save_every == 0 or done == args.steps:
                save(done)
                saved = done
            if done % args.eval_every == 0 or done == args.steps:
                report = run_eval(policy, tokenizer, template, eval_problems, args, done, out, log)
                if fsdp.is_main():
                    tqdm.write(f"step {done}: " + json.dumps(report))
            if stop.check() and done < args.steps:
                if saved != done:
                    save(done)
                log.close()
                print0(f"{stop.signal}: saved {ckpt} at step {done}; continue with --resume")
                return None
    if report is None and args.steps > 0:      # resumed after the last save but before the final evaluation
        report = run_eval(policy, tokenizer, template, eval_problems, args, args.steps, out, log)
    log.close()

    if args.steps > 0:
        base_report = json.loads((out / "base_eval.json").read_text()) if (out / "base_eval.json").exists() else {}
        summary = {"base": base_report, "final": report, "minutes": (time.time() - t_start) / 60}
        if fsdp.is_main():
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
        keys = ["pass@1", f"cons@{args.eval_k}", "format_rate", "mean_length", "reflection_rate"]
        keys += [k for k in ("cd/attempts", "cd/retry_rate", "cd/retry_after_noticed") if k in report]
        print0(f"\n{'':10s}" + "".join(f"{k:>16s}" for k in keys))
        for name, rep in (("base", base_report), ("R1-Zero", report)):
            print0(f"{name:10s}" + "".join(f"{rep.get(k, float('nan')):16.3f}" for k in keys))
        print0(f"total {summary['minutes']:.1f} min; metrics in {out / 'metrics.jsonl'}")
        try:
            from plot import plot_run
            if fsdp.is_main():
                plot_run(out)
        except ImportError:
            pass
        return summary


if __name__ == "__main__":
    try:
        main()
        fsdp.shutdown()
    except (RunFolderError, FileNotFoundError, FileExistsError, JsonlFormatError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:   # a second Ctrl-C: quit at once (the first one saves, see interrupt_handler)
        raise SystemExit("interrupted: the last saved checkpoint is kept; continue with --resume") from None
