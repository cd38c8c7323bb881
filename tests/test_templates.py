"""Templates: the two formats of the paper, what each reads from a completion, and the stops a rollout uses."""
import pytest

from nanor1.rollout import prompt_ids, stops
from nanor1.tasks import make_task
from nanor1.templates import TEMPLATES, get_template
from nanor1.tokenizer import Tokenizer, train_bpe

ZERO, R1 = get_template("r1-zero"), get_template("r1")


@pytest.fixture(scope="module")
def tok():
    task = make_task("arithmetic", n_terms=3)
    texts = [t.prompt(p.question) + t.response("\n".join(task.worked_solution(p)), p.answer)
             for p in task.sample("train", 200, seed=0) for t in TEMPLATES.values()]
    return train_bpe(texts, vocab_size=320)


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_response_round_trips(template):
    c = template.response("3 + 7 = 10\n10 + 5 = 15", "15")
    assert template.well_formed(c)
    assert template.final_answer(c) == "15"
    assert template.reasoning(c).strip() == "3 + 7 = 10\n10 + 5 = 15"
    assert "15" in template.summary(c)
    assert get_template(template.name) is template


def test_each_template_reads_only_its_own_format():
    zero, r1 = ZERO.response("r", "4"), R1.response("r", "4")
    assert not ZERO.well_formed(r1) and ZERO.final_answer(r1) is None
    assert not R1.well_formed(zero) and R1.final_answer(zero) is None
    assert R1.summary(r1) == "\nThe answer is \\boxed{4}." and R1.summary("<think> unfinished") is None
    assert R1.final_answer("<think>\\boxed{4}</think> so four") is None        # a box in the reasoning is not the answer
    assert R1.final_answer(R1.response("r", "4", summary="I got \\boxed{4}. Done.")) == "4"
    with pytest.raises(ValueError, match="r1-zero"):
        get_template("chatml")


def test_stops_use_token_ids_when_the_tag_is_one_token(tok):
    assert stops(tok, ZERO) == {"stop_ids": (tok.eos_id, tok.token_id("</answer>")), "stop_strings": ()}
    assert stops(tok, R1) == {"stop_ids": (tok.eos_id,), "stop_strings": ()}


def test_stops_fall_back_to_text_for_multi_token_tags():
    """A real HF vocabulary spells "</answer>" with several tokens: the rollout must match it as text."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    raw = tokenizers.Tokenizer(models.BPE())
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.train_from_iterator(["hello </answer> world"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = Tokenizer(raw, None, "</s>")
    assert len(hf.encode("</answer>")) > 1
    assert stops(hf, ZERO) == {"stop_ids": (hf.eos_id,), "stop_strings": ("</answer>",)}


def test_prompt_ids(tok):
    ids = prompt_ids(tok, R1, "2 + 2")
    assert ids[0] == tok.bos_id and tok.decode(ids[1:]) == "<|user|>2 + 2<|assistant|>"
    assert tok.decode(prompt_ids(tok, ZERO, "2 + 2")[1:]).endswith("User: 2 + 2. Assistant:")
