"""
evaluate.py: score checkpoints side by side the way R1 reports them (paper sec. 3.1), with error bars.

The paper samples k completions per problem at temperature 0.6, top-p 0.95, and reports pass@1 as the mean
correctness of the k samples (more stable than one greedy answer), plus cons@64 (majority vote). Published numbers
of reproductions disagree by 4 to 40 points with each other and with the paper, from too few samples, another
template, another token budget or another grader; and small benchmarks (AIME: 30 problems) swing 5-15 points from
seed to seed. So every number here comes with a 95% bootstrap interval over problems (and over seeds with
--seeds > 1), and results.json records everything that decides the numbers: the problems, template per model,
token budget, sampling settings, grader.

Metrics (nanor1/scoring.py): pass@1 (mean over k samples), the unbiased pass@k curve for k = 1, 2, 4, ... k,
cons@k (majority vote: a sample without an answer does not vote, ties score the share of tied answers that are
right), greedy accuracy (--greedy: one argmax completion per problem), format rate (the template's well-formed
check), readability (nanor1.rewards.readability: well-formed, short unique lines, one script), language
consistency (R1's language reward: the share of the reasoning's words in the problem's language; only when every
problem names one, as the bilingual task does), mean completion length in tokens, truncation rate (completions that
hit --max-new-tokens).

Commands:
  python evaluate.py runs/base runs/zero/checkpoint                  # arithmetic held-out split (as train_zero.py)
  python evaluate.py runs/zero/checkpoint --k 16 --seeds 3 --greedy --out runs/eval-zero
  python evaluate.py runs/zero/checkpoint --data ../shared/data/aime2024.jsonl --k 64 --max-new-tokens 32768 \
      --device cuda                                                  # the paper's AIME setting
  python evaluate.py CKPT --data ../shared/data/math500.jsonl --problems 100   # the first 100 problems only
  python evaluate.py /path/to/hf-folder --template r1-zero --data ../shared/data/gsm8k_test.jsonl --device cuda
  torchrun --nproc_per_node 8 evaluate.py runs/zero/checkpoint --data ../shared/data/math500.jsonl --k 16
The template comes from the checkpoint's extra.json (train_zero.py records it), else --template. Caveat for
DeepSeek-R1-Distill folders: the "r1" template writes nanor1's own chat markers (<|user|>, <|assistant|>), not
DeepSeek's (<｜User｜>, <｜Assistant｜>), so their numbers are not yet comparable with the paper's.
Rerunning the same command resumes: each (model, seed, shard of --shard-size problems) is written to its own
JSONL file when it finishes, and finished shards are read back instead of sampled again. A different setting with
the same --out is refused (delete the folder or choose another --out).

Outputs in --out: <model>/samples-*.jsonl (one record per completion: problem id, seed, sample index, completion,
extracted answer, correct, well-formed, length, finish reason), results.json, results.md (the table printed at the
end), pass_at_k.png (when matplotlib is installed).

Data parallel (torchrun, one node or several): shards are independent and each problem's sampling seed comes from
its id, never from its position, so the ranks split the shard list (`my_shards`: shard j goes to rank j % world),
each with a whole copy of the model, and rank 0 scores once every shard file exists (it watches the folder, so a
long evaluation never waits in a collective that could time out); the numbers do not depend on the number of ranks.
--out must be on a filesystem every rank sees.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nanor1 import checkpoint, fsdp
from nanor1.math_grader import math_equal
from nanor1.rewards import accuracy_reward, grade_answer, is_readable, language_consistency_reward
from nanor1.rollout import rollout
from nanor1.sampler import SamplingParams
from nanor1.scoring import bootstrap_ci, cons_score, curve_ks, pass_at_k_scores
from nanor1.tasks import JsonlFormatError, TASKS, load_jsonl, make_task
from nanor1.templates import TEMPLATES, get_template
from nanor1.training import autocast

GRADER = "nanor1.rewards.accuracy_reward (math: math_grader.math_equal on the template's final answer)"


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (nanor1 or HuggingFace), evaluated side by side")
    # problems
    p.add_argument("--data", default=None, help="a JSONL benchmark ({problem|question, answer, id}); "
                                                "default: the built-in --task's held-out split")
    p.add_argument("--task", default="arithmetic", help=f"built-in task: {' | '.join(TASKS)}")
    p.add_argument("--task-kwargs", default='{"n_terms": 5}', help="JSON dict of task options")
    p.add_argument("--problems", type=int, default=None, help="number of problems (task default 200, "
                                                              "--data default all: the first N lines)")
    p.add_argument("--problem-seed", type=int, default=1234, help="which held-out problems are drawn "
                                                                  "(1234: the ones train_zero.py evaluates on)")
    # template
    p.add_argument("--template", default=None, choices=sorted(TEMPLATES),
                   help="for checkpoints whose extra.json names none (HF folders); default r1-zero")
    # sampling (the paper's defaults)
    p.add_argument("--k", type=int, default=8, help="samples per problem (the paper: 64 on AIME, 16 elsewhere)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--max-new-tokens", type=int, default=None, help="token budget per completion (default 160 for "
                                                                    "a built-in task, 4096 for --data; paper: 32768)")
    p.add_argument("--seeds", type=int, default=1, help="independent sampling seeds (k samples each)")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed")
    p.add_argument("--greedy", action="store_true", help="also decode one greedy completion per problem")
    # running
    p.add_argument("--out", default="runs/eval", help="output folder (a rerun resumes from its shard files)")
    p.add_argument("--shard-size", type=int, default=50, help="problems per shard (the unit of resuming)")
    p.add_argument("--device", default="auto")
    p.add_argument("--decode-mode", default="eager", help="sampler decode step: eager | static | cuda_graph")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per interval")
    args = p.parse_args(argv)
    for name in ("k", "seeds", "shard_size", "n_boot"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_new_tokens is None:
        args.max_new_tokens = 4096 if args.data else 160
    return args


# ----------------------------------------------------------------------------------------------------------------
# Problems


def load_problems(args) -> list:
    """The evaluation problems: the first --problems lines of --data, or --problems held-out task problems."""
    if args.data:
        if not Path(args.data).is_file():
            raise FileNotFoundError(f"--data {args.data}: no such file")
        problems = load_jsonl(args.data)  # JsonlFormatError names file:line
        return problems[:args.problems] if args.problems else problems
    try:
        task_kwargs = json.loads(args.task_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--task-kwargs is not JSON: {e}") from None
    task = make_task(args.task, **task_kwargs)  # unknown task / option: ValueError naming the valid ones
    return task.sample("test", args.problems or 200, seed=args.problem_seed)


def unparseable_golds(problems) -> list[list[str]]:
    """(id, gold) of the math problems whose gold answer the grader cannot parse: they cannot be scored at all."""
    bad = []
    for p in problems:
        if p.kind != "math":
            continue
        try:
            math_equal("0", p.answer)
        except ValueError:
            bad.append([p.id, p.answer])
    return bad


# ----------------------------------------------------------------------------------------------------------------
# Sampling, one shard at a time


def problem_seed(seed: int, problem_id: str) -> int:
    """The sampling seed of one problem: from its id, so its samples do not depend on shards, ranks or order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()[:7], "big")


def my_shards(n_shards: int, rank: int = 0, world: int = 1) -> list[int]:
    """The shards this process samples: shard j goes to rank j % world (under torchrun; rank 0 then scores once
    all shard files exist)."""
    return [j for j in range(n_shards) if j % world == rank]


def sample_shard(model, tokenizer, problems, template, *, group_size: int, greedy: bool, seed: int, args) -> list:
    """Sample one shard's completions (one batch through the sampler) and grade them -> one record per completion.
    Each problem's seed comes from its id, not its place in the batch."""
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, greedy=greedy)
    ro = rollout(model, tokenizer, problems, template=template, params=params, group_size=group_size,
                 seed=[problem_seed(seed, p.id) for p in problems], decode_mode=args.decode_mode)
    records = []
    for i, (text, length) in enumerate(zip(ro.texts, ro.lengths.tolist())):
        problem = problems[i // group_size]
        lang = problem.data.get("lang")   # bilingual tasks and JSONL records with a "lang" field
        records.append({"problem_id": problem.id, "seed": seed, "sample": i % group_size, "completion": text,
                        "answer": template.final_answer(text),
                        "correct": accuracy_reward(text, problem, template) > 0.5,
                        "well_formed": template.well_formed(text), "length": length,
                        "finish_reason": ro.gen.finish_reason[i],
                        "language": None if lang is None else language_consistency_reward(text, lang, template),
                        "readable": is_readable(text, lang or "en", template)})
    return records


def write_records(path: Path, records: list[dict]):
    """Write a shard's records atomically: a crash leaves no half shard that a rerun would trust."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_settings(folder: Path, settings: dict, *, wait: bool = False):
    """Resume only what was sampled with the same settings; a different run in the same folder is an error.
    wait: (ranks > 0) wait for rank 0 to write the settings instead of writing them."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "settings.json"
    while wait and not f.is_file():
        time.sleep(0.2)
    if f.is_file():
        old = json.loads(f.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{folder} holds samples made with other settings (changed: {changed}); "
                             "use another --out or delete that folder")
    else:
        f.with_name(f.name + ".tmp").write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(f.with_name(f.name + ".tmp"), f)   # atomic: other ranks read it


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def score(records: list[dict], problems, seeds: list[int], k: int) -> dict:
    """Per-problem scores, each [S, P] (seeds x problems): pass@1, pass@k per k, cons@k, format, readable,
    (language), length, truncated."""
    index = {p.id: i for i, p in enumerate(problems)}
    S, P = len(seeds), len(problems)
    rows = [[[None] * k for _ in range(P)] for _ in range(S)]  # [S][P][k] records
    for r in records:
        rows[seeds.index(r["seed"])][index[r["problem_id"]]][r["sample"]] = r
    missing = sum(r is None for seed_rows in rows for group in seed_rows for r in group)
    if missing:
        raise ValueError(f"{missing} of {S * P * k} samples are missing from the shard files")
    out = {f"pass@{kk}": np.zeros((S, P)) for kk in curve_ks(k)}   # pass@1 is the mean over the k samples
    out.update({name: np.zeros((S, P)) for name in ("cons@k", "format", "readable", "length", "truncated")})
    with_lang = all(r.get("language") is not None for seed_rows in rows for group in seed_rows for r in group)
    if with_lang:          # every problem names its language: the reasoning's language consistency (R1's reward)
        out["language"] = np.zeros((S, P))
    for s in range(S):
        correct = [[r["correct"] for r in rows[s][i]] for i in range(P)]
        for kk in curve_ks(k):
            out[f"pass@{kk}"][s] = pass_at_k_scores(correct, kk)
        for i, problem in enumerate(problems):
            group = rows[s][i]
            # math answers vote with their equivalents (0.5 and 1/2); equations (countdown) as exact strings
            same = {"same": lambda a, b: a.strip() == b.strip()} if problem.kind != "math" else {}
            out["cons@k"][s, i] = cons_score([r["answer"] for r in group],
                                             lambda a: grade_answer(a, problem) > 0.5, **same)
            out["format"][s, i] = np.mean([r["well_formed"] for r in group])
            out["readable"][s, i] = np.mean([r.get("readable", False) for r in group])
            if with_lang:
                out["language"][s, i] = np.mean([r["language"] for r in group])
            out["length"][s, i] = np.mean([r["length"] for r in group])
            out["truncated"][s, i] = np.mean([r["finish_reason"] == "length" for r in group])
    return out


def summarise(scores: dict, n_boot: int) -> dict:
    """{metric: {"mean", "lo", "hi"}} with 95% bootstrap intervals over problems (and seeds)."""
    result = {}
    for name, x in scores.items():
        lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=0)
        result[name] = {"mean": float(x.mean()), "lo": lo, "hi": hi}
    return result


def pct(m: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{m['mean'] * scale:.{digits}f} [{m['lo'] * scale:.{digits}f}, {m['hi'] * scale:.{digits}f}]"


def markdown_table(results: dict) -> str:
    """One row per model: every headline number with its 95% interval."""
    s = results["settings"]
    k = s["k"]
    cols = ["model", "template", "pass@1", f"cons@{k}", f"pass@{k}", "greedy", "format", "readable", "language",
            "length (tokens)", "truncated"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for m in results["models"]:
        x = m["metrics"]
        lines.append("| " + " | ".join([
            m["name"], m["template"], pct(x["pass@1"]), pct(x["cons@k"]), pct(x[f"pass@{k}"]),
            pct(x["greedy"]) if "greedy" in x else "-", pct(x["format"]), pct(x["readable"]),
            pct(x["language"]) if "language" in x else "-", pct(x["length"], 1.0),
            pct(x["truncated"])]) + " |")
    over = "problems and seeds" if s["seeds"] > 1 else "problems"
    lines.append(f"\n{s['n_problems']} problems ({s['problems']}), k={k}, {s['seeds']} seed(s), T={s['temperature']},"
                 f" top-p {s['top_p']}, {s['max_new_tokens']} new tokens max; % with 95% bootstrap intervals over "
                 f"{over}; grader: {s['grader']}.")
    bad = s["unparseable_golds"]
    if bad:
        names = ", ".join(i for i, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
        lines.append(f"{len(bad)} problem(s) left out: the grader cannot parse their gold answer ({names}).")
    return "\n".join(lines)


def plot_pass_at_k(results: dict, path: Path) -> bool:
    """pass@k against k (log scale) with the intervals shaded, one line per model; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in results["models"]:
        ks = [int(k) for k in m["pass_at_k"]]
        mid = [m["pass_at_k"][str(k)]["mean"] * 100 for k in ks]
        ax.plot(ks, mid, marker="o", label=m["name"])
        ax.fill_between(ks, [m["pass_at_k"][str(k)]["lo"] * 100 for k in ks],
                        [m["pass_at_k"][str(k)]["hi"] * 100 for k in ks], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 100)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"pass@k, {results['settings']['n_problems']} problems, 95% CI")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------------------
# The run


def model_names(paths: list[str]) -> list[str]:
    """Short unique folder names: the checkpoint's last two path parts ("zero-checkpoint")."""
    names = []
    for p in paths:
        base = "-".join(Path(p).resolve().parts[-2:])
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def evaluate_model(path: str, name: str, problems, args, out: Path, device) -> dict:
    """Sample (or read back) every shard of one checkpoint, then score it."""
    template_name = (checkpoint.read_extra(path) or {}).get("template") or args.template or "r1-zero"
    template = get_template(template_name)  # unknown name: ValueError listing the valid ones
    folder = out / name
    seeds = [args.seed + i for i in range(args.seeds)]
    settings = dict(checkpoint=str(Path(path).resolve()), template=template_name, k=args.k, seeds=seeds,
                    greedy=args.greedy, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens, shard_size=args.shard_size,
                    problem_ids=hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest())
    check_settings(folder, settings, wait=not fsdp.is_main())
    shards = [problems[j:j + args.shard_size] for j in range(0, len(problems), args.shard_size)]
    jobs = [(f"samples-seed{s}-shard{j:04d}.jsonl", s, j, False) for s in seeds for j in range(len(shards))]
    if args.greedy:
        jobs += [(f"greedy-shard{j:04d}.jsonl", 0, j, True) for j in range(len(shards))]
    mine = set(my_shards(len(shards), fsdp.rank(), fsdp.world_size()))   # all of them in one process
    todo = [job for job in jobs if job[2] in mine and not (folder / job[0]).is_file()]
    model = tokenizer = None
    t0 = time.time()
    for file, s, j, greedy in tqdm(todo, desc=name, disable=not todo or not fsdp.is_main()):
        if model is None:  # loaded only when something is left to sample
            model, tokenizer, _ = checkpoint.load(path, device=device)
        with autocast(device):
            records = sample_shard(model, tokenizer, shards[j], template, group_size=1 if greedy else args.k,
                                   greedy=greedy, seed=s, args=args)
        write_records(folder / file, records)
    if not fsdp.is_main():
        return None
    while any(not (folder / job[0]).is_file() for job in jobs):   # data parallel: the other ranks' shards
        time.sleep(1.0)
    seconds = time.time() - t0
    sampled = [r for f, _, _, g in jobs if not g for r in read_records(folder / f)]
    scores = score(sampled, problems, seeds, args.k)
    metrics = summarise(scores, args.n_boot)
    if args.greedy:
        greedy = [r for f, _, _, g in jobs if g for r in read_records(folder / f)]
        by_id = {r["problem_id"]: r["correct"] for r in greedy}
        metrics.update(summarise({"greedy": np.array([[by_id[p.id] for p in problems]], dtype=float)}, args.n_boot))
    pass_at_k = {str(kk): metrics.pop(f"pass@{kk}") for kk in curve_ks(args.k)}
    metrics["pass@1"], metrics[f"pass@{args.k}"] = pass_at_k["1"], pass_at_k[str(args.k)]
    return {"name": name, "checkpoint": str(path), "template": template_name, "metrics": metrics,
            "pass_at_k": pass_at_k, "sampling_seconds": round(seconds, 1)}


def main(argv=None) -> dict:
    args = get_args(argv)
    device = fsdp.init_distributed(args.device)   # torchrun: this rank's device; one process: just the device
    problems = load_problems(args)
    bad = unparseable_golds(problems)
    if bad and fsdp.is_main():  # counted, named and left out: never scored as wrong answers
        print(f"warning: the grader cannot parse the gold answer of {len(bad)} problem(s); they are left out: "
              + ", ".join(f"{i} ({g!r})" for i, g in bad[:10]) + (" ..." if len(bad) > 10 else ""), file=sys.stderr)
    if bad:
        skip = {i for i, _ in bad}
        problems = [p for p in problems if p.id not in skip]
    if not problems:
        raise ValueError("no problems left to evaluate")
    for path in args.checkpoints:  # fail now, not after hours of sampling the models before it
        if not Path(path).is_dir():
            raise FileNotFoundError(f"checkpoint folder {path} does not exist")
        if not (Path(path) / checkpoint.TOKENIZER).is_file():
            raise ValueError(f"{path}: the checkpoint has no tokenizer ({checkpoint.TOKENIZER}); evaluation needs one")
    if len({p.id for p in problems}) != len(problems):
        raise ValueError("problem ids are not unique; give each JSONL line a distinct 'id'")
    out = Path(args.out)
    source = args.data or f"{args.task} {args.task_kwargs} test split, seed {args.problem_seed}"
    settings = dict(problems=source, n_problems=len(problems), unparseable_golds=bad, k=args.k, seeds=args.seeds,
                    first_seed=args.seed, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens, greedy=args.greedy, grader=GRADER,
                    bootstrap=dict(level=0.95, n_boot=args.n_boot, over="problems and seeds" if args.seeds > 1
                                   else "problems", method="percentile, seed 0"))
    results = {"settings": settings, "models": []}
    for path, name in zip(args.checkpoints, model_names(args.checkpoints)):
        results["models"].append(evaluate_model(path, name, problems, args, out, device))
    if not fsdp.is_main():   # data parallel: rank 0 scores and writes
        return None
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table + "\n")
    print(table)
    if plot_pass_at_k(results, out / "pass_at_k.png"):
        print(f"plot: {out / 'pass_at_k.png'}")
    return results


if __name__ == "__main__":
    try:
        main()
        fsdp.shutdown()
    except (FileNotFoundError, JsonlFormatError, ValueError) as e:
        sys.exit(f"error: {e}")
