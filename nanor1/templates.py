"""
Conversation templates: how a question becomes a prompt, where the reasoning and the final answer sit in a
completion, and what ends generation. Everything that builds prompts (rollouts, evaluation, corpora, SFT) or reads
completions (the format and accuracy rewards, majority voting) goes through a Template, so no other file knows a tag.

Two templates, the two formats of the paper:

  r1-zero  (Table 1)  prompt:      "A conversation between User and Assistant. ... User: {question}. Assistant:"
                      completion:  " <think> reasoning </think> <answer> answer </answer>"
                      stops at:    "</answer>" (nothing after it is ever generated or trained on) or EOS
  r1       (sec 2.3)  prompt:      "<|user|>{question}<|assistant|>"   (the chat format of the cold-start data)
                      completion:  "<think>\\nreasoning\\n</think>\\nsummary", the summary ending with
                                   "The answer is \\boxed{answer}."
                      stops at:    EOS (the end of the assistant turn)

Why \\boxed{} marks R1's final answer: the summary is free text written for a reader, so the answer needs a marker
a rule can find without a tag the reader would see. \\boxed{} is what DeepSeek-R1 and its distilled models write
(the paper's evaluation prompt asks for it), what math graders and benchmarks expect, and it survives any
tokenizer; our grader already reads it (math_grader.extract_answer). Only the *last* box of the summary counts,
and the reasoning's boxes are ignored, so a box in a draft inside <think> earns nothing.

A Template answers five questions about a completion:
    well_formed(c)   the format reward: exactly the template's structure, each part non-empty
    final_answer(c)  the answer text the accuracy reward grades (a math answer, a Countdown equation), or None
    reasoning(c)     the chain of thought (what the language-consistency reward reads)
    summary(c)       what the user reads (R1's helpfulness reward model scores only this)
and builds well-formed completions for corpora and SFT: response(reasoning, answer).
"""
import re
from dataclasses import dataclass

from nanor1.math_grader import extract_answer
from nanor1.tokenizer import EOS, ROLE_TOKENS as ROLES

# ----------------------------------------------------------------------------------------------------------------
# R1-Zero (paper Table 1)

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)
_ZERO_FORM = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
_ZERO_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True)
class R1Zero:
    name: str = "r1-zero"
    stop_strings: tuple[str, ...] = ("</answer>",)

    def prompt(self, question: str) -> str:
        return R1_ZERO_TEMPLATE.format(prompt=question)

    def response(self, reasoning: str, answer: str) -> str:
        return f" <think> {reasoning} </think> <answer> {answer} </answer>"

    def well_formed(self, completion: str) -> bool:
        """Exactly "<think> reasoning </think> <answer> answer </answer>": each tag once, in order, parts non-empty,
        nothing before <think> or after </answer>."""
        if not isinstance(completion, str) or any(completion.count(tag) != 1 for tag in _ZERO_TAGS):
            return False  # missing, duplicated or nested tags
        m = _ZERO_FORM.fullmatch(completion)
        return bool(m and m.group(1).strip() and m.group(2).strip())

    def final_answer(self, completion: str) -> str | None:
        """The last <answer>...</answer> (a \\boxed{} inside it unwrapped); None without a closed answer tag."""
        if not isinstance(completion, str):
            return None
        i = completion.rfind("<answer>")
        if i < 0 or completion.find("</answer>", i) < 0:
            return None
        return extract_answer(completion)

    def reasoning(self, completion: str) -> str | None:
        return _between(completion, "<think>", "</think>")

    def summary(self, completion: str) -> str | None:
        return _between(completion, "<answer>", "</answer>")


# ----------------------------------------------------------------------------------------------------------------
# R1: a thinking block, then a readable summary that states the answer in \boxed{}

_BOX = "\\boxed{"


@dataclass(frozen=True)
class R1Chat:
    name: str = "r1"
    stop_strings: tuple[str, ...] = ()          # the assistant turn ends with EOS

    def prompt(self, question: str) -> str:
        return ROLES["user"] + question + ROLES["assistant"]

    def response(self, reasoning: str, answer: str, summary: str | None = None) -> str:
        summary = f"The answer is {_BOX}{answer}}}." if summary is None else summary
        return f"<think>\n{reasoning}\n</think>\n{summary}"

    def well_formed(self, completion: str) -> bool:
        """Nothing before <think>, each thinking tag once, non-empty reasoning, then a non-empty summary with exactly
        one \\boxed{} answer (and no R1-Zero answer tags)."""
        if not isinstance(completion, str) or completion.count("<think>") != 1 or completion.count("</think>") != 1:
            return False
        head, rest = completion.split("<think>")
        if head.strip() or "</think>" not in rest or "<answer>" in completion or "</answer>" in completion:
            return False
        reasoning, summary = rest.split("</think>")
        return bool(reasoning.strip()) and summary.count(_BOX) == 1 and self.final_answer(completion) is not None

    def final_answer(self, completion: str) -> str | None:
        """The summary's final answer: its last \\boxed{} (with boxes joined to it, "\\boxed{1} and \\boxed{2}", as
        math_grader.extract_answer reads them); None when the summary has no box (boxes in <think> do not count)."""
        summary = self.summary(completion)
        return extract_answer(summary) if summary is not None and _BOX in summary else None

    def reasoning(self, completion: str) -> str | None:
        return _between(completion, "<think>", "</think>")

    def summary(self, completion: str) -> str | None:
        """The text after the last </think>; None while the thinking block is not closed."""
        if not isinstance(completion, str) or (i := completion.rfind("</think>")) < 0:
            return None
        return completion[i + len("</think>"):]


def _between(text, open_: str, close: str) -> str | None:
    """The text between the first `open_` and the next `close` (or the end), or None without `open_`."""
    if not isinstance(text, str) or (i := text.find(open_)) < 0:
        return None
    j = text.find(close, i)
    return text[i + len(open_):j if j >= 0 else len(text)]


Template = R1Zero | R1Chat
TEMPLATES: dict[str, Template] = {"r1-zero": R1Zero(), "r1": R1Chat()}


def get_template(name: str) -> Template:
    """A template by name: "r1-zero" or "r1"."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True, eos: str = EOS) -> str:
    """Several turns [{"role", "content"}, ...] as "<|user|>...<|assistant|>...<|eos|>"; optionally open an assistant
    turn. R1Chat.prompt is the one-question case."""
    parts = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"message {i} needs role in {list(ROLES)} and a str content, got {m!r}")
        parts.append(ROLES[role] + content + (eos if role == "assistant" else ""))  # EOS ends an assistant turn
    if add_generation_prompt:
        parts.append(ROLES["assistant"])
    return "".join(parts)


if __name__ == "__main__":
    for t in TEMPLATES.values():
        c = t.response("3 + 7 = 10\n10 + 5 = 15", "15")
        print(f"[{t.name}] {t.prompt('3 + 7 + 5')!r}\n  -> {c!r}\n  well_formed={t.well_formed(c)} "
              f"final_answer={t.final_answer(c)!r} stops={t.stop_strings}")
