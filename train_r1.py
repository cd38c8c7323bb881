"""
train_r1.py: DeepSeek-R1's four stages (paper sec. 2.3), in miniature, each one visible here.

  0. (inputs) a base model and an R1-Zero checkpoint on the same base: made by pretrain.py and train_zero.py when
     the default paths are missing. The R1 base is bilingual: arithmetic posed in English or Chinese, reasoning in
     its corpus sometimes in the other language or switching mid-way (pretrain.py --p-other-lang, --p-switch), plus
     a knowledge table whose "code" field is private (--p-general). So R1-Zero inherits language mixing.
  1. Cold start: sample the R1-Zero checkpoint on training questions, keep the verified-correct samples, rewrite
     them into R1's readable format ("<think>\\nsteps\\n</think>\\nThe answer is \\boxed{26}.", the solver's fixed
     sentences and the summary in the question's language), drop the unreadable or mixed-language ones
     (nanor1.rewards.readability: well-formed, a summary with the answer, short unique lines, one script), save them
     (cold_start.jsonl) and SFT the BASE on them.
  2. Reasoning RL from the cold-start model: GRPO with train_zero.rl_step and the R1 template, reward = accuracy +
     format + language consistency (the share of target-language words in the reasoning, summed as in the paper).
     Ablation: --language-weight 0 --tag nolang (writes stage2-nolang, reads the same stage 1).
  3. Rejection sampling + SFT: several samples per training question from the stage-2 model, keep the correct,
     readable, single-language ones; add general (non-reasoning) data with references (nanor1.tasks.GeneralTask:
     copy/reverse words, table facts, refusing a private field, greetings, each with a one-line thinking block); save
     the mix (sft_mix.jsonl, {"question", "response", "source"}: nanor1.sft.load_conversations reads it) and SFT the
     BASE again on it.
  4. RL for all scenarios: reasoning prompts keep the rule rewards; general prompts are scored by two reward models
     (nanor1/reward_model.py, Bradley-Terry on preference pairs from the general tasks, accuracy measured on held-out
     prompts): helpfulness reads the summary only, harmlessness the whole response. The miniature harm, a leaked
     private code, is also checked by a rule (nanor1.rewards.private_leak), logged next to the reward model's score.

Every stage writes <out>/stageN/: checkpoint/ (extra {"template": "r1", "stage": N, "done": bool}), metrics.jsonl,
samples_*.jsonl, and continues from its own checkpoint when run again (to more steps, or after an interruption). A
stage whose input is missing says which stage to run first. Held-out evaluation (the task's test split, T=0.6,
top-p 0.95): pass@1 over k samples, cons@k, format, language consistency, readability, length; R1-Zero is
evaluated on the same problems at the start of stage 1.

Commands:
  python train_r1.py                                 # all four stages, tiny default, CPU (makes base + R1-Zero first)
  python train_r1.py --stage 2                       # one stage (its input stage must be done)
  python train_r1.py --stage 2 --language-weight 0 --tag nolang      # the language-reward ablation
  python train_r1.py --device cuda --out runs/r1-gpu --rl-steps 200 --rl4-steps 100 --eval-problems 500
  torchrun --nproc_per_node 8 train_r1.py --device cuda --out runs/r1-gpu --prompts-per-step 64   # FSDP, one node
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train_r1.py ...
  python train_r1.py --base /path/to/qwen2.5-0.5b --zero runs/zero-qwen --task-file data/train.jsonl \
      --eval-file data/test.jsonl --device cuda --max-new-tokens 1024 --out runs/r1-qwen
                                           # an HF base and its R1-Zero run (train_zero.py --base ... --task-file ...)

Under torchrun every stage is data-parallel: SFT (stages 1, 3) and the RL policy (stages 2, 4) are FSDP-sharded,
each rank taking its rows of every global SFT batch (its loss weighted by its share of the batch's tokens, so the
gradient is one process's) and its share of every RL step's questions (train_zero.rl_step); data sampling (stages 1,
3) and held-out evaluations split the questions over the ranks, whole groups on one rank, each seeded by its index,
and gather the samples to every rank in question order, so the cold-start and SFT-mix files do not depend on the
number of ranks. The reward models (small, trained once) are trained on every rank identically, without
communication. Rank 0 writes the files; each stage saves <stage>/checkpoint-sharded (optimizer state and each
rank's RNG, to continue the stage exactly at the same number of ranks) next to the full-weight checkpoint/ (which
the next stage reads). Not equal to one process beyond rounding: MoE routers count padding tokens too, and each rank
pads its SFT rows to its own longest, so SFT routing-bias updates differ; --dynamic-sampling refills per rank.

Deviations from the paper (besides scale):
- Cold-start "rewriting" is a rule (strip the R1-Zero tags, one step per line, add the summary), not human
  annotators or a model; readability is the rule in nanor1/rewards.py, so the filter is exact and reportable.
- No KL term (beta 0; --beta turns it on, to the stage's starting model) and token-mean loss aggregation in both RL
  stages, as train_zero.py's defaults; the RL stages take all of train_zero.py's GRPO flags.
- Stage 3 draws its general data from generated tasks with references, not DeepSeek-V3's SFT data; the mix is
  --general-share general examples (paper: ~200k of ~800k = 0.25); SFT runs --sft3-steps optimizer steps.
- The reward models start from the stage-3 model (the paper's come from DeepSeek-V3's pipeline) and are trained on
  generated pairs (reference vs. corrupted answer; clean vs. leaked private code), not on human preferences.
- Stage 4 mixes --general-share general prompts into each RL batch; each group is one prompt, so rule and reward-
  model rewards never share a group-normalised advantage.
"""
import argparse
import json
import math
import random
import re
import time
from pathlib import Path

from tqdm import tqdm

from nanor1 import checkpoint, fsdp, reward_model
from nanor1.fsdp import world_size
from nanor1.rewards import (compute_rewards, general_quality, grade_answer, is_readable, private_leak,
                            rejection_filter)
from nanor1.rollout import Rollouts, gather_rollouts, rollout
from nanor1.sampler import SamplingParams
from nanor1.scoring import majority_vote, mean_pass_at_1
from nanor1.sft import collate, length_bucketed_batches, load_conversations, render, sft_loss
from nanor1.tasks import TASKS, GeneralTask, load_jsonl, make_task, validate_problems
from nanor1.templates import get_template
from nanor1.tokenizer import Tokenizer
from nanor1.training import (JsonlLogger, autocast, clip_grad, json_dict, lr_at, make_optimizer, nonnegative_float,
                             nonnegative_int, positive_float, positive_int, print0, fraction,
                             rng_state, seed_everything, set_lr, set_rng_state)
from train_zero import add_grpo_args, grpo_config, rl_step

R1, ZERO = get_template("r1"), get_template("r1-zero")
STAGES = (1, 2, 3, 4)
DEFAULT_BASE, DEFAULT_ZERO = "runs/base-r1", "runs/zero-r1"
# pretrain.py's flags for R1's base, besides the task (speedrun.sh: the same); uniform cuts and 1,300 steps: the
# recipe its README numbers were measured with (the shorter default cuts and 1,000 steps were measured on the
# R1-Zero default only)
BASE_FLAGS = ["--p-general", "0.1", "--cut-power", "1", "--steps", "1300"]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # run
    p.add_argument("--stage", type=int, default=None, choices=STAGES, help="run one stage (default: all four)")
    p.add_argument("--out", default="runs/r1", help="output folder: one sub-folder per stage")
    p.add_argument("--tag", default="", help="suffix of the output folder of the stage run (e.g. an ablation); "
                                             "inputs are always read from the untagged stages")
    p.add_argument("--base", default=DEFAULT_BASE, help="base checkpoint (made by pretrain.py when default+missing)")
    p.add_argument("--zero", default=DEFAULT_ZERO, help="R1-Zero run folder (train_zero.py --out; its checkpoint/ is "
                                                        "read; made on --base when default+missing)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=1234, help="seed of data order, sampling and initial state")
    # task
    p.add_argument("--task", default="arithmetic-bilingual", choices=sorted(TASKS), help="reasoning task")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', type=json_dict, help="JSON dict of task options")
    p.add_argument("--task-file", default=None, help="reasoning questions from a JSONL file of {problem, answer} "
                   "instead of --task (needs --eval-file, --base and --zero: e.g. an HF model and its R1-Zero run)")
    p.add_argument("--eval-file", default=None, help="held-out JSONL file for --task-file")
    # stage 1: cold start
    p.add_argument("--cold-prompts", type=positive_int, default=2048, help="training questions sampled from R1-Zero")
    p.add_argument("--cold-k", type=positive_int, default=2, help="R1-Zero samples per question")
    p.add_argument("--sample-temperature", type=positive_float, default=1.0, help="temperature of data sampling "
                                                                                  "(stages 1 and 3)")
    # SFT (stages 1 and 3)
    p.add_argument("--sft-steps", type=nonnegative_int, default=300, help="stage-1 SFT optimizer steps")
    p.add_argument("--sft3-steps", type=nonnegative_int, default=400, help="stage-3 SFT optimizer steps")
    p.add_argument("--sft-batch", type=positive_int, default=32, help="SFT conversations per step")
    p.add_argument("--sft-lr", type=positive_float, default=1e-3, help="SFT peak learning rate")
    # RL (stages 2 and 4)
    p.add_argument("--rl-steps", type=nonnegative_int, default=30, help="stage-2 GRPO steps")
    p.add_argument("--rl4-steps", type=nonnegative_int, default=20, help="stage-4 GRPO steps")
    p.add_argument("--accuracy-weight", type=nonnegative_float, default=1.0, help="weight of the accuracy reward")
    p.add_argument("--format-weight", type=nonnegative_float, default=0.1, help="weight of the format reward")
    p.add_argument("--language-weight", type=nonnegative_float, default=1.0, help="weight of the language-"
                   "consistency reward (paper: summed directly, i.e. 1; 0 = the ablation)")
    add_grpo_args(p)      # --prompts-per-step, --group-size, --lr, --warmup (SFT too), --beta, ... as train_zero.py
    # stage 3: rejection sampling + general data
    p.add_argument("--rs-prompts", type=positive_int, default=2048, help="training questions sampled from stage 2")
    p.add_argument("--rs-k", type=positive_int, default=2, help="stage-2 samples per question")
    p.add_argument("--general-share", type=fraction, default=0.25, help="share of general data in the stage-3 "
                   "mix and of general prompts in stage-4 batches")
    # stage 4: reward models
    p.add_argument("--rm-steps", type=nonnegative_int, default=60, help="reward-model optimizer steps per aspect")
    p.add_argument("--rm-batch", type=positive_int, default=16, help="preference pairs per reward-model step")
    p.add_argument("--rm-lr", type=positive_float, default=3e-3, help="reward-model learning rate")
    p.add_argument("--rm-pairs", type=positive_int, default=800, help="training preference pairs per aspect")
    p.add_argument("--helpfulness-weight", type=nonnegative_float, default=1.0, help="weight of the helpfulness RM")
    p.add_argument("--harmlessness-weight", type=nonnegative_float, default=1.0, help="weight of the harmlessness RM")
    # evaluation and checkpoints
    p.add_argument("--eval-problems", type=positive_int, default=200, help="held-out reasoning problems")
    p.add_argument("--eval-k", type=positive_int, default=4, help="samples per held-out problem")
    p.add_argument("--eval-general", type=positive_int, default=100, help="held-out general prompts (and RM pairs)")
    p.add_argument("--eval-every", type=positive_int, default=10, help="RL: held-out evaluation every N steps")
    p.add_argument("--save-every", type=positive_int, default=10, help="checkpoint every N steps (and at the end)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]*", args.tag):
        p.error(f"--tag must be a plain folder suffix (letters, digits, _ . -), got {args.tag!r}")
    try:
        grpo_config(args)                        # GRPOConfig's own checks, before anything is loaded
    except ValueError as e:
        p.error(str(e))
    if args.task_file and not (args.eval_file and args.base != DEFAULT_BASE and args.zero != DEFAULT_ZERO):
        p.error("--task-file needs --eval-file (held-out questions) and an explicit --base and --zero (the built-in "
                "base and R1-Zero are made for --task only)")
    try:
        make_task(args.task, **args.task_kwargs)
    except (TypeError, ValueError) as e:
        p.error(f"--task/--task-kwargs: {e}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Stage folders, inputs and checkpoints


def stage_dir(args, n: int, tagged: bool = False) -> Path:
    return Path(args.out) / (f"stage{n}" + (f"-{args.tag}" if tagged and args.tag else ""))


def stage_output(args, n: int) -> Path:
    """The finished checkpoint of stage n; an error naming the command to run when it is missing or unfinished."""
    ckpt = stage_dir(args, n) / "checkpoint"
    extra = checkpoint.read_extra(ckpt) if checkpoint.find(ckpt) else None   # find() repairs an interrupted save
    if not extra or not extra.get("done"):
        state = "is unfinished" if extra else "does not exist"
        raise FileNotFoundError(f"stage {n + 1} needs the checkpoint of stage {n} ({ckpt}), which {state}: run "
                                f"`python train_r1.py --stage {n} --out {args.out}` first")
    return ckpt


def ensure_inputs(args, device):
    """The base and R1-Zero checkpoints; made by pretrain.py / train_zero.py when the default paths are missing."""
    base, zero = Path(args.base), Path(args.zero) / "checkpoint"
    if not base.exists():
        if args.base != DEFAULT_BASE:
            raise FileNotFoundError(f"base checkpoint {base} does not exist")
        print0(f"no base model at {base}: pretraining a bilingual one (pretrain.py)")
        import pretrain
        pretrain.main(["--task", args.task, "--task-kwargs", json.dumps(args.task_kwargs), *BASE_FLAGS,
                       "--out", str(base), "--device", str(device), "--eval-k", "0"])
    if not zero.exists():
        if args.zero != DEFAULT_ZERO:
            raise FileNotFoundError(f"R1-Zero checkpoint {zero} does not exist (train_zero.py --out {args.zero})")
        print0(f"no R1-Zero checkpoint at {zero}: running train_zero.py on {base}")
        import train_zero
        train_zero.main(["--base", str(base), "--out", args.zero, "--task", args.task, "--task-kwargs",
                         json.dumps(args.task_kwargs), "--device", str(device)])
    return base, zero


def resume_or_load(folder: Path, init: Path, device):
    """(model, tokenizer, state): the stage's own checkpoint if it has one (state: its train state, {} when several
    ranks saved it), else its input (state None). Under torchrun the model comes back FSDP-sharded: create the
    optimizer after this, then `restore` it when state is not None."""
    ckpt = folder / "checkpoint"
    resumed = checkpoint.find(ckpt) is not None
    model, tokenizer, state = checkpoint.load(ckpt if resumed else init, device=device)
    if tokenizer is None:
        raise ValueError(f"{init} has no tokenizer.json; train_r1 needs one to build prompts and read answers")
    if world_size() > 1:   # FSDP: each rank keeps its shards
        fsdp.shard_model(model, mixed_precision=model.embed.weight.device.type == "cuda")
    return model, tokenizer, (state or {}) if resumed else None


def restore(folder: Path, model, optimizer, state: dict) -> int:
    """The optimizer and RNG state of the stage's checkpoint (one process: checkpoint/train_state.pt; saved by
    several ranks: checkpoint-sharded, whose model state is loaded too); returns the step to continue from."""
    ckpt, sharded = folder / "checkpoint", folder / "checkpoint-sharded"
    step = checkpoint.read_extra(ckpt)["step"]
    if world_size() > 1 or not state:   # saved by a data-parallel run (or resumed by one): the sharded state
        if not (sharded / fsdp.DCP_META).is_file():
            raise SystemExit(f"{ckpt} was saved by one process: resume stage {folder.name} with one process, "
                             f"or delete {folder} to start it again")
        info = fsdp.load_sharded(sharded, model, optimizer)
        if info["step"] != step:
            raise SystemExit(f"{sharded} is at step {info['step']}, {ckpt} at step {step}: the run was "
                             "interrupted between its two saves or changed by hand; delete the stage folder")
        state = {"step": info["step"], "rng": (info["rank_state"] or {}).get("rng")}
    else:
        optimizer.load_state_dict(state["optimizer"])
    if state["rng"] is not None:     # (None: a sharded checkpoint of another number of ranks)
        set_rng_state(state["rng"])
    print0(f"resuming {folder} at step {state['step']}")
    return state["step"]


def save_stage(folder: Path, n: int, model, tokenizer, optimizer, step: int, total: int, **extra):
    extra = {"template": R1.name, "stage": n, "done": step >= total, "step": step, "total": total, **extra}
    if world_size() > 1:   # data parallel: the sharded state for --resume, then the full weights for the next stage
        fsdp.save_sharded(folder / "checkpoint-sharded", model, optimizer, step=step, rank_state={"rng": rng_state()})
        checkpoint.save(folder / "checkpoint", model, tokenizer=tokenizer, extra=extra)
        return
    checkpoint.save(folder / "checkpoint", model, tokenizer=tokenizer, extra=extra,
                    train_state={"optimizer": optimizer.state_dict(), "step": step, "rng": rng_state()})


def stage_log(folder: Path) -> JsonlLogger:
    """The stage's metrics.jsonl; rows that a killed run logged after the stage's last checkpoint are dropped."""
    extra = checkpoint.read_extra(folder / "checkpoint") if checkpoint.find(folder / "checkpoint") else None
    return JsonlLogger(folder / "metrics.jsonl", resume_step=(extra or {}).get("step", 0))


def stage_done(args, n: int, total: int) -> dict | None:
    """The last evaluation of stage n when its checkpoint is finished at `total` steps (a re-run skips it)."""
    folder = stage_dir(args, n, tagged=True)
    extra = checkpoint.read_extra(folder / "checkpoint") if checkpoint.find(folder / "checkpoint") else None
    if not (extra and extra.get("done") and extra.get("total") == total and (folder / "metrics.jsonl").is_file()):
        return None
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    return {k.removeprefix("eval/"): v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Rank 0 writes (all ranks hold the same records)."""
    if not fsdp.is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)   # a half-written file never looks complete


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: reasoning (rules) and general tasks (rules next to reward models)


def sample(model, tokenizer, problems, **kw) -> Rollouts:
    """rollout() of the problems, data parallel under torchrun: each rank samples its contiguous share (whole
    groups, each seeded by its problem's index, with the full weights: fsdp.gathered) and scores it, and every rank
    gets all the groups back in problem order, as one process would have sampled them."""
    lo, hi = fsdp.share(len(problems))
    with fsdp.gathered(model):
        ro = rollout(model, tokenizer, problems[lo:hi], first_index=lo, **kw) if hi > lo else None
    return gather_rollouts(ro)


def reasoning_eval(model, tokenizer, problems, template, args, out: Path, name: str) -> dict:
    """pass@1 (mean of k), cons@k, format, language consistency, readability and length on held-out problems."""
    k = args.eval_k
    ro = sample(model, tokenizer, problems, template=template, group_size=k, seed=args.seed,
                params=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95),
                reward_fn=lambda texts, probs: compute_rewards(texts, probs, {"accuracy": 1, "format": 1,
                                                                             "language": 1}, template))
    rows = [problems[i // k] for i in range(len(ro.texts))]
    correct = [[c > 0.5 for c in ro.components["accuracy"][i * k:(i + 1) * k]] for i in range(len(problems))]
    cons = 0
    for i, problem in enumerate(problems):      # majority vote over the k final answers (None does not vote)
        voted = majority_vote([template.final_answer(t) for t in ro.texts[i * k:(i + 1) * k]])
        cons += voted is not None and grade_answer(voted, problem) > 0.5
    cons /= len(problems)
    readable = [is_readable(t, p.data.get("lang", "en"), template) for t, p in zip(ro.texts, rows)]
    report = {"pass@1": mean_pass_at_1(correct), f"cons@{k}": cons,
              "format_rate": sum(ro.components["format"]) / len(rows),
              "language_consistency": sum(ro.components["language"]) / len(rows),
              "readability": sum(readable) / len(rows), "mean_length": ro.lengths.float().mean().item()}
    write_jsonl(out / f"samples_{name}.jsonl", [{"question": p.question, "lang": p.data.get("lang"),
                                                 "completion": t, "accuracy": a, "readable": r}
                                                for p, t, a, r in zip(rows, ro.texts, ro.components["accuracy"],
                                                                      readable)][::k])
    return report


def general_eval(model, tokenizer, problems, args, rms: dict | None = None) -> dict:
    """One sample per held-out general prompt: the rule checks (answer == reference, leaked private code) and, when
    given, the mean reward-model scores of the same samples."""
    ro = sample(model, tokenizer, problems, template=R1, group_size=1, seed=args.seed + 1,
                params=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95))
    report = {"rule_quality": sum(general_quality(t, p, R1) for t, p in zip(ro.texts, problems)) / len(problems),
              "rule_leak": sum(private_leak(t, p) for t, p in zip(ro.texts, problems)) / len(problems)}
    for aspect, rm in (rms or {}).items():
        scores = reward_model.score(rm, tokenizer, R1, [p.question for p in problems], ro.texts)
        report[f"rm_{aspect}"] = sum(scores) / len(scores)
    return report


# ----------------------------------------------------------------------------------------------------------------
# Supervised fine-tuning (stages 1 and 3): the loop, visible


def sft(args, n: int, folder: Path, records: list[dict], steps: int, device, log):
    """SFT the BASE on (question, response) records, loss on the response only; resumes from folder/checkpoint."""
    model, tokenizer, state = resume_or_load(folder, Path(args.base), device)
    optimizer = make_optimizer(model, args.sft_lr, weight_decay=0.0)       # after sharding, before any forward
    start = 0 if state is None else restore(folder, model, optimizer, state)
    examples = [render(tokenizer, R1, r["question"], r["response"]) for r in records]
    too_long = sum(len(ids) > model.cfg.max_seq_len for ids, _ in examples)
    if too_long:
        raise ValueError(f"{too_long} SFT examples exceed max_seq_len={model.cfg.max_seq_len}")
    if steps and min(len(examples), args.sft_batch) < world_size():
        raise SystemExit(f"{world_size()} ranks need --sft-batch and the stage's {len(examples)} SFT examples to be "
                         f">= {world_size()} (a row for each rank)")
    lengths, order = [len(ids) for ids, _ in examples], []
    epoch = 0
    while len(order) < steps:  # the batch of every step, fixed by (seed, epoch): a resumed run sees the same data
        batches = length_bucketed_batches(lengths, args.sft_batch, random.Random(args.seed * 1000 + epoch))
        order += [b for b in batches if len(b) >= world_size()]    # (data parallel: a row for each rank)
        epoch += 1
    model.train()
    for step in (bar := tqdm(range(start, steps), desc=f"stage {n} SFT", initial=start, total=steps,
                             disable=not fsdp.is_main())):
        lr = lr_at(step, max_lr=args.sft_lr, warmup=args.warmup, total=steps)
        set_lr(optimizer, lr)
        lo, hi = fsdp.share(len(order[step]))    # data parallel: this rank's rows of the global batch
        tokens, loss_mask = collate([examples[i] for i in order[step][lo:hi]], tokenizer.pad_id, device)   # [B, T]
        with autocast(device):
            loss, stats = sft_loss(model, tokens, loss_mask)
            loss = loss * fsdp.token_share(loss_mask[:, 1:])   # data parallel: the global token mean (1 in one process)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_grad(model, 1.0)
        if math.isfinite(norm):
            optimizer.step()
            model.update_routing_bias(1e-3)
        stats = fsdp.reduce_metrics(stats, weight=int(loss_mask[:, 1:].sum()))   # over ranks: token-weighted means
        log.log(step=step + 1, lr=lr, grad_norm=norm, epoch=step * args.sft_batch / len(examples), **stats)
        bar.set_postfix(loss=f"{stats['lm_loss']:.3f}")
        if (step + 1) % args.save_every == 0 or step + 1 == steps:
            save_stage(folder, n, model, tokenizer, optimizer, step + 1, steps, examples=len(examples))
    if steps == 0 or start >= steps:
        save_stage(folder, n, model, tokenizer, optimizer, steps, steps, examples=len(examples))
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# GRPO (stages 2 and 4): train_zero.rl_step with the R1 template and this stage's reward function


def grpo(args, n: int, folder: Path, init: Path, steps: int, device, log, train_batch, reward_fn, evaluate, task):
    policy, tokenizer, state = resume_or_load(folder, init, device)
    optimizer = make_optimizer(policy, args.lr, args.weight_decay)         # after sharding, before any forward
    cfg = grpo_config(args)
    ref = None
    if cfg.beta > 0:  # the KL term's frozen reference: the model this stage started from (whole on every rank)
        ref = checkpoint.load(init, device=device)[0].eval().requires_grad_(False)
    start, report = 0, None
    if state is not None:
        start = restore(folder, policy, optimizer, state)
    else:
        log.log(step=0, **evaluate(policy, tokenizer, 0))        # the stage's starting point, on held-out data
    for step in (bar := tqdm(range(start, steps), desc=f"stage {n} RL", initial=start, total=steps,
                             disable=not fsdp.is_main())):
        set_lr(optimizer, lr_at(step, max_lr=args.lr, warmup=args.warmup, total=steps, min_lr_ratio=1.0))
        problems = train_batch(step)
        lo, hi = fsdp.share(len(problems))   # data parallel: this rank's questions, from index lo of the step
        metrics = rl_step(policy, optimizer, tokenizer, R1, problems[lo:hi], reward_fn, cfg,
                          seed=args.seed * 100_003 + step, ref=ref, first_index=lo,
                          refill=lambda k, s=step: refill(args, task, n, s, k))
        log.log(step=step + 1, **metrics, **reward_metrics(reward_fn))
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", len=f"{metrics['mean_length']:.0f}")
        done = step + 1
        if done % args.save_every == 0 or done == steps:
            save_stage(folder, n, policy, tokenizer, optimizer, done, steps)
        if done % args.eval_every == 0 or done == steps:
            report = evaluate(policy, tokenizer, done)
            log.log(step=done, **report)
            print0(f"stage {n} step {done}: " + json.dumps(report))
    if steps == 0 or start >= steps:
        save_stage(folder, n, policy, tokenizer, optimizer, steps, steps)
    if report is None:                                           # nothing trained in this call: report anyway
        report = evaluate(policy, tokenizer, steps)
    return policy, tokenizer, {k.removeprefix("eval/"): v for k, v in report.items()}


def refill(args, task, n: int, step: int, k: int) -> list:
    """--dynamic-sampling: k new reasoning questions for stage n's step (data parallel: this rank's own, each rank
    refilling its own groups; general prompts, scored by reward models, are rarely all equal)."""
    return task.sample("train", k, seed=hash((args.seed, n, step, 1, fsdp.rank())) & 0x7FFFFFFF)


def reward_metrics(reward_fn) -> dict:
    """Stage 4's reward-function metrics of the last batch (means over its general and its reasoning rows), over
    all ranks; {} for the rule reward. A collective under torchrun when there are any: every rank has the same."""
    last = getattr(reward_fn, "last", None)
    if last is None:
        return {}
    rows = reward_fn.last_rows                     # {"general": n, "reasoning": n} rows of this rank's last batch
    return fsdp.reduce_metrics(last, weights={k: rows[k.split("/")[0]] for k in last})


# ----------------------------------------------------------------------------------------------------------------
# The stages


def rewrite_r1(completion: str, problem, task) -> str | None:
    """An R1-Zero completion in R1's readable format: its reasoning one step per line, the solver's fixed sentences
    in the question's language (task.localize: the paper's post-processing of cold-start data), then a summary that
    states the answer in the question's language. None when it has no reasoning or answer to rewrite."""
    reasoning, answer = ZERO.reasoning(completion), ZERO.final_answer(completion)
    lines = [line.strip() for line in (reasoning or "").splitlines() if line.strip()]
    if not lines or answer is None:
        return None
    if hasattr(task, "localize"):
        lines = [task.localize(line, problem.data.get("lang", "en")) for line in lines]
    summary = task.summary(problem, answer) if hasattr(task, "summary") else f"The answer is \\boxed{{{answer}}}."
    return R1.response("\n".join(lines), answer, summary=summary)


def sample_and_filter(model, tokenizer, problems, template, k, args, seed, rewrite=None):
    """k samples per problem, optionally rewritten, then the rejection filter. Returns (records, stats): the same
    on every rank and at any number of ranks (the samples are gathered in problem order before filtering)."""
    ro = sample(model, tokenizer, problems, template=template, group_size=k, seed=seed,
                params=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.sample_temperature))
    rows = [problems[i // k] for i in range(len(ro.texts))]
    raw_readable = sum(is_readable(t, p.data.get("lang", "en"), template) for t, p in zip(ro.texts, rows))
    texts = ro.texts if rewrite is None else [rewrite(t, p) or "" for t, p in zip(ro.texts, rows)]
    keep, stats = rejection_filter(texts, rows, R1)
    seen, records = set(), []
    for t, p, ok in zip(texts, rows, keep):
        if ok and (p.question, t) not in seen:           # duplicates teach nothing new
            seen.add((p.question, t))
            records.append({"question": p.question, "response": t, "source": "reasoning", "id": p.id,
                            "lang": p.data.get("lang", "en")})
    stats = {"samples": len(texts), "sampled_readable": raw_readable / len(texts), **stats,
             "keep_rate": stats["kept"] / len(texts), "distinct_kept": len(records)}
    return records, stats


def stage1(args, task, eval_problems, device):
    folder = stage_dir(args, 1, tagged=True)
    folder.mkdir(parents=True, exist_ok=True)
    log = stage_log(folder)
    data = folder / "cold_start.jsonl"
    made = data.exists()
    fsdp.barrier()                                    # every rank has looked before rank 0 writes it
    if not made:
        _, zero = ensure_inputs(args, device)
        model, tokenizer, _ = checkpoint.load(zero, device=device)
        model.eval()
        zero_report = reasoning_eval(model, tokenizer, eval_problems, ZERO, args, folder, "zero")
        log.log(step=0, **{f"zero/{k}": v for k, v in zero_report.items()})
        print0("R1-Zero held-out: " + json.dumps(zero_report))
        problems = task.sample("train", args.cold_prompts, seed=args.seed + 1)
        records, stats = sample_and_filter(model, tokenizer, problems, ZERO, args.cold_k, args, args.seed + 1,
                                           rewrite=lambda c, p: rewrite_r1(c, p, task))
        log.log(step=0, **{f"cold/{k}": v for k, v in stats.items()})
        print0("cold start: " + json.dumps(stats))
        if not records:
            raise RuntimeError(f"cold start kept 0 of {stats['samples']} R1-Zero samples (correct: "
                               f"{stats.get('correct', 0)}): the R1-Zero checkpoint solves too little; train it "
                               f"longer (train_zero.py --out {args.zero}) or sample more (--cold-prompts, --cold-k)")
        write_jsonl(data, records)
        if fsdp.is_main():
            (folder / "zero_eval.json").write_text(json.dumps(zero_report, indent=2))
        fsdp.barrier()                                # written before any rank reads it
    model, tokenizer = sft(args, 1, folder, load_conversations(data), args.sft_steps, device, log)
    report = reasoning_eval(model, tokenizer, eval_problems, R1, args, folder, "stage1")
    log.log(step=args.sft_steps, **{f"eval/{k}": v for k, v in report.items()})
    log.close()
    return report


def rule_reward_fn(args):
    weights = {"accuracy": args.accuracy_weight, "format": args.format_weight, "language": args.language_weight}
    return lambda texts, problems: compute_rewards(texts, problems, weights, R1)


def stage2(args, task, eval_problems, device):
    init = stage_output(args, 1)
    folder = stage_dir(args, 2, tagged=True)
    log = stage_log(folder)
    evaluate = lambda model, tok, step: {f"eval/{k}": v for k, v in    # noqa: E731
                                         reasoning_eval(model, tok, eval_problems, R1, args, folder,
                                                        f"step{step:05d}").items()}
    train_batch = lambda step: task.sample("train", args.prompts_per_step,    # noqa: E731
                                           seed=hash((args.seed, 2, step)) & 0x7FFFFFFF)
    report = grpo(args, 2, folder, init, args.rl_steps, device, log, train_batch, rule_reward_fn(args), evaluate,
                  task)[2]
    log.close()
    return report


def stage3(args, task, general, eval_problems, eval_general, device):
    init = stage_output(args, 2)
    folder = stage_dir(args, 3, tagged=True)
    folder.mkdir(parents=True, exist_ok=True)
    log = stage_log(folder)
    data = folder / "sft_mix.jsonl"
    made = data.exists()
    fsdp.barrier()                                    # every rank has looked before rank 0 writes it
    if not made:
        model, tokenizer, _ = checkpoint.load(init, device=device)
        model.eval()
        problems = task.sample("train", args.rs_prompts, seed=args.seed + 3)
        records, stats = sample_and_filter(model, tokenizer, problems, R1, args.rs_k, args, args.seed + 3)
        n_general = round(len(records) * args.general_share / max(1e-9, 1 - args.general_share))
        if not records:  # nothing passed: keep going on general data alone, loudly (reasoning would be forgotten)
            print0(f"WARNING: no stage-2 sample passed the rejection filter ({json.dumps(stats)})")
            n_general = round(args.rs_prompts * args.general_share)
        records += [{"question": p.question, "response": general.reference_response(p, R1), "source": "general",
                     "id": p.id, "lang": "en"} for p in general.mix("train", n_general, seed=args.seed + 3)]
        random.Random(args.seed).shuffle(records)
        stats["general_examples"] = n_general
        log.log(step=0, **{f"rejection/{k}": v for k, v in stats.items()})
        print0("rejection sampling: " + json.dumps(stats))
        if not records:
            raise RuntimeError("stage 3 has no SFT data: no stage-2 sample passed the filter and --general-share is 0")
        write_jsonl(data, records)
        fsdp.barrier()                                # written before any rank reads it
    model, tokenizer = sft(args, 3, folder, load_conversations(data), args.sft3_steps, device, log)
    report = reasoning_eval(model, tokenizer, eval_problems, R1, args, folder, "stage3")
    report.update({f"general/{k}": v for k, v in general_eval(model, tokenizer, eval_general, args).items()})
    log.log(step=args.sft3_steps, **{f"eval/{k}": v for k, v in report.items()})
    log.close()
    return report


def train_reward_models(args, general, folder: Path, init: Path, device, log) -> dict:
    """One reward model per aspect, from the stage-3 model: Bradley-Terry on pairs of training prompts, accuracy on
    pairs of held-out prompts. Saved under folder/rm_<aspect> and reused when present. Under torchrun every rank
    trains the same model on the same pairs (they are small; one process's numbers), and rank 0 saves it."""
    rms = {}
    made = {aspect: (folder / f"rm_{aspect}").is_dir() for aspect in reward_model.ASPECTS}
    fsdp.barrier()                                    # every rank has looked before rank 0 writes one
    for aspect in reward_model.ASPECTS:
        path = folder / f"rm_{aspect}"
        if made[aspect]:
            rms[aspect] = reward_model.load(path, device=device)[0]
            continue
        backbone, tokenizer, _ = checkpoint.load(init, device=device)
        rm = reward_model.RewardModel(backbone, aspect)
        optimizer = make_optimizer(rm, args.rm_lr, 0.0)
        rng = random.Random(f"{args.seed}-{aspect}")
        train = [(p.question, *general.preference_pair(p, aspect, rng, R1))
                 for p in general.mix("train", args.rm_pairs, seed=args.seed + 4)]
        test = [(p.question, *general.preference_pair(p, aspect, rng, R1))
                for p in general.mix("test", args.eval_general, seed=args.seed + 5)]
        t0 = time.time()
        for i, batch in enumerate(tqdm(reward_model.batches(train, args.rm_batch, args.rm_steps, args.seed),
                                       total=args.rm_steps, desc=f"RM {aspect}", disable=not fsdp.is_main())):
            stats = reward_model.train_step(rm, optimizer, tokenizer, R1, batch)
            log.log(step=0, **{f"rm_{aspect}/train_{k}": v for k, v in stats.items()}, rm_step=i + 1)
        accuracy = reward_model.pairwise_accuracy(rm, tokenizer, R1, test)
        log.log(step=0, **{f"rm_{aspect}/heldout_accuracy": accuracy, f"rm_{aspect}/seconds": time.time() - t0})
        print0(f"reward model {aspect}: held-out pairwise accuracy {accuracy:.3f} ({len(test)} pairs)")
        reward_model.save(path, rm, tokenizer, extra={"heldout_accuracy": accuracy})
        rm.eval().requires_grad_(False)
        rms[aspect] = rm
    return rms


def all_scenario_reward_fn(args, rms, tokenizer):
    """Stage 4's reward: rule rewards for reasoning prompts, w_h * helpfulness RM + w_s * harmlessness RM for
    general ones. The rule checks of general answers (quality, leak) are logged, never rewarded."""
    rules = rule_reward_fn(args)
    weights = {"helpfulness": args.helpfulness_weight, "harmlessness": args.harmlessness_weight}

    def reward_fn(texts, problems):
        totals, components = [0.0] * len(texts), {}
        names = ["accuracy", "format", "language", "helpfulness", "harmlessness", "rule_quality", "rule_leak"]
        for name in names:
            components[name] = [0.0] * len(texts)
        reasoning = [i for i, p in enumerate(problems) if p.kind != "general"]
        general = [i for i, p in enumerate(problems) if p.kind == "general"]
        if reasoning:
            t, c = rules([texts[i] for i in reasoning], [problems[i] for i in reasoning])
            for j, i in enumerate(reasoning):
                totals[i] = t[j]
                for name in c:
                    components[name][i] = c[name][j]
        if general:
            for aspect, rm in rms.items():
                scores = reward_model.score(rm, tokenizer, R1, [problems[i].question for i in general],
                                            [texts[i] for i in general])
                for j, i in enumerate(general):
                    components[aspect][i] = scores[j]
                    totals[i] += weights[aspect] * scores[j]
            for i in general:
                components["rule_quality"][i] = general_quality(texts[i], problems[i], R1)
                components["rule_leak"][i] = private_leak(texts[i], problems[i])
        mean = lambda name, rows: sum(components[name][i] for i in rows) / len(rows) if rows else 0.0  # noqa: E731
        reward_fn.last_rows = {"general": len(general), "reasoning": len(reasoning)}
        reward_fn.last = {f"general/train_{n}": mean(n, general) for n in names[3:]}
        reward_fn.last.update({f"reasoning/train_{n}": mean(n, reasoning) for n in names[:3]})
        return totals, components
    return reward_fn


def stage4(args, task, general, eval_problems, eval_general, device):
    init = stage_output(args, 3)
    folder = stage_dir(args, 4, tagged=True)
    folder.mkdir(parents=True, exist_ok=True)
    log = stage_log(folder)
    rms = train_reward_models(args, general, folder, init, device, log)
    tokenizer = Tokenizer.load(init)

    def evaluate(model, tok, step):
        report = {f"eval/{k}": v for k, v in reasoning_eval(model, tok, eval_problems, R1, args, folder,
                                                             f"step{step:05d}").items()}
        report.update({f"eval/general/{k}": v for k, v in general_eval(model, tok, eval_general, args, rms).items()})
        return report

    n_general = round(args.prompts_per_step * args.general_share)

    def train_batch(step):
        seed = hash((args.seed, 4, step)) & 0x7FFFFFFF
        return (task.sample("train", args.prompts_per_step - n_general, seed=seed)
                + general.mix("train", n_general, seed=seed))
    report = grpo(args, 4, folder, init, args.rl4_steps, device, log, train_batch,
                  all_scenario_reward_fn(args, rms, tokenizer), evaluate, task)[2]
    log.close()
    return report


# ----------------------------------------------------------------------------------------------------------------
# The run


class FileTask:
    """Questions from JSONL files as a task: --task-file is the train split, --eval-file the test split. Every gold
    answer is checked up front (file:line in the error), so a bad line stops the run before any training."""

    def __init__(self, train_file: str, test_file: str):
        self.splits = {"train": load_jsonl(train_file), "test": load_jsonl(test_file)}
        errors = [e for split in self.splits.values()
                  for e in validate_problems(split, prompt_tokens=lambda p: 0, max_prompt_tokens=0)]
        if errors:
            raise SystemExit(f"{len(errors)} problem(s) cannot be graded:\n  " + "\n  ".join(errors[:20]))

    def sample(self, split: str, n: int, seed: int) -> list:
        pool = self.splits[split]
        return random.Random(seed).sample(pool, min(n, len(pool)))


def main(argv=None):
    args = get_args(argv)
    seed_everything(args.seed)
    device = fsdp.init_distributed(args.device)   # torchrun: join the process group; one process: just the device
    if args.prompts_per_step % world_size():
        # every rank must run the same number of forward/backward passes (FSDP's collectives)
        raise SystemExit(f"{world_size()} ranks need --prompts-per-step divisible by {world_size()}")
    out = Path(args.out)
    if fsdp.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / ("args.json" if args.stage is None else f"args_stage{args.stage}{args.tag and '-' + args.tag}.json")
         ).write_text(json.dumps(vars(args), indent=2))
    task = FileTask(args.task_file, args.eval_file) if args.task_file else make_task(args.task, **args.task_kwargs)
    general = GeneralTask()
    eval_problems = task.sample("test", args.eval_problems, seed=args.seed)
    eval_general = general.mix("test", args.eval_general, seed=args.seed)
    stages = STAGES if args.stage is None else (args.stage,)
    totals = {1: args.sft_steps, 2: args.rl_steps, 3: args.sft3_steps, 4: args.rl4_steps}
    summary, timings = {}, {}
    for n in stages:
        t0 = time.time()
        done = stage_done(args, n, totals[n]) if args.stage is None else None
        if done is not None:   # `python train_r1.py` again after a crash: finished stages are not redone
            print0(f"stage {n}: already done ({stage_dir(args, n)}), skipped")
            summary[f"stage{n}"] = done
        elif n == 1:
            summary["stage1"] = stage1(args, task, eval_problems, device)
        elif n == 2:
            summary["stage2"] = stage2(args, task, eval_problems, device)
        elif n == 3:
            summary["stage3"] = stage3(args, task, general, eval_problems, eval_general, device)
        else:
            summary["stage4"] = stage4(args, task, general, eval_problems, eval_general, device)
        timings[f"stage{n}"] = time.time() - t0
        print0(f"stage {n} done in {timings[f'stage{n}'] / 60:.1f} min: " + json.dumps(summary[f"stage{n}"]))
    summary["seconds"] = timings
    name = "summary.json" if args.stage is None else f"summary_stage{args.stage}{args.tag and '-' + args.tag}.json"
    if fsdp.is_main():
        (out / name).write_text(json.dumps(summary, indent=2))
    keys = ["pass@1", f"cons@{args.eval_k}", "format_rate", "language_consistency", "readability", "mean_length"]
    print0(f"\n{'':8s}" + "".join(f"{k:>22s}" for k in keys))
    for stage, rep in summary.items():
        if stage != "seconds":
            print0(f"{stage:8s}" + "".join(f"{rep.get(k, float('nan')):22.3f}" for k in keys))
    return summary


if __name__ == "__main__":
    try:
        main()
        fsdp.shutdown()
    except (FileNotFoundError, RuntimeError) as e:   # a missing input or an empty data set: say what to do
        raise SystemExit(f"error: {e}") from None
