"""
Pretraining step time for two --cut-power values, side by side in one process (tiny preset, 2 threads).

    python dev/cut_power_speed.py                  # power 1 (uniform cuts) vs 3 (the default), ~4 min

Each power gets its own 20k-document corpus, tokenizer and model; rounds of --steps length-bucketed batches of 48
documents alternate between them, so drift of the machine hits both alike. Prints ms per step per round and the
ratio (old / new) per round and its median.
"""
import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pretrain  # noqa: E402
from nanor1.model import Transformer, get_config  # noqa: E402
from nanor1.sft import collate, length_bucketed_batches, sft_loss  # noqa: E402
from nanor1.tasks import make_task  # noqa: E402
from nanor1.tokenizer import train_bpe  # noqa: E402
from nanor1.training import make_optimizer, positive_float, positive_int  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--powers", nargs=2, type=positive_float, default=[1.0, 3.0], help="old and new --cut-power")
    ap.add_argument("--rounds", type=positive_int, default=4, help="alternating rounds")
    ap.add_argument("--steps", type=positive_int, default=20, help="training steps per round")
    ap.add_argument("--threads", type=positive_int, default=2, help="intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = make_task("arithmetic", n_terms=5)
    setups = {}
    for power in args.powers:
        docs, _ = pretrain.build_corpus(task, pretrain.get_args(["--n-docs", "20000", "--cut-power", str(power)]))
        tok = train_bpe([pretrain.doc_text(d) for d in docs[:5000]], vocab_size=512)
        seqs = [pretrain.render_doc(tok, d) for d in docs]
        lengths = [len(ids) for ids, _ in seqs]
        batches = length_bucketed_batches(lengths, 48, random.Random(0))
        torch.manual_seed(0)
        model = Transformer(get_config("tiny", vocab_size=tok.vocab_size)).train()
        setups[power] = (model, make_optimizer(model, 1e-3, 0.1), seqs, batches, tok.pad_id)
        print(f"--cut-power {power}: {sum(lengths) / len(lengths):.1f} tokens per document", flush=True)
    ms = {p: [] for p in setups}
    for r in range(args.rounds):
        for p, (model, optimizer, seqs, batches, pad) in setups.items():
            t = time.perf_counter()
            for i in range(args.steps):
                tokens, mask = collate([seqs[j] for j in batches[(r * args.steps + i) % len(batches)]], pad)
                loss, _ = sft_loss(model, tokens, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            ms[p].append(1e3 * (time.perf_counter() - t) / args.steps)
        print(f"round {r}: " + ", ".join(f"power {p}: {v[-1]:.0f} ms/step" for p, v in ms.items()), flush=True)
    old, new = args.powers
    ratios = [a / b for a, b in zip(ms[old], ms[new])]
    print(f"old / new per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
