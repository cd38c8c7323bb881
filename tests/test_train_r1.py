"""R1's four stages (train_r1.py) and their pieces: the language-consistency reward in both scripts, the
readability rule and rejection filter, the cold-start rewrite, SFT overfitting a handful of examples, and a smoke
run of all four stages at tiny step counts that resumes."""
import json
import random

import pytest
import torch

from nanor1 import checkpoint
from nanor1.model import Transformer, get_config
from nanor1.rewards import language_consistency_reward, readability, rejection_filter
from nanor1.rollout import rollout
from nanor1.sampler import SamplingParams
from nanor1.sft import collate, render, sft_loss
from nanor1.tasks import ArithmeticTask, GeneralTask, make_task
from nanor1.templates import get_template
from nanor1.training import make_optimizer

R1, ZERO = get_template("r1"), get_template("r1-zero")
torch.set_num_threads(1)


def problem(lang, terms=(3, 7, 5)):
    task = make_task("arithmetic-bilingual", n_terms=len(terms))
    key = (tuple(terms), lang)
    return task, task._problem(key, "train")


# ---------------------------------------------------------------------------------------------------------------
# the second language, the general tasks, the bilingual corpus


def test_bilingual_task_splits_by_sum_not_language():
    task = make_task("arithmetic-bilingual", n_terms=3)
    train, test = task.sample("train", task.count("train"), seed=0), task.sample("test", task.count("test"), seed=0)
    key = lambda p: tuple(sorted(p.data["terms"]))                                 # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in test}
    assert {p.data["lang"] for p in test} == {"en", "zh"}
    zh = next(p for p in test if p.data["lang"] == "zh")
    assert zh.question.startswith("计算 ")
    lines = task.worked_solution(zh)                 # opening sentence, bare running totals, closing sentence
    assert lines[0] == "我来把它们加起来。" and lines[-1] == f"所以总和是 {zh.answer}。"
    assert lines[1:-1] == ArithmeticTask.worked_solution(task, zh)
    mixed = task.worked_solution(zh, ("zh", "en"))
    assert mixed[0] == lines[0] and mixed[-1] == f"so the total is {zh.answer}." and mixed[1:-1] == lines[1:-1]
    with pytest.raises(ValueError, match="opening, closing"):
        task.worked_solution(zh, ("zh",))


def test_general_task_references_and_private_field():
    from nanor1.rewards import general_quality, private_leak
    general = GeneralTask()
    problems = general.mix("test", 10, seed=0)
    assert {p.data["task"] for p in problems} == {"copy", "reverse", "fact", "private", "greeting"}
    train_keys = {tuple(p.data["key"]) for p in general.mix("train", 500, seed=0)}
    assert not train_keys & {tuple(p.data["key"]) for p in problems}
    for p in problems:
        ref = general.reference_response(p, R1)
        assert general_quality(ref, p, R1) == 1.0 and private_leak(ref, p) == 0.0
        leak = R1.response(p.data["reasoning"] + "\n" + general.leak_line(p, random.Random(0)), "", summary=p.answer)
        assert general_quality(leak, p, R1) == 1.0 and private_leak(leak, p) == 1.0   # harm hidden in the reasoning


def test_bilingual_corpus_mixes_languages_and_default_corpus_has_none():
    import pretrain
    zh = lambda d: any("\u4e00" <= ch <= "\u9fff" for ch in d)                     # noqa: E731
    args = pretrain.get_args(["--n-docs", "400"])
    docs, _ = pretrain.build_corpus(make_task(args.task, **args.task_kwargs), args)
    assert not any(zh(pretrain.doc_text(d)) for d in docs)
    args = pretrain.get_args(["--n-docs", "400", "--task", "arithmetic-bilingual", "--p-general", "0.1"])
    docs, stats = pretrain.build_corpus(make_task(args.task, **args.task_kwargs), args)
    # the worked examples (practice documents in the template): framed in the question's language, start to end
    worked = [(d[0].split("User: ")[1], d[1]) for d in docs if not isinstance(d, str)]    # (question, completion)
    assert worked and all(("所以总和是" in r) == zh(q) != ("so the total is" in r) for q, r in worked)
    assert all(("我来" in r) == zh(q) != ("let me add" in r) for q, r in worked)
    docs = [d for d in docs if isinstance(d, str)]                         # the transcripts and general documents
    pairs = [d.split("User: ", 1)[1].split(". Assistant:") for d in docs if "User: " in d]   # (question, response)
    worked = [(q, ZERO.reasoning(r)) for q, r in pairs if " = " in (ZERO.reasoning(r) or "")]
    # the reasoning opens in the other language (--p-other-lang 0.3) or switches (--p-switch 0.15): ~40% in all
    off = [r for q, r in worked if language_consistency_reward(f"<think>{r}</think>", "zh" if zh(q) else "en", ZERO) < 1]
    assert 0.2 < len(off) / len(worked) < 0.6, len(off) / len(worked)
    assert any(zh(r) and "total" in r for r in off)         # some switch mid-way
    assert stats["docs_by_mode"]["general"] > 0 and any("The code of" in d for d in docs)
    general = [d for d in docs if d.startswith("Q: ") and " = " not in d]     # the general tasks as Q/A text
    held_out = {p.question for p in GeneralTask().mix("test", 500, seed=0)}
    assert general and not any(d.split("\n")[0][3:] in held_out for d in general)
    assert any(d.startswith("Q: Reverse the words:") for d in general)


# ---------------------------------------------------------------------------------------------------------------
# language consistency, readability, rejection filter


@pytest.mark.parametrize("template", [R1, ZERO], ids=["r1", "r1-zero"])
def test_language_consistency_on_pure_and_mixed_reasoning(template):
    en = "then 3 + 7 = 10\nthen 10 + 5 = 15"
    zh = "然后 3 + 7 = 10\n然后 10 + 5 = 15"
    mixed = "然后 3 + 7 = 10\nthen 10 + 5 = 15"                   # 2 CJK words, 1 Latin word
    c = {name: template.response(r, "15") for name, r in (("en", en), ("zh", zh), ("mixed", mixed))}
    assert language_consistency_reward(c["en"], "en", template) == 1.0
    assert language_consistency_reward(c["zh"], "zh", template) == 1.0
    assert language_consistency_reward(c["en"], "zh", template) == 0.0
    assert language_consistency_reward(c["zh"], "en", template) == 0.0
    assert language_consistency_reward(c["mixed"], "zh", template) == pytest.approx(2 / 3)
    assert language_consistency_reward(c["mixed"], "en", template) == pytest.approx(1 / 3)
    # the summary is not the reasoning: a Chinese summary does not change the English reasoning's score
    assert language_consistency_reward(R1.response(en, "15", summary="答案是 \\boxed{15}。"), "en", R1) == 1.0


def test_readability_rule():
    task, p = problem("zh")
    good = R1.response("\n".join(task.worked_solution(p)), "15", summary=task.summary(p))
    assert all(readability(good, "zh", R1).values())
    lines = task.worked_solution(p)
    bad = {
        "one_language": R1.response("\n".join(lines), "15", summary="The answer is \\boxed{15}."),  # summary in en
        "no_repetition": R1.response("\n".join(lines + lines[-1:]), "15", summary=task.summary(p)),
        "steps": R1.response("然后 " + "很" * 300, "15", summary=task.summary(p)),
        "well_formed": "<think>\n" + "\n".join(lines) + "\n</think>\n答案是 15。",
    }
    for check, completion in bad.items():
        result = readability(completion, "zh", R1)
        assert not result[check], (check, result)


def test_rejection_filter_keeps_only_correct_readable_single_language():
    task, zh = problem("zh")
    _, en = problem("en", (2, 4, 8))
    ok_zh = R1.response("\n".join(task.worked_solution(zh)), "15", summary=task.summary(zh))
    ok_en = R1.response("\n".join(task.worked_solution(en)), "14", summary=task.summary(en))
    wrong = R1.response("\n".join(task.worked_solution(zh)), "16", summary=task.summary(zh, "16"))
    mixed = R1.response("\n".join(task.worked_solution(zh, ["zh", "en"])), "15", summary=task.summary(zh))
    repeated = R1.response("然后 3 + 7 = 10\n然后 3 + 7 = 10\n然后 10 + 5 = 15", "15", summary=task.summary(zh))
    zero_format = ZERO.response("\n".join(task.worked_solution(zh)), "15")
    keep, stats = rejection_filter([ok_zh, ok_en, wrong, mixed, repeated, zero_format], [zh, en, zh, zh, zh, zh], R1)
    assert keep == [True, True, False, False, False, False]
    assert stats["kept"] == 2 and stats["correct"] == 4 and stats["fail/no_repetition"] == 1, stats


def test_cold_start_rewrite():
    from train_r1 import rewrite_r1
    task, p = problem("zh")
    zero = ZERO.response("\n".join(task.worked_solution(p)), "15")
    r1 = rewrite_r1(zero, p, task)
    assert r1 == "<think>\n我来把它们加起来。\n3 + 7 = 10\n10 + 5 = 15\n所以总和是 15。\n</think>\n答案是 \\boxed{15}。"
    assert R1.well_formed(r1) and R1.final_answer(r1) == "15"
    # a reasoning that drifted into English gets its fixed sentences back in the question's language (the paper's
    # post-processing of cold-start data); the numbers are kept as written, right or wrong
    drifted = ZERO.response("\n".join(task.worked_solution(p, ("en", "en"))), "15")
    assert rewrite_r1(drifted, p, task) == r1
    odd = ZERO.response("let me add them up.\n3 + 7 = 10\nhmm 10 + 5 = 15\nso the total is 16.", "16")
    assert rewrite_r1(odd, p, task) == ("<think>\n我来把它们加起来。\n3 + 7 = 10\nhmm 10 + 5 = 15\n所以总和是 16。\n"
                                        "</think>\n答案是 \\boxed{16}。")   # an unknown line stays: the filter drops it
    assert rewrite_r1(" The answer is 15.", p, task) is None            # nothing to rewrite


# ---------------------------------------------------------------------------------------------------------------
# SFT overfits a handful of examples; the same recipe makes the tiny "R1-Zero" checkpoint of the smoke test


TASK_KWARGS = {"n_terms": 2}


@pytest.fixture(scope="module")
def tokenizer(bilingual_tokenizer):
    return bilingual_tokenizer


def tiny_model(vocab_size, seed=0, dense=False):
    torch.manual_seed(seed)
    return Transformer(get_config("tiny", vocab_size=vocab_size, dim=64, n_layers=2, kv_lora_rank=32,
                                  inter_dim=128, moe_inter_dim=32, max_seq_len=256,
                                  n_routed_experts=0 if dense else 8))


def overfit(model, tokenizer, template, conversations, steps, lr=3e-3):
    examples = [render(tokenizer, template, q, r) for q, r in conversations]
    optimizer = make_optimizer(model, lr, 0.0)
    model.train()
    for step in range(steps):
        batch = [examples[i] for i in random.Random(step).sample(range(len(examples)), min(16, len(examples)))]
        loss, stats = sft_loss(model, *collate(batch, tokenizer.pad_id))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return stats["lm_loss"]


COLD_PROMPTS, SEED = 8, 1234      # stage 1 samples task.sample("train", --cold-prompts, seed=--seed + 1)


@pytest.fixture(scope="module")
def zero_data():
    """R1-Zero-format solutions of the questions stage 1 will sample, a quarter with mixed-language reasoning."""
    task = make_task("arithmetic-bilingual", **TASK_KWARGS)
    problems = task.sample("train", COLD_PROMPTS, seed=SEED + 1)
    other = {"en": "zh", "zh": "en"}
    langs = [(p.data["lang"],) * 2 if i % 4 else (p.data["lang"], other[p.data["lang"]]) for i, p in enumerate(problems)]
    return problems, [ZERO.response("\n".join(task.worked_solution(p, ls)), p.answer) for p, ls in zip(problems, langs)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, zero_data):
    """A tiny base (untrained) and a tiny "R1-Zero" checkpoint: the base SFT'd on a handful of R1-Zero-format
    solutions, so that it answers the questions stage 1 samples (and mixes languages on a quarter of them)."""
    root = tmp_path_factory.mktemp("r1")
    checkpoint.save(root / "base", tiny_model(tokenizer.vocab_size), tokenizer=tokenizer)
    problems, responses = zero_data
    zero = tiny_model(tokenizer.vocab_size)
    loss = overfit(zero, tokenizer, ZERO, [(p.question, r) for p, r in zip(problems, responses)], steps=150)
    checkpoint.save(root / "zero" / "checkpoint", zero, tokenizer=tokenizer, extra={"template": "r1-zero"})
    return root, zero, loss


def test_sft_overfits_a_handful_of_examples(inputs, tokenizer, zero_data):
    _, model, loss = inputs
    problems, responses = zero_data
    assert loss < 0.1, loss             # from ~6 (random) on the response tokens
    ro = rollout(model, tokenizer, problems, template=ZERO, params=SamplingParams(max_new_tokens=80, greedy=True))
    exact = sum(a == b for a, b in zip(ro.texts, responses))
    assert exact >= 6, (exact, ro.texts)   # greedy decoding reproduces (nearly) every training response


def test_all_four_stages_run_and_resume(inputs, zero_data):
    import train_r1
    root = inputs[0]
    out = root / "run"
    common = ["--base", str(root / "base"), "--zero", str(root / "zero"), "--out", str(out), "--device", "cpu",
              "--seed", str(SEED), "--task-kwargs", json.dumps(TASK_KWARGS), "--max-new-tokens", "64",
              "--cold-prompts", str(COLD_PROMPTS),
              "--cold-k", "2", "--sft-steps", "3", "--sft3-steps", "3", "--sft-batch", "8", "--rl-steps", "2",
              "--rl4-steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--rs-prompts", "8", "--rs-k", "2",
              "--rm-steps", "2", "--rm-pairs", "8", "--rm-batch", "4", "--eval-problems", "3", "--eval-k", "2",
              "--eval-general", "5", "--eval-every", "1", "--save-every", "1"]
    with pytest.raises(FileNotFoundError, match="--stage 1"):
        train_r1.main(common + ["--stage", "2"])                  # stage 2 without stage 1 says what to run
    summary = train_r1.main(common)
    assert set(summary) == {"stage1", "stage2", "stage3", "stage4", "seconds"}
    for n in (1, 2, 3, 4):
        extra = checkpoint.read_extra(out / f"stage{n}" / "checkpoint")
        assert extra["template"] == "r1" and extra["stage"] == n and extra["done"], extra
        assert (out / f"stage{n}" / "metrics.jsonl").stat().st_size > 0
    cold = [json.loads(line) for line in (out / "stage1" / "cold_start.jsonl").read_text().splitlines()]
    # rewritten into R1's format, the mixed-language ones (i % 4 == 0) with their sentences in the question's
    # language: every kept record is readable in its question's language
    mixed = {p.question for i, p in enumerate(zero_data[0]) if i % 4 == 0}
    assert cold and {r["question"] for r in cold} & mixed, (cold, mixed)
    assert all(readability(r["response"], r["lang"], R1)["one_language"] for r in cold)
    assert all(R1.well_formed(r["response"]) and "<answer>" not in r["response"] for r in cold)
    mix = [json.loads(line) for line in (out / "stage3" / "sft_mix.jsonl").read_text().splitlines()]
    assert {r["source"] for r in mix} == {"reasoning", "general"} or not [r for r in mix if r["source"] == "reasoning"]
    rows = [json.loads(line) for line in (out / "stage4" / "metrics.jsonl").read_text().splitlines()]
    assert any("rm_harmlessness/heldout_accuracy" in r for r in rows)
    final = [r for r in rows if "eval/general/rm_helpfulness" in r][-1]
    assert {"eval/general/rule_quality", "eval/general/rule_leak", "eval/general/rm_harmlessness"} <= set(final)
    again = train_r1.main(common)                              # a re-run skips the finished stages
    assert {k: again[k] for k in ("stage1", "stage4")} == {k: summary[k] for k in ("stage1", "stage4")}
    # resume: stage 2 to one more step continues from its checkpoint (step 2), not from stage 1
    train_r1.main(common + ["--stage", "2", "--rl-steps", "3"])
    steps = [json.loads(line)["step"] for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()
             if "reward" in json.loads(line)]
    assert steps == [1, 2, 3], steps
    assert torch.load(out / "stage2" / "checkpoint" / "train_state.pt", weights_only=False)["step"] == 3


def test_questions_from_jsonl_files(inputs, zero_data, tmp_path):
    """--task-file / --eval-file: the same questions as JSONL records (as an HF base with a benchmark would use)."""
    import train_r1
    root = inputs[0]
    problems = zero_data[0]
    rows = [{"problem": p.question, "answer": p.answer, "lang": p.data["lang"]} for p in problems]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:3]))
    common = ["--base", str(root / "base"), "--zero", str(root / "zero"), "--device", "cpu", "--seed", str(SEED),
              "--max-new-tokens", "64", "--cold-prompts", str(len(rows)), "--cold-k", "2", "--sft-steps", "2",
              "--sft-batch", "4", "--eval-problems", "3", "--eval-k", "2", "--stage", "1"]
    with pytest.raises(SystemExit):
        train_r1.get_args(common + ["--task-file", str(train)])                         # no --eval-file
    summary = train_r1.main(common + ["--task-file", str(train), "--eval-file", str(test), "--out", str(tmp_path / "r")])
    cold = [json.loads(line) for line in (tmp_path / "r" / "stage1" / "cold_start.jsonl").read_text().splitlines()]
    assert cold and {r["question"] for r in cold} <= {r["problem"] for r in rows}
    assert 0 <= summary["stage1"]["pass@1"] <= 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + json.dumps({"problem": "?", "answer": "\\frac{1}{"}) + "\n")
    with pytest.raises(SystemExit, match="bad.jsonl:9"):
        train_r1.main(common + ["--task-file", str(bad), "--eval-file", str(test), "--out", str(tmp_path / "r2")])


# ---------------------------------------------------------------------------------------------------------------
# under torchrun: two gloo processes on 127.0.0.1


def _dp_worker(rank, port, runs):
    import os
    from nanor1 import fsdp
    import train_r1
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    fsdp.init_distributed("cpu", timeout_s=120)
    try:
        for argv in runs:
            train_r1.main(argv)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")   # DCP loading in one process: intended
def test_all_four_stages_data_parallel(inputs):
    """Every stage with 2 ranks (FSDP policy, sharded data sampling and evaluation, DCP saves), then stage 2 resumed
    at 2 ranks and again in one process. Stage 1 equals the one-process stage 1: the same cold-start records (the
    samples do not depend on the number of ranks), the same SFT step up to float rounding. (One step: the MoE
    routers also count padding tokens, and each rank pads its rows to its own longest, so the routing-bias updates,
    and from the next step the weights, differ by more than rounding.)"""
    import socket
    import torch.multiprocessing as mp
    import train_r1
    root = inputs[0]
    common = lambda out: ["--base", str(root / "base"), "--zero", str(root / "zero"), "--out", str(out),  # noqa: E731
                          "--device", "cpu", "--seed", str(SEED), "--task-kwargs", json.dumps(TASK_KWARGS),
                          "--max-new-tokens", "64", "--cold-prompts", str(COLD_PROMPTS), "--cold-k", "2",
                          "--sft-steps", "1", "--sft3-steps", "2", "--sft-batch", "8", "--rl-steps", "1",
                          "--rl4-steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--rs-prompts", "8",
                          "--rs-k", "2", "--rm-steps", "1", "--rm-pairs", "4", "--rm-batch", "4",
                          "--eval-problems", "3", "--eval-k", "2", "--eval-general", "3", "--eval-every", "1",
                          "--save-every", "1", "--dynamic-sampling"]
    dp, one = root / "dp", root / "one"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(port, [common(dp), common(dp) + ["--stage", "2", "--rl-steps", "2"]]), nprocs=2,
             join=True)
    torch.set_num_threads(1)
    for n in (1, 2, 3, 4):
        extra = checkpoint.read_extra(dp / f"stage{n}" / "checkpoint")
        assert extra["stage"] == n and extra["done"], extra
        assert (dp / f"stage{n}" / "checkpoint-sharded").is_dir()
    # resume at 2 ranks, then in one process (from the sharded state): one row per step
    train_r1.main(common(dp) + ["--stage", "2", "--rl-steps", "3"])
    rows = [json.loads(line) for line in (dp / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]
    assert checkpoint.read_extra(dp / "stage2" / "checkpoint")["step"] == 3
    # stage 1 in one process: the same records and eval of R1-Zero, the same SFT up to rounding
    train_r1.main(common(one) + ["--stage", "1"])
    for name in ("cold_start.jsonl", "zero_eval.json"):
        assert (dp / "stage1" / name).read_text() == (one / "stage1" / name).read_text(), name
    a, _, _ = checkpoint.load(dp / "stage1" / "checkpoint")
    b, _, _ = checkpoint.load(one / "stage1" / "checkpoint")
    for k, v in b.state_dict().items():
        if not k.endswith("gate.bias"):      # (the routing bias moves by +-1e-3 per step, on padding counts too)
            torch.testing.assert_close(a.state_dict()[k], v, atol=1e-5, rtol=0, msg=k)
    stats = lambda run: [r for r in map(json.loads, (run / "stage1" / "metrics.jsonl").read_text()  # noqa: E731
                                        .splitlines()) if "lm_loss" in r]
    assert len(stats(dp)) == len(stats(one)) == 1
    for key in ("lm_loss", "grad_norm"):
        assert stats(dp)[0][key] == pytest.approx(stats(one)[0][key], rel=1e-5), key
