"""
plot.py: the R1-Zero curves of a run, in the spirit of the paper's Figures 2 and 3.

  python plot.py runs/zero            # writes runs/zero/curves.png

Reads <run>/metrics.jsonl (written by train_zero.py). Needs matplotlib (`pip install -e ".[plot]"`); training
never does: the JSONL file is the record, this is only a view of it.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "reward" in r], [r for r in rows if "eval/pass@1" in r]


def plot_run(run) -> Path:
    run = Path(run)
    train, evals = read_metrics(run)
    search = bool(evals) and "eval/cd/attempts" in evals[0]        # a countdown run: two more panels
    fig, axes = plt.subplots(1, 5 if search else 3, figsize=(25 if search else 15, 4))
    ax = axes[0]  # Figure 2: accuracy during RL
    steps = [r["step"] for r in evals]
    ax.plot(steps, [r["eval/pass@1"] for r in evals], "o-", label="pass@1 (held out)")
    cons = next((k for k in (evals[0] if evals else {}) if k.startswith("eval/cons@")), None)
    if cons:
        ax.plot(steps, [r[cons] for r in evals], "s--", label=cons.split("/")[1] + " (held out)")
    ax.plot([r["step"] for r in train], [r["reward/accuracy"] for r in train], alpha=0.4, label="train accuracy")
    ax.set(xlabel="RL step", ylabel="accuracy", title="accuracy during RL (cf. Fig. 2)", ylim=(0, 1))
    ax.legend()
    ax = axes[1]  # Figure 3: response length grows by itself
    ax.plot([r["step"] for r in train], [r["mean_length"] for r in train])
    ax.set(xlabel="RL step", ylabel="tokens", title="mean response length (cf. Fig. 3)")
    ax = axes[2]  # behaviours
    for key, label in (("reflection_rate", "reflection phrases"), ("reward/format", "format ok"),
                       ("truncation_rate", "truncated")):
        ax.plot([r["step"] for r in train], [r[key] for r in train], label=label)
    ax.set(xlabel="RL step", ylabel="share of completions", title="behaviours", ylim=(0, 1))
    ax.legend()
    if search:
        plot_search(axes[3:], evals)
    fig.tight_layout()
    path = run / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_search(axes, evals: list[dict]) -> None:
    """Countdown (held out, per eval): the search's size and the "aha" in behaviour, and length per difficulty."""
    steps = [r["step"] for r in evals]
    ax = axes[0]
    for key, label in (("cd/retry_rate", "re-try after a miss"), ("cd/retry_after_noticed", "re-try after a noticed "
                       "miss"), ("cd/noticed_rate", "misses noticed"), ("cd/step_accuracy", "steps right")):
        ax.plot(steps, [r[f"eval/{key}"] for r in evals], "o-", label=label)
    ax.set(xlabel="RL step", ylabel="share", title="search behaviour (held out)", ylim=(0, 1))
    ax.legend()
    ax = axes[1]
    ax.plot(steps, [r["eval/cd/attempts"] for r in evals], "o-", color="k", label="attempts per response")
    ax.set(xlabel="RL step", ylabel="attempts", title="attempts and length per difficulty (held out)")
    twin = ax.twinx()
    for size in (3, 4):
        if f"eval/n{size}/mean_length" in evals[0]:
            twin.plot(steps, [r[f"eval/n{size}/mean_length"] for r in evals], "s--", label=f"tokens, {size} numbers")
    twin.set(ylabel="tokens")
    ax.legend(loc="upper left")
    twin.legend(loc="lower right")


if __name__ == "__main__":
    print(plot_run(sys.argv[1] if len(sys.argv) > 1 else "runs/zero"))
