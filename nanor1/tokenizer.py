"""Tokenizer and prompt templates.

Two kinds of tokenizer meet here, behind one small class:
- a tiny byte-level BPE trained on the built-in tasks (`train_bpe`), for the CPU-sized models, and
- the `tokenizer.json` of a real checkpoint (DeepSeek, Qwen, Llama), loaded with `Tokenizer.load`.

The tiny BPE splits every digit into its own token (big tokenizers cut numbers into chunks of up to 3 digits; we
go down to 1): a tiny model must do column arithmetic, which is hopeless when "15" and "150" are unrelated tokens.
It is byte-level, so any text round-trips: decode(encode(s)) == s.

Special tokens of the tiny BPE, each a single token that is never split:
  <|bos|> <|eos|> <|pad|>                   sequence markers; `decode(ids, skip_special=True)` drops only these
  <|system|> <|user|> <|assistant|>         role markers of the R1 chat template (nanor1/templates.py)
  <think> </think> <answer> </answer>       the R1 output tags; decode always keeps them, since the rewards read them

The prompt templates that use these tokens (R1-Zero's Table 1, R1's chat format) are in nanor1/templates.py.

Deviation: `encode` never adds BOS/EOS (callers add `bos_id` themselves), and text that contains a special
token's spelling (e.g. "<think>") is encoded as that special token.
"""

import json
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS.values(), *TAGS]

# Without a tokenizer_config.json, try these spellings in order (ours, DeepSeek, Llama 3, Qwen, SentencePiece).
BOS_NAMES = [BOS, "<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "<s>"]
EOS_NAMES = [EOS, "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<|endoftext|>", "</s>"]
PAD_NAMES = [PAD, "<｜▁pad▁｜>", "<|finetune_right_pad_id|>", "<pad>"]


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the ids of its BOS/EOS/PAD tokens."""

    def __init__(self, tok: tokenizers.Tokenizer, bos_token: str | None, eos_token: str, pad_token: str | None = None):
        self.tok = tok
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token or eos_token  # no pad token (Llama 3): pad with EOS, masked out anyway
        self.bos_id = None if bos_token is None else self.token_id(bos_token)  # None: the model has no BOS (Qwen)
        self.eos_id = self.token_id(eos_token)
        self.pad_id = self.token_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of one token, by its exact spelling (e.g. "<think>")."""
        i = self.tok.token_to_id(token)
        if i is None:
            raise ValueError(f"token {token!r} is not in the vocabulary (size {self.vocab_size})")
        return i

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; skip_special drops BOS/EOS/PAD only (tags and role markers stay)."""
        ids = [int(i) for i in ids]  # also accepts a 1-D tensor or array
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        if skip_special:
            drop = {self.bos_id, self.eos_id, self.pad_id}
            ids = [i for i in ids if i not in drop]
        return self.tok.decode(ids, skip_special_tokens=False)

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json and a tokenizer_config.json naming bos/eos/pad, as HF folders do."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        config = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a folder holding tokenizer.json (and maybe tokenizer_config.json), or a tokenizer.json file."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer file at {file}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises a bare Exception ("EOF while parsing ...")
            raise ValueError(f"{file}: cannot read the tokenizer ({e}): the file is truncated or not a "
                             "tokenizers JSON file") from None
        config_file = file.parent / "tokenizer_config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"{config_file}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")

        def pick(key: str, names: list[str]) -> str | None:
            if key in config:  # "<s>", {"content": "<s>", ...} or null (Qwen has no BOS)
                value = config[key]
                return value["content"] if isinstance(value, dict) else value
            return next((n for n in names if tok.token_to_id(n) is not None), None)

        eos = pick("eos_token", EOS_NAMES)
        if eos is None:
            raise ValueError(f"{file}: no EOS token found (set eos_token in tokenizer_config.json); tried {EOS_NAMES}")
        return cls(tok, pick("bos_token", BOS_NAMES), eos, pick("pad_token", PAD_NAMES))


def train_bpe(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> Tokenizer:
    """Train the tiny byte-level BPE (single digits, R1 tags as special tokens) on `texts`."""
    n_base = 256 + len(SPECIAL_TOKENS)  # every byte is a token, so any text can be encoded
    if vocab_size < n_base:
        raise ValueError(f"vocab_size must be at least {n_base} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
                         f"got {vocab_size}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),  # "126" -> "1" "2" "6": merges never cross pre-tokens
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),  # GPT-2 word split, bytes as printable chars
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return Tokenizer(tok, BOS, EOS, PAD)


if __name__ == "__main__":
    texts = ["User: 3 + 7 + 5. Assistant: <think> 3 + 7 = 10\n10 + 5 = 15 </think> <answer> 15 </answer>"] * 20
    t = train_bpe(texts, vocab_size=300)
    s = texts[0]
    ids = t.encode(s)
    print(f"vocab {t.vocab_size}, {len(s)} chars -> {len(ids)} tokens, round-trip {t.decode(ids) == s}")
    print([t.decode([i]) for i in t.encode(" <think> 10 + 15 = 25 </think>")])
