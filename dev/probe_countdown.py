"""
Why does a Countdown base fail? Greedy responses of one base on held-out problems, each sorted into one class.

    python dev/probe_countdown.py runs/base-countdown        # 200 held-out problems, ~30 s on 2 cores

Two framings: "forced" (the first step of a solution prefilled: pretrain.py's forced-mode accuracy) and "<think>
only" (the steps mode started, the first candidate left to the model). The classes, per number of numbers:
  correct                      the answer reaches the target with each number once
  valid hit, wrong answer      an attempt with right arithmetic and the problem's numbers reached the target, but
                               the <answer> equation is not that attempt (the steps -> infix transcription failed)
  hit by wrong steps           an attempt "reached" the target through wrong arithmetic or numbers not given
  no hit: ...                  no attempt reached it; flags say whether some step was wrong, some attempt used
                               other numbers than the problem's, some miss went unnoticed (no ", not T")
  no attempt                   no computed candidate at all
Numbers only; nothing is written.
"""
import argparse
import collections
import json
from pathlib import Path

from nanor1 import checkpoint
from nanor1.rollout import forced_prefixes, parse_attempts, rollout, rule_rewards
from nanor1.sampler import SamplingParams
from nanor1.tasks import make_task
from nanor1.templates import get_template


def leaves(attempt: dict) -> list[int]:
    """The numbers an attempt takes from the problem: the operands that are not results of its earlier steps."""
    out, results = [], []
    for a, _, b, c in attempt["steps"]:
        for v in (a, b):
            if v in results:
                results.remove(v)
            else:
                out.append(int(v))
        results.append(c)
    return sorted(out)


def failure_class(text: str, problem, right: bool) -> str:
    numbers, target = sorted(problem.data["numbers"]), problem.data["target"]
    attempts = parse_attempts(text, target)
    if right:
        return "correct"
    if any(a["hit"] and a["steps_right"] == len(a["steps"]) and leaves(a) == numbers for a in attempts):
        return "valid hit, wrong answer"
    if any(a["hit"] for a in attempts):
        return "hit by wrong steps"
    if not attempts:
        return "no attempt"
    flags = [name for name, bad in (
        ("wrong step", any(a["steps_right"] < len(a["steps"]) for a in attempts)),
        ("other numbers", any(leaves(a) != numbers for a in attempts)),
        ("unnoticed", any(not a["noticed"] for a in attempts))) if bad]
    return "no hit" + (": " + ", ".join(flags) if flags else "")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="a countdown base checkpoint made by pretrain.py --task countdown")
    ap.add_argument("--problems", type=int, default=200, help="held-out problems (equal shares of each size)")
    args = ap.parse_args(argv)
    model, tokenizer, _ = checkpoint.load(args.base)
    model.eval()
    pretrain_args = json.loads((Path(args.base) / "extra.json").read_text())["pretrain_args"]
    task, zero = make_task("countdown", **pretrain_args["task_kwargs"]), get_template("r1-zero")
    problems = task.sample("test", args.problems, seed=1337)
    framings = {"forced": forced_prefixes(task, problems, template=zero), "<think> only": [" <think>"] * len(problems)}
    report = {}
    for name, prefix in framings.items():
        ro = rollout(model, tokenizer, problems, template=zero, prefix=prefix,
                     params=SamplingParams(max_new_tokens=pretrain_args["max_new_tokens"], greedy=True),
                     reward_fn=rule_rewards({"accuracy": 1.0}, zero))
        counts = collections.Counter((len(p.data["numbers"]), failure_class(t, p, r > 0.5))
                                     for t, p, r in zip(ro.texts, problems, ro.components["accuracy"]))
        sizes = collections.Counter(len(p.data["numbers"]) for p in problems)
        report[name] = {f"n{n}/{cls}": c / sizes[n] for (n, cls), c in sorted(counts.items())}
        print(f"{name}:")
        for key, share in report[name].items():
            print(f"  {key:50s} {share:6.1%}")
    return report


if __name__ == "__main__":
    main()
