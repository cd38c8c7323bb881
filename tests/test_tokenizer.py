"""Tokenizer: byte-level round trip, single digits, special tokens, save/load of HF-style folders, templates."""

import json
import random

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from nanor1.tasks import ArithmeticTask, CountdownTask
from nanor1.templates import R1_ZERO_TEMPLATE, chat_prompt, get_template
from nanor1.tokenizer import EOS, SPECIAL_TOKENS, TAGS, Tokenizer, train_bpe

ZERO, R1 = get_template("r1-zero"), get_template("r1")


def corpus(n=300):
    """R1-Zero style texts built from the tasks, as the pretraining corpus will be."""
    texts = []
    for task in (ArithmeticTask(), CountdownTask()):
        for p in task.sample("train", n, seed=0):
            reasoning = "\n".join(task.worked_solution(p))
            texts.append(ZERO.prompt(p.question) + ZERO.response(reasoning, task.answer_text(p)))
    return texts


@pytest.fixture(scope="module")
def tok():
    return train_bpe(corpus(), vocab_size=400)


ROUND_TRIP = [
    "", " ", "  leading spaces", "trailing  ", "\n\nnewlines\n", "\ttab\r\n", "3 + 7 = 10\n10 + 5 = 15",
    "héllo wörld", "日本語のテキスト", "emoji 🎉👍🏽", "math $\\frac{1}{2}$ and \\boxed{42}",
    "  <think> x </think>",
    "<answer>(7 - 2) * 3</answer>", "<|bos|>a<|eos|><|pad|>", "-12,345.678e-9", "\x00\x7f control",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_random_unicode(tok):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 0x250)] + list(" \n\t日本語🎉€") + ["<think>", "</answer>", "123"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tok.decode(tok.encode(text)) == text


def test_digits_are_single_tokens(tok):
    # the corpus is full of "10", "15", "100": the BPE still must not merge digits
    text = "10 + 15 = 25, 100 * 12345 = 1234500"
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p)), pieces
    assert sum(p.isdigit() for p in pieces) == sum(c.isdigit() for c in text)


def test_bpe_learns_merges(tok):
    text = corpus(5)[0]
    assert tok.vocab_size <= 400
    assert len(tok.encode(text)) < 0.6 * len(text)  # the template words were merged


def test_training_is_deterministic():
    texts = corpus(50)
    a, b = train_bpe(texts, vocab_size=320), train_bpe(texts, vocab_size=320)
    assert a.tok.get_vocab() == b.tok.get_vocab()


def test_special_tokens_are_single(tok):
    for t in SPECIAL_TOKENS:
        assert tok.encode(t) == [tok.token_id(t)]
        assert tok.decode([tok.token_id(t)]) == t
    ids = tok.encode("a<think>b</think> <answer>3</answer>")
    assert [tok.token_id(t) for t in TAGS] == [i for i in ids if i in {tok.token_id(t) for t in TAGS}]
    assert len({tok.bos_id, tok.eos_id, tok.pad_id}) == 3


def test_skip_special_drops_only_bos_eos_pad(tok):
    body = "<think> 3 + 4 = 7 </think> <answer> 7 </answer>"
    ids = [tok.bos_id] + tok.encode(body) + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids, skip_special=True) == body
    assert tok.decode(ids) == "<|bos|>" + body + "<|eos|><|pad|><|pad|>"


def test_decode_accepts_tensors_and_rejects_bad_ids(tok):
    torch = pytest.importorskip("torch")
    ids = tok.encode("12 + 3")
    assert tok.decode(torch.tensor(ids)) == "12 + 3"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])


def test_errors(tok):
    with pytest.raises(ValueError, match="<nope>"):
        tok.token_id("<nope>")
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(TypeError):
        tok.encode(None)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load("/nonexistent/folder")


def test_save_load(tok, tmp_path):
    tok.save(tmp_path / "tk")
    for path in (tmp_path / "tk", tmp_path / "tk" / "tokenizer.json"):
        t2 = Tokenizer.load(path)
        assert (t2.bos_id, t2.eos_id, t2.pad_id, t2.vocab_size) == (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size)
        text = "<think> 9 + 8 = 17 </think> <answer> 17 </answer> ünï"
        assert t2.encode(text) == tok.encode(text) and t2.decode(t2.encode(text)) == text


def hf_folder(tmp_path, specials, config=None, name="hf"):
    """A minimal HF-style folder: a byte-level BPE with the given special tokens, and maybe a tokenizer_config.json."""
    byte_vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    t = tokenizers.Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(specials)
    folder = tmp_path / name
    folder.mkdir()
    t.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return folder, t


def test_load_deepseek_style_config(tmp_path):
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    config = {"add_bos_token": True,
              "bos_token": {"__type": "AddedToken", "content": bos, "lstrip": False, "special": True},
              "eos_token": {"__type": "AddedToken", "content": eos, "lstrip": False, "special": True},
              "pad_token": eos}
    folder, t = hf_folder(tmp_path, [bos, eos, "<think>"], config)
    k = Tokenizer.load(folder)
    assert (k.bos_id, k.eos_id, k.pad_id) == (t.token_to_id(bos), t.token_to_id(eos), t.token_to_id(eos))
    assert k.decode([k.bos_id] + k.encode("abc") + [k.eos_id], skip_special=True) == "abc"
    assert k.decode([k.bos_id]) == bos  # non-ASCII special tokens survive the byte-level decoder


def test_load_qwen_style_config_without_bos(tmp_path):
    folder, t = hf_folder(tmp_path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                          {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    k = Tokenizer.load(folder)
    assert k.bos_id is None
    assert (k.eos_id, k.pad_id) == (t.token_to_id("<|im_end|>"), t.token_to_id("<|endoftext|>"))


def test_load_without_config_uses_common_names(tmp_path):
    folder, t = hf_folder(tmp_path, ["<|begin_of_text|>", "<|end_of_text|>"])
    k = Tokenizer.load(folder / "tokenizer.json")
    assert (k.bos_id, k.eos_id) == (t.token_to_id("<|begin_of_text|>"), t.token_to_id("<|end_of_text|>"))
    assert k.pad_id == k.eos_id  # no pad token: pad with EOS


def test_load_errors_name_the_token(tmp_path):
    folder, _ = hf_folder(tmp_path, ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "<|missing|>"})
    with pytest.raises(ValueError, match="missing"):
        Tokenizer.load(folder)
    (folder / "tokenizer_config.json").unlink()
    Tokenizer.load(folder)  # falls back to <s> / </s>
    folder2, _ = hf_folder(tmp_path, ["<foo>"], name="no-eos")
    with pytest.raises(ValueError, match="EOS"):
        Tokenizer.load(folder2)


PAPER_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)


def test_r1_zero_template(tok):
    assert R1_ZERO_TEMPLATE == PAPER_TEMPLATE
    p = ZERO.prompt("3 + {4}")  # braces in the question are kept as they are
    assert p == PAPER_TEMPLATE.replace("{prompt}", "3 + {4}") and p.endswith("User: 3 + {4}. Assistant:")
    full = p + ZERO.response("3 + 4 = 7", "7")
    assert full.endswith("Assistant: <think> 3 + 4 = 7 </think> <answer> 7 </answer>")
    assert tok.decode(tok.encode(full)) == full


def test_chat_prompt(tok):
    reply = R1.response("2 + 2 = 4", "4")
    assert reply == "<think>\n2 + 2 = 4\n</think>\nThe answer is \\boxed{4}."
    assert R1.prompt("2+2?") == chat_prompt([{"role": "user", "content": "2+2?"}])
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": reply}, {"role": "user", "content": "3+3?"}]
    text = chat_prompt(msgs)
    assert text == "<|system|>Be brief.<|user|>2+2?<|assistant|>" + reply + EOS + "<|user|>3+3?<|assistant|>"
    assert chat_prompt(msgs, add_generation_prompt=False) == text[: -len("<|assistant|>")]
    ids = tok.encode(text)
    assert ids.count(tok.eos_id) == 1 and ids.count(tok.token_id("<|assistant|>")) == 2
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="role"):
        chat_prompt([{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="content"):
        chat_prompt([{"role": "user"}])
