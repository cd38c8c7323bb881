"""GRPO end to end on CPU: a few steps really learn, and a resumed run continues exactly where it stopped."""
import json

import pytest
import torch

from nanor1 import checkpoint
from nanor1.grpo import GRPOConfig
from nanor1.model import Transformer, get_config
from nanor1.tasks import make_task
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe
from nanor1.training import make_optimizer
from train_zero import rl_step

ZERO = get_template("r1-zero")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    task = make_task("arithmetic", n_terms=3)
    texts = [ZERO.prompt(p.question) + ZERO.response("\n".join(task.worked_solution(p)), p.answer)
             for p in task.sample("train", 300, seed=0)]
    return train_bpe(texts, vocab_size=300)


def tiny_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    return Transformer(get_config("tiny", vocab_size=vocab_size, dim=64, n_layers=2, kv_lora_rank=32,
                                  inter_dim=128, moe_inter_dim=32, max_seq_len=256))


def digit_share(texts, problems):
    """A reward any policy can climb: the share of characters that are digits."""
    values = [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]
    return values, {"digits": values}


def test_grpo_steps_raise_the_mean_reward(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=0.0)
    problems = make_task("arithmetic", n_terms=3).sample("train", 4, seed=0)
    cfg = GRPOConfig(group_size=8, max_new_tokens=12, mu=2, minibatches=2, micro_batch=16)
    rewards = [rl_step(model, optimizer, tokenizer, ZERO, problems, digit_share, cfg, seed=step)["reward"]
               for step in range(15)]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards


def test_rl_step_with_kl_reports_kl_and_is_zero_at_start(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    ref = tiny_model(tokenizer.vocab_size)  # same seed: identical to the policy
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    problems = make_task("arithmetic", n_terms=3).sample("train", 2, seed=1)
    cfg = GRPOConfig(group_size=4, max_new_tokens=8, beta=0.04)
    m = rl_step(model, optimizer, tokenizer, ZERO, problems, digit_share, cfg, seed=0, ref=ref)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["logp_diff"] < 1e-4          # the sampler's log-probs are the trainer's
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    for key in ("entropy", "clip_frac", "zero_variance_groups", "time/generate", "time/update", "mean_length"):
        assert key in m


@pytest.mark.parametrize("replay", [False, True])
def test_rl_step_replays_the_samplers_moe_routing(tokenizer, replay):
    model = tiny_model(tokenizer.vocab_size)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    problems = make_task("arithmetic", n_terms=3).sample("train", 2, seed=2)

    def reward_that_moves_the_router(texts, problems):
        # runs between sampling and the update: a router change the trainer must not see when replaying
        torch.manual_seed(0)
        for moe in model.moe_layers():
            moe.gate.bias.normal_(0, 1.0)
        return digit_share(texts, problems)

    m = rl_step(model, optimizer, tokenizer, ZERO, problems, reward_that_moves_the_router,
                GRPOConfig(group_size=4, max_new_tokens=8, replay_routing=replay), seed=0)
    assert (m["logp_diff"] < 1e-4) == replay, m["logp_diff"]


def test_routing_replay_survives_dynamic_sampling(tokenizer):
    """Groups with equal rewards are dropped and refilled with longer questions (a wider prompt padding); the merged
    batch must still carry each row's own routing."""
    model = tiny_model(tokenizer.vocab_size)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    problems = make_task("arithmetic", n_terms=3).sample("train", 3, seed=3)
    flat = {problems[0].question, problems[2].question}                      # these groups get no variance

    def reward(texts, probs):
        torch.manual_seed(0)
        for moe in model.moe_layers():
            moe.gate.bias.normal_(0, 1.0)
        values = [0.0 if p.question in flat else v for v, p in zip(digit_share(texts, probs)[0], probs)]
        return values, {"digits": values}

    def refill(n):
        return make_task("arithmetic", n_terms=6).sample("train", n, seed=9)
    cfg = GRPOConfig(group_size=4, max_new_tokens=8, replay_routing=True, dynamic_sampling=True)
    m = rl_step(model, optimizer, tokenizer, ZERO, problems, reward, cfg, seed=0, refill=refill)
    assert m["sampled_groups"] > 3 and m["zero_variance_groups"] == 0, m
    assert m["logp_diff"] < 1e-4, m["logp_diff"]


def test_resume_gives_the_same_next_step(tmp_path, tokenizer):
    import train_zero
    base = tmp_path / "base"
    checkpoint.save(base, tiny_model(tokenizer.vocab_size), tokenizer=tokenizer)
    common = ["--base", str(base), "--task-kwargs", '{"n_terms": 3}', "--prompts-per-step", "2", "--group-size", "4",
              "--max-new-tokens", "12", "--eval-every", "100", "--eval-problems", "2", "--eval-k", "2",
              "--save-every", "1", "--lr", "1e-2", "--device", "cpu"]
    train_zero.main(common + ["--out", str(tmp_path / "a"), "--steps", "3"])
    train_zero.main(common + ["--out", str(tmp_path / "b"), "--steps", "2"])
    train_zero.main(common + ["--out", str(tmp_path / "b"), "--steps", "3", "--resume"])

    def step3(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        row = [r for r in rows if r.get("step") == 3 and "reward" in r][-1]
        return {k: v for k, v in row.items() if not k.startswith("time/") and "per_s" not in k}

    a, b = step3("a"), step3("b")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    wa = checkpoint.load(tmp_path / "a" / "checkpoint")[0].state_dict()
    wb = checkpoint.load(tmp_path / "b" / "checkpoint")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
