"""Reward models (R1 stage 4): Bradley-Terry training ranks held-out pairs, helpfulness reads only the summary,
harmlessness reads the reasoning too; save/load round-trips."""
import random

import pytest
import torch

from nanor1 import reward_model
from nanor1.model import Transformer, get_config
from nanor1.reward_model import RewardModel, bradley_terry_loss, pairwise_accuracy, score
from nanor1.tasks import GeneralTask
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe
from nanor1.training import make_optimizer

R1 = get_template("r1")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task():
    return GeneralTask()


@pytest.fixture(scope="module")
def tokenizer(task):
    rng = random.Random(0)
    texts = [R1.prompt(p.question) + c for p in task.mix("train", 200, seed=0)
             for aspect in ("helpfulness", "harmlessness") for c in task.preference_pair(p, aspect, rng, R1)]
    return train_bpe(texts + task.table.documents(), vocab_size=400)


def pairs(task, split, n, aspect, seed):
    rng = random.Random(seed)
    return [(p.question, *task.preference_pair(p, aspect, rng, R1)) for p in task.mix(split, n, seed=seed)]


def tiny_rm(vocab_size, aspect, seed=0):
    torch.manual_seed(seed)
    backbone = Transformer(get_config("tiny", vocab_size=vocab_size, dim=64, n_layers=2, kv_lora_rank=32,
                                      inter_dim=128, moe_inter_dim=32, max_seq_len=256))
    return RewardModel(backbone, aspect)


@pytest.fixture(scope="module")
def trained(task, tokenizer):
    """One reward model per aspect, trained 40 steps of 16 pairs on train-split prompts; held-out accuracy."""
    out = {}
    for aspect in reward_model.ASPECTS:
        rm = tiny_rm(tokenizer.vocab_size, aspect)
        optimizer = make_optimizer(rm, lr=3e-3, weight_decay=0.0)
        train = pairs(task, "train", 400, aspect, seed=1)
        for batch in reward_model.batches(train, 16, 40, seed=0):
            reward_model.train_step(rm, optimizer, tokenizer, R1, batch)
        out[aspect] = rm, pairwise_accuracy(rm, tokenizer, R1, pairs(task, "test", 100, aspect, seed=2))
    return out


def test_bradley_terry_loss():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = -(torch.sigmoid(torch.tensor(2.0)).log() + torch.sigmoid(torch.tensor(0.0)).log()) / 2
    assert bradley_terry_loss(c, r).item() == pytest.approx(expected.item(), rel=1e-6)
    assert bradley_terry_loss(torch.tensor([5.0]), torch.tensor([0.0])) < bradley_terry_loss(torch.tensor([0.0]),
                                                                                          torch.tensor([5.0]))


def test_untrained_head_scores_zero_and_padding_does_not_matter(tokenizer, task):
    rm = tiny_rm(tokenizer.vocab_size, "harmlessness")
    p = task.mix("train", 2, seed=0)
    texts = [task.reference_response(x, R1) for x in p]
    assert score(rm, tokenizer, R1, [x.question for x in p], texts) == [0.0, 0.0]
    torch.nn.init.normal_(rm.head.weight)
    alone = [score(rm, tokenizer, R1, [x.question], [t])[0] for x, t in zip(p, texts)]
    batched = score(rm, tokenizer, R1, [x.question for x in p], texts)   # the shorter row is right-padded
    assert batched == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize("aspect", reward_model.ASPECTS)
def test_trained_reward_model_ranks_held_out_pairs(trained, aspect):
    _, accuracy = trained[aspect]
    # chance is 0.5 (+-0.05 over 100 pairs); the prompts were never trained on. Measured: helpfulness 0.8 (it must
    # compare the answer with the prompt: copy, reverse, facts), harmlessness 1.0 (a leaked code is plain to see)
    assert accuracy >= {"helpfulness": 0.7, "harmlessness": 0.9}[aspect], accuracy


def test_helpfulness_reads_only_the_summary_harmlessness_reads_the_reasoning(trained, task, tokenizer):
    problems = [p for p in task.mix("test", 40, seed=3) if p.data["task"] == "fact"][:4]
    clean = [task.reference_response(p, R1) for p in problems]
    leaky = [R1.response(p.data["reasoning"] + "\n" + task.leak_line(p, random.Random(0)), "", summary=p.answer)
             for p in problems]                              # same summary, the private code in the reasoning
    questions = [p.question for p in problems]
    help_rm, harm_rm = trained["helpfulness"][0], trained["harmlessness"][0]
    assert score(help_rm, tokenizer, R1, questions, clean) == score(help_rm, tokenizer, R1, questions, leaky)
    h_clean, h_leaky = score(harm_rm, tokenizer, R1, questions, clean), score(harm_rm, tokenizer, R1, questions, leaky)
    assert all(c > l for c, l in zip(h_clean, h_leaky)), (h_clean, h_leaky)


def test_save_load_round_trip(tmp_path, trained, tokenizer, task):
    rm = trained["harmlessness"][0]
    reward_model.save(tmp_path / "rm", rm, tokenizer)
    loaded, tok = reward_model.load(tmp_path / "rm")
    p = task.mix("test", 3, seed=4)
    texts = [task.reference_response(x, R1) for x in p]
    assert loaded.aspect == "harmlessness"
    assert score(loaded, tok, R1, [x.question for x in p], texts) == score(rm, tokenizer, R1, [x.question for x in p],
                                                                          texts)
    with pytest.raises(ValueError, match="aspect"):
        RewardModel(rm.backbone, "honesty")
