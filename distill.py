"""
distill.py: distil R1's verified reasoning into a small DENSE model (paper sec. 4.1), and the RL-only comparison.

The paper fine-tunes small dense models (Qwen2.5, Llama 3) on the ~800k samples of R1's stage-3 data (reasoning
traces rejection-sampled from R1, plus general data) and finds that this beats large-scale RL on the same small
model (R1-Distill-Qwen-32B 72.6 vs the RL-only DeepSeek-R1-Zero-Qwen-32B 47.0 on AIME 2024). In miniature:

  1. Traces: train_r1.py's stage-3 mix (runs/r1/stage3/sft_mix.jsonl, {"question", "response", "source"}: the
     stage-2 model's correct, readable traces plus general data), or --traces FILE, or fresh ones: --teacher CKPT
     samples --teacher-k completions per training question and keeps the correct, readable ones (R1's rejection
     filter, train_r1.sample_and_filter; an R1-Zero teacher's samples are rewritten into R1's format first).
     --max-traces N keeps the first N of a seeded shuffle (nested: the 1k traces are part of the 4k), to see how
     the result moves with the number of traces. Traces that ask a held-out question are refused. The traces used
     are saved to <out>/traces.jsonl; a resumed run reads them back.
  2. Student: a dense model (GQA attention, SwiGLU, no MoE). The default, runs/base-dense, is the `tiny-dense`
     preset (0.50M parameters; the teacher, `tiny`: 1.55M, 0.82M active) pretrained from scratch by pretrain.py on
     the R1 base's own corpus (the base's recorded pretrain_args, replayed with --preset tiny-dense), so the
     student's base saw the same documents and has the same tokenizer; it is made when missing. Or any nanor1 or
     HF Qwen2 / Llama folder (--student PATH).
  3. SFT with the R1 template, loss on the response only (nanor1/sft.py), the loop below; data-parallel under
     torchrun (each rank its slice of every global batch, as pretrain.py).
  4. Held-out evaluation (the task's test split, the problems train_zero.py and train_r1.py evaluate on; T=0.6,
     top-p 0.95, k samples): rollout.evaluate's pass@1 (mean of k), pass@k, cons@k, format, length, truncation,
     and on the first sample of each problem the repetition rate (a reasoning line written twice: the loops small
     models fall into on long traces), language consistency and readability.
  5. The paper's comparison (--compare-rl RUN): the same student base trained by GRPO instead (a train_zero.py run
     on it, evaluated on the same problems), read back and put next to the distilled student in results.json.
results.json holds both evaluations and the compute each used: training wall time (evaluation excluded) and
training FLOPs ~ 6 x active params x tokens (RL: 2 N per sampled token + 6 N per trained token, from its metrics).

Commands:
  python train_r1.py && python distill.py            # tiny default, CPU: the stage-3 mix into tiny-dense
  python train_zero.py --base runs/base-dense --task arithmetic-bilingual --steps 200 --eval-every 50 \\
      --out runs/zero-dense                          # RL on the same student base (the paper's comparison) ...
  python distill.py --resume --compare-rl runs/zero-dense        # ... next to the distilled student
  python distill.py --max-traces 1000 --out runs/distill-1k      # the number-of-traces study (also 4000, all)
  python distill.py --teacher runs/r1/stage4/checkpoint --teacher-prompts 4096 --out runs/distill-fresh
  python distill.py --student /path/to/qwen2.5-0.5b --traces traces.jsonl --device cuda --max-new-tokens 1024
  torchrun --nproc_per_node 8 distill.py --student /path/to/qwen2.5-1.5b --traces traces.jsonl --device cuda \\
      --batch-size 256
Under torchrun the student is FSDP-sharded, --batch-size is the global batch, --teacher sampling runs on rank 0
(the others wait for traces.jsonl), and evaluation shards its problems over the ranks (rollout.evaluate).

Deviations from the paper (besides scale):
- The traces come from a tiny teacher on generated arithmetic (a few hundred traces, not 800k), and the general
  share of the mix is train_r1.py's --general-share (paper: ~200k of the 800k). --teacher keeps reasoning only.
- The paper's students start from Qwen2.5 / Llama bases pretrained on the web; ours from a base pretrained on the
  teacher base's corpus (the same documents, a dense architecture a few times smaller).
  That corpus hands every base the running-sum skill, so whether RL on the student loses to distillation depends
  on how well the student's base learned it: from a weak one (forced-mode 16%) RL collapsed and distillation won,
  from a good one (98.5%) RL won (README, "Distillation").
- SFT runs --steps optimizer steps (default: train_r1.py's stage-3 SFT, so the student sees what R1's stage 3
  sees); the paper trains 2 epochs. The RL run is train_zero.py's defaults (R1-Zero template, token-mean loss,
  beta 0) at the steps you give it; compute is compared in FLOPs and wall time, and the teacher's cost of making
  the traces (the whole R1 pipeline) is not counted, as in the paper.
"""
import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from nanor1 import checkpoint, fsdp
from nanor1.model import PRESETS
from nanor1.rewards import language_consistency_reward, readability
from nanor1.rollout import evaluate, prompt_ids
from nanor1.sft import collate, length_bucketed_batches, load_conversations, render, sft_loss
from nanor1.tasks import TASKS, JsonlFormatError, load_jsonl, make_task, read_jsonl
from nanor1.templates import get_template
from nanor1.training import (JsonlLogger, RunFolderError, autocast, clip_grad, interrupt_handler, json_dict, lr_at,
                             make_optimizer, nonnegative_float, nonnegative_int, positive_float, positive_int,
                             prepare_run, print0, seed_everything, set_lr)
from train_r1 import DEFAULT_BASE, rewrite_r1, sample_and_filter, write_jsonl

R1 = get_template("r1")
DEFAULT_TRACES, DEFAULT_STUDENT = "runs/r1/stage3/sft_mix.jsonl", "runs/base-dense"


class TraceError(ValueError):
    """Traces that cannot be trained on (none left, too long, held-out questions); the message says why."""


def count_or_all(text: str):
    return None if text == "all" else positive_int(text)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # traces
    p.add_argument("--traces", default=DEFAULT_TRACES, help="JSONL of {question, response} (default: train_r1.py's "
                                                            "stage-3 mix)")
    p.add_argument("--teacher", default=None, help="sample fresh traces from this checkpoint instead (rejection-"
                                                   "filtered: correct and readable)")
    p.add_argument("--teacher-prompts", type=positive_int, default=512, help="--teacher: training questions")
    p.add_argument("--teacher-k", type=positive_int, default=4, help="--teacher: samples per question")
    p.add_argument("--sample-temperature", type=positive_float, default=1.0, help="--teacher: sampling temperature")
    p.add_argument("--max-traces", type=count_or_all, default=None, help="use the first N traces of a seeded "
                                                                         "shuffle (N or 'all', the default)")
    p.add_argument("--task", default="arithmetic-bilingual", choices=sorted(TASKS), help="task of the questions "
                   "(held-out evaluation, --teacher questions)")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', type=json_dict, help="JSON dict of task options")
    # student
    p.add_argument("--student", default=DEFAULT_STUDENT, help="the student's starting checkpoint (nanor1 or HF "
                   "folder); the default is pretrained when missing, on --teacher-base's corpus")
    p.add_argument("--student-preset", default="tiny-dense", choices=sorted(PRESETS), help="preset of the default "
                                                                                          "student base")
    p.add_argument("--teacher-base", default=DEFAULT_BASE, help="the R1 base whose recorded pretraining flags make "
                                                                "the default student base (same corpus, tokenizer)")
    # SFT
    p.add_argument("--steps", type=positive_int, default=400, help="SFT optimizer steps (train_r1 --sft3-steps)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="conversations per step (global)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (train_r1 --sft-lr)")
    p.add_argument("--warmup", type=nonnegative_int, default=5, help="linear warmup steps")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="gradient norm clip (0: off)")
    # evaluation
    p.add_argument("--eval-problems", type=positive_int, default=200, help="held-out problems")
    p.add_argument("--eval-k", type=positive_int, default=8, help="samples per held-out problem")
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="completion length limit")
    p.add_argument("--compare-rl", default=None, help="a finished train_zero.py run on the same student base: its "
                                                      "results and compute go next to the student's")
    # run
    p.add_argument("--out", default="runs/distill", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--save-every", type=positive_int, default=100, help="checkpoint every N steps (and at the end)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=1234, help="seed of trace choice, data order, sampling, eval problems")
    args = p.parse_args(argv)
    try:
        make_task(args.task, **args.task_kwargs)
    except (TypeError, ValueError) as e:
        p.error(f"--task/--task-kwargs: {e}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Traces: a file, or sampled from a teacher and rejection-filtered


def read_traces(args, task, device) -> list[dict]:
    """Every available trace: --traces FILE, or --teacher's samples that pass R1's rejection filter."""
    if args.teacher is None:
        return load_conversations(args.traces)           # JsonlFormatError names file:line
    model, tokenizer, _ = checkpoint.load(args.teacher, device=device)
    if tokenizer is None:
        raise FileNotFoundError(f"--teacher {args.teacher} has no tokenizer.json")
    model.eval()
    template = get_template((checkpoint.read_extra(args.teacher) or {}).get("template") or "r1")
    rewrite = None if template.name == "r1" else (lambda c, p: rewrite_r1(c, p, task))   # R1-Zero -> R1 format
    problems = task.sample("train", args.teacher_prompts, seed=args.seed + 5)
    records, stats = sample_and_filter(model, tokenizer, problems, template, args.teacher_k, args, args.seed + 5,
                                       rewrite=rewrite)
    print0("teacher samples: " + json.dumps(stats))
    if not records:
        raise TraceError(f"the rejection filter kept 0 of the teacher's {stats['samples']} samples (correct: "
                         f"{stats.get('correct', 0)}): sample more (--teacher-prompts, --teacher-k) or use a "
                         "stronger teacher")
    return records


def choose_traces(records: list[dict], eval_questions: set, args) -> tuple[list[dict], dict]:
    """The traces to train on (first --max-traces of a seeded shuffle) and what they are."""
    leaked = [r["question"] for r in records if r["question"] in eval_questions]
    if leaked:
        raise TraceError(f"{len(leaked)} traces ask held-out questions (e.g. {leaked[0]!r}): training on them "
                         "would leak the test split")
    records = list(records)
    random.Random(args.seed).shuffle(records)
    if args.max_traces is not None and args.max_traces > len(records):
        print0(f"WARNING: --max-traces {args.max_traces} but only {len(records)} traces exist: using all of them")
    chosen = records[:args.max_traces]
    stats = {"available": len(records), "used": len(chosen),
             **{f"source/{k}": v for k, v in Counter(r.get("source", "?") for r in chosen).items()}}
    return chosen, stats


# ----------------------------------------------------------------------------------------------------------------
# The student's base: pretrain.py on the teacher base's corpus, with a dense preset


def pretrain_argv(recorded: dict, **changes) -> list[str]:
    """pretrain.py's command line that repeats a recorded run (its checkpoint's extra["pretrain_args"]) with some
    flags changed; flags left at pretrain.py's defaults are omitted."""
    import pretrain
    defaults = vars(pretrain.get_args([]))
    # recorded before a flag existed: that recipe's value (untemplated practice text, then uniform cuts)
    recorded = {"practice_layout": "document", "cut_power": 1.0, **recorded}
    argv = []
    for key, value in {**recorded, **changes}.items():
        if key not in defaults:
            raise ValueError(f"the recorded pretraining flag --{key.replace('_', '-')} is unknown to this pretrain.py")
        flag = "--" + key.replace("_", "-")
        if value == defaults[key]:
            continue
        if isinstance(value, bool):                      # a switch: --x (or --no-x, for a default-on one)
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def ensure_student(args, device) -> Path:
    """The student's starting checkpoint; the default one is pretrained when missing (on every rank: pretrain.py
    runs data-parallel under torchrun)."""
    student = Path(args.student)
    if student.exists():
        return student
    if args.student != DEFAULT_STUDENT:
        raise FileNotFoundError(f"student checkpoint {student} does not exist")
    teacher_base = Path(args.teacher_base)
    recorded = (checkpoint.read_extra(teacher_base) or {}) if checkpoint.find(teacher_base) else {}
    if "pretrain_args" not in recorded:
        raise FileNotFoundError(
            f"no student base at {student}, and no R1 base at {teacher_base} whose corpus it would be pretrained on: "
            f"run `python train_r1.py` first (it makes {DEFAULT_BASE}), pass --teacher-base, or make one with "
            f"`python pretrain.py --task {args.task} --p-general 0.1 --preset {args.student_preset} --out {student}`")
    argv = pretrain_argv(recorded["pretrain_args"], preset=args.student_preset, model_kwargs={}, out=str(student),
                         device=args.device, eval_k=0)
    print0(f"no student base at {student}: pretraining one on {teacher_base}'s corpus: python pretrain.py "
           + " ".join(argv))
    import pretrain
    pretrain.main(argv)
    return student


def same_tokenizer(a: Path, b: Path) -> bool | None:
    files = [Path(f) / checkpoint.TOKENIZER for f in (a, b)]
    return files[0].read_bytes() == files[1].read_bytes() if all(f.is_file() for f in files) else None


# ----------------------------------------------------------------------------------------------------------------
# Evaluation and compute


def held_out_eval(model, tokenizer, problems, args) -> tuple[dict, list[dict]]:
    """rollout.evaluate with the R1 template, plus repetition, language consistency and readability of the first
    sample of each problem. Returns (report, those samples)."""
    with fsdp.gathered(model):      # FSDP: full weights; evaluate shards the problems over the ranks
        report = evaluate(model, tokenizer, problems, template=R1, k=args.eval_k, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, n_examples=len(problems))
    samples = report.pop("examples")
    langs = [p.data.get("lang", "en") for p in problems]
    checks = [readability(s["completion"], lang, R1) for s, lang in zip(samples, langs)]
    report.update(repetition_rate=sum(not c["no_repetition"] for c in checks) / len(checks),
                  readability=sum(all(c.values()) for c in checks) / len(checks),
                  language_consistency=sum(language_consistency_reward(s["completion"], lang, R1)
                                           for s, lang in zip(samples, langs)) / len(samples))
    return report, samples


def rl_run_report(run: Path, args) -> dict:
    """A finished train_zero.py run on the student base: its held-out results and its training compute, estimated
    from its metrics: sampling 2 N FLOPs per token (each group's prompt prefilled once, plus the completions), the
    update 6 N per token, mu times (each group's prompt once: group_token_logprobs), N its active parameters."""
    if not (run / "summary.json").is_file():
        raise FileNotFoundError(f"--compare-rl {run}: no summary.json (not a finished train_zero.py run); finish it "
                                f"with `python train_zero.py --out {run} --resume`")
    rl_args = json.loads((run / "args.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    model, tokenizer, _ = checkpoint.load(run / "checkpoint")
    template = get_template(rl_args["template"])
    if rl_args.get("task_file"):
        questions = [p.question for p in load_jsonl(rl_args["task_file"])[:256]]
    else:
        rl_task = make_task(rl_args["task"], **rl_args["task_kwargs"])
        questions = [p.question for p in rl_task.sample("train", min(256, rl_task.count("train")), seed=0)]
    prompt = sum(len(prompt_ids(tokenizer, template, q)) for q in questions) / len(questions)
    steps = [row for _, row in read_jsonl(run / "metrics.jsonl") if "sampled_groups" in row]
    G, mu, n = rl_args["group_size"], rl_args["mu"], model.num_params()["active_params"]
    sampled = sum(r["sampled_groups"] * (prompt + G * r["mean_length"]) for r in steps)
    trained = mu * sum(rl_args["prompts_per_step"] * (prompt + G * r["mean_length"]) for r in steps)
    ours = dict(task=args.task, task_kwargs=args.task_kwargs, eval_problems=args.eval_problems, eval_k=args.eval_k,
                max_new_tokens=args.max_new_tokens, seed=args.seed, eval_file=None)
    differ = sorted(k for k, v in ours.items() if rl_args.get(k) != v)
    if differ:
        print0(f"WARNING: --compare-rl {run} was evaluated with other settings ({differ}): its numbers are not on "
               "the same held-out problems; compare both checkpoints with evaluate.py")
    return {"run": str(run), "template": template.name, "steps": len(steps), "base": summary.get("base"),
            "eval": summary["final"], "same_eval_settings": not differ,
            "compute": {"train_seconds": sum(r["time/step"] for r in steps), "active_params": n,
                        "sampled_tokens": sampled, "trained_tokens": trained,
                        "train_flops": 2 * n * sampled + 6 * n * trained}}


# ----------------------------------------------------------------------------------------------------------------
# The run


def main(argv=None):
    args = get_args(argv)
    seed_everything(args.seed)
    device = fsdp.init_distributed(args.device)   # torchrun: join the process group; one process: just the device
    out, ckpt = Path(args.out), Path(args.out) / "checkpoint"
    task = make_task(args.task, **args.task_kwargs)
    eval_problems = task.sample("test", args.eval_problems, seed=args.seed)

    # inputs first: a missing file fails now, before the run folder is touched
    if not (args.resume and checkpoint.find(ckpt)):
        if args.teacher is not None and not Path(args.teacher).exists():
            raise FileNotFoundError(f"--teacher {args.teacher} does not exist")
        if args.teacher is None and not Path(args.traces).is_file():
            made_by = ("`python train_r1.py` (its stage 3 writes it)" if args.traces == DEFAULT_TRACES else
                       "the run that writes it")
            raise FileNotFoundError(f"no traces at {args.traces}: run {made_by} first, or pass --traces FILE or "
                                    "--teacher CKPT")
        if args.teacher is None:
            load_conversations(args.traces)                  # a malformed line fails now (file:line)
    resuming = prepare_run(out, resume=args.resume, args=vars(args), fresh_ok=("args.json", "traces.jsonl"))

    # 1. the traces (chosen once; a resumed run trains on the same ones)
    if not resuming:
        if fsdp.is_main():
            records, trace_stats = choose_traces(read_traces(args, task, device), {p.question for p in eval_problems},
                                                 args)
            write_jsonl(out / "traces.jsonl", records)
            (out / "traces_stats.json").write_text(json.dumps(trace_stats, indent=2))
        fsdp.barrier()
    records = load_conversations(out / "traces.jsonl")
    trace_stats = json.loads((out / "traces_stats.json").read_text())
    print0(f"traces: {json.dumps(trace_stats)}")

    # 2. the student: its base, or its own checkpoint when resuming
    student = Path(json.loads((out / "args.json").read_text())["student"])
    if not resuming:
        ensure_student(args, device)
    model, tokenizer, state = checkpoint.load(checkpoint.find(ckpt) if resuming else student, device=device)
    if tokenizer is None:
        raise FileNotFoundError(f"{student} has no tokenizer.json; the student needs one to read the traces")
    params = model.num_params()                      # (before sharding)
    n_active = params["active_params"]
    examples = [render(tokenizer, R1, r["question"], r["response"]) for r in records]   # (ids, loss mask)
    too_long = [i for i, (ids, _) in enumerate(examples) if len(ids) > model.cfg.max_seq_len]
    if too_long:
        raise TraceError(f"{len(too_long)} traces are longer than the student's context ({model.cfg.max_seq_len} "
                         f"tokens), e.g. {out / 'traces.jsonl'}:{too_long[0] + 1}")
    print0(f"student: {student} {json.dumps(params)}, {len(examples)} traces, "
           f"{sum(sum(m) for _, m in examples) / len(examples):.1f} response tokens each on average")

    # 3. SFT, loss on the response only
    if fsdp.world_size() > 1:   # FSDP: each rank keeps its shards; the optimizer is made after sharding
        fsdp.shard_model(model, mixed_precision=device.type == "cuda")
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    start, seconds = 0, 0.0
    if resuming:
        extra = checkpoint.read_extra(ckpt)
        if fsdp.world_size() > 1 or state is None:   # saved by a data-parallel run: model and optimizer shards
            info = fsdp.load_sharded(out / "checkpoint-sharded", model, optimizer)
            if info["step"] != extra.get("step"):
                raise RunFolderError(f"{ckpt} is not the sharded state's step {info['step']}: it was saved by a single "
                                     "process (resume it with one) or replaced by hand")
        else:
            optimizer.load_state_dict(state["optimizer"])
        start, seconds = extra["step"], extra["train_seconds"]
        print0(f"resumed from {ckpt} at step {start}")
    lengths, order, epoch = [len(ids) for ids, _ in examples], [], 0
    while len(order) < args.steps:   # every step's global batch, fixed by (seed, epoch): a resume sees the same data
        order += [b for b in length_bucketed_batches(lengths, args.batch_size, random.Random(args.seed * 1000 + epoch))
                  if len(b) >= fsdp.world_size()]          # (data parallel: a row for each rank)
        epoch += 1
    tokens_per_step = [sum(lengths[i] for i in batch) for batch in order[:args.steps]]  # forward tokens, no padding

    def save(done):
        extra = {"template": R1.name, "step": done, "done": done >= args.steps, "train_seconds": seconds,
                 "student": str(student), "traces": trace_stats}
        if fsdp.world_size() > 1:   # data parallel: the sharded state for --resume, the full weights to sample
            fsdp.save_sharded(out / "checkpoint-sharded", model, optimizer, step=done)
            checkpoint.save(ckpt, model, tokenizer=tokenizer, extra=extra)
        else:
            checkpoint.save(ckpt, model, tokenizer=tokenizer, extra=extra,
                            train_state={"optimizer": optimizer.state_dict(), "step": done})

    log = JsonlLogger(out / "metrics.jsonl", resume_step=start if resuming else None)   # one row per step
    if not resuming:
        log.log(step=0, **{f"traces/{k}": v for k, v in trace_stats.items()})
    model.train()
    with interrupt_handler() as stop:
        for step in (bar := tqdm(range(start, args.steps), desc="distill SFT", initial=start, total=args.steps,
                                 disable=not fsdp.is_main())):
            t0 = time.time()
            lr = lr_at(step, max_lr=args.lr, warmup=args.warmup, total=args.steps)
            set_lr(optimizer, lr)
            lo, hi = fsdp.share(len(order[step]))   # data parallel: this rank's rows of the global batch
            tokens, loss_mask = collate([examples[i] for i in order[step][lo:hi]], tokenizer.pad_id, device)  # [B, T]
            with autocast(device):
                loss, stats = sft_loss(model, tokens, loss_mask)
                loss = loss * fsdp.token_share(loss_mask[:, 1:])   # data parallel: the global token mean
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = clip_grad(model, args.grad_clip)
            if math.isfinite(norm):
                optimizer.step()
                model.update_routing_bias(1e-3)   # (an MoE student; a dense one has no router)
            seconds += time.time() - t0
            stats = fsdp.reduce_metrics(stats, weight=int(loss_mask[:, 1:].sum()))
            done = step + 1
            log.log(step=done, lr=lr, grad_norm=norm, epoch=done * args.batch_size / len(examples),
                    tokens=tokens_per_step[step], **stats)
            bar.set_postfix(loss=f"{stats['lm_loss']:.3f}")
            if done % args.save_every == 0 or done == args.steps:
                save(done)
            if stop.check() and done < args.steps:
                if done % args.save_every:
                    save(done)
                log.close()
                print0(f"{stop.signal}: saved {ckpt} at step {done}; continue with --resume")
                return None
    model.eval()

    # 4. held-out evaluation (once per finished run: a --resume that only adds --compare-rl reads it back)
    eval_file = out / "eval.json"
    if eval_file.is_file() and json.loads(eval_file.read_text())["step"] == args.steps:
        report = json.loads(eval_file.read_text())["report"]
    else:
        t0 = time.time()
        report, samples = held_out_eval(model, tokenizer, eval_problems, args)
        report["seconds"] = time.time() - t0
        log.log(step=args.steps, **{f"eval/{k}": v for k, v in report.items()})
        if fsdp.is_main():
            write_jsonl(out / "samples_eval.jsonl", samples)
            eval_file.write_text(json.dumps({"step": args.steps, "report": report}, indent=2))
    log.close()

    # 5. results: the distilled student, its compute, and the RL run on the same base when given
    train_tokens = sum(tokens_per_step)
    results = {"traces": trace_stats, "student": {"checkpoint": str(student), **params,
                                                  "same_tokenizer_as_teacher": same_tokenizer(student,
                                                                                              Path(args.teacher_base))},
               "eval": report, "eval_settings": {"task": args.task, "task_kwargs": args.task_kwargs,
                                                 "problems": args.eval_problems, "k": args.eval_k,
                                                 "max_new_tokens": args.max_new_tokens, "temperature": 0.6,
                                                 "top_p": 0.95, "seed": args.seed, "template": R1.name},
               "compute": {"train_seconds": seconds, "steps": args.steps, "train_tokens": train_tokens,
                           "active_params": n_active, "train_flops": 6 * n_active * train_tokens,
                           "flops": "6 x active params x non-pad tokens (forward + backward)"}}
    if args.compare_rl:
        results["rl"] = rl_run_report(Path(args.compare_rl), args)
    if fsdp.is_main():
        (out / "results.json").write_text(json.dumps(results, indent=2))
    rows = [("distilled (SFT)", report, results["compute"])]
    if "rl" in results:
        rows.append(("RL on the base", results["rl"]["eval"], results["rl"]["compute"]))
    keys = ["pass@1", f"cons@{args.eval_k}", "format_rate", "truncation_rate", "repetition_rate", "mean_length"]
    print0(f"\n{'':16s}" + "".join(f"{k:>16s}" for k in keys) + f"{'train min':>12s}{'train FLOPs':>14s}")
    for name, rep, comp in rows:
        print0(f"{name:16s}" + "".join(f"{rep.get(k, float('nan')):16.3f}" for k in keys)
               + f"{comp['train_seconds'] / 60:12.1f}{comp['train_flops']:14.3g}")
    print0(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    try:
        main()
        fsdp.shutdown()
    except (FileNotFoundError, RunFolderError, JsonlFormatError, TraceError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:   # a second Ctrl-C: quit at once (the first one saves, see interrupt_handler)
        raise SystemExit("interrupted: the last saved checkpoint is kept; continue with --resume") from None
