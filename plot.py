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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
    fig.tight_layout()
    path = run / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(plot_run(sys.argv[1] if len(sys.argv) > 1 else "runs/zero"))
