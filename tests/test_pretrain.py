"""pretrain.py: the forced-mode curve logged while training; dev/probe_base.py on the base it makes."""
import json
import random
from pathlib import Path

import torch

import pretrain
import train_zero
from nanor1 import checkpoint


def test_eval_every_logs_forced_mode_without_changing_the_training_run(tmp_path, monkeypatch, capsys):
    common = ["--n-docs", "200", "--steps", "4", "--batch-size", "4", "--vocab-size", "300", "--eval-k", "0",
              "--eval-problems", "3", "--max-new-tokens", "8", "--device", "cpu"]
    pretrain.main([*common, "--out", str(tmp_path / "plain")])
    assert "forced-mode accuracy is 0.0%" in capsys.readouterr().out     # a 4-step base: warned, still saved
    pretrain.main([*common, "--eval-every", "2", "--out", str(tmp_path / "eval")])
    logged = [json.loads(line) for line in (tmp_path / "eval" / "pretrain_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "forced_mode_accuracy" in r] == [2]      # every 2 steps, the end apart
    a, _, _ = checkpoint.load(tmp_path / "plain")
    b, _, _ = checkpoint.load(tmp_path / "eval")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):   # weights and routing biases
        assert torch.equal(x, y), name
    # the probe of why a base fails in the template reads such a base (its four framings, each a share)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "dev"))
    import probe_base
    rows = probe_base.main([str(tmp_path / "plain"), "--problems", "3"])
    assert len(rows) == 4 and all(0 <= acc <= 1 for acc in rows.values())
    # R1-Zero warns before its first step, from the base's saved report
    capsys.readouterr()
    train_zero.main(["--base", str(tmp_path / "plain"), "--out", str(tmp_path / "zero"), "--steps", "1",
                     "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "100", "--eval-problems", "2",
                     "--eval-k", "1", "--max-new-tokens", "8", "--device", "cpu"])
    assert "forced-mode accuracy is 0.0%" in capsys.readouterr().out


def test_weak_base_warning_threshold():
    assert pretrain.weak_base_warning({"forced_mode_accuracy": 0.86}) is None
    assert pretrain.weak_base_warning({}) is None                          # an HF base: nothing measured
    assert "13.5%" in pretrain.weak_base_warning({"forced_mode_accuracy": 0.135})


def test_worked_examples_sit_in_the_template_at_varied_places_and_leave_the_mode_choice_untrained():
    from nanor1.sft import render_text
    from nanor1.tasks import make_task
    from nanor1.templates import get_template
    from nanor1.tokenizer import train_bpe
    zero = get_template("r1-zero")
    args = pretrain.get_args(["--n-docs", "800"])
    task = make_task(args.task, **args.task_kwargs)
    docs, stats = pretrain.build_corpus(task, args)
    worked = [d for d in docs if not isinstance(d, str)]
    assert len(worked) == stats["docs_by_mode"]["practice"] > 500          # --p-practice 0.8
    assert all(d.startswith(zero.prompt("")[:20]) for d in docs if isinstance(d, str))    # the transcripts: whole
    held_out = {p.question for p in task.sample("test", task.count("test"), seed=0)}
    tok = train_bpe([pretrain.doc_text(d) for d in docs], vocab_size=300)
    user_at, checks = [], 0
    for context, completion in worked:
        question = context.split("User: ")[1].split(". Assistant:")[0]
        assert question not in held_out
        # the context: the template's prompt with leading words of its instructions cut, then " <think>"
        full = zero.prompt(question) + " <think>"
        cut = len(full) - len(context)
        assert full.endswith(context) and (cut == 0 or full[cut - 1] == " "), context
        # the completion: the clean worked solution (no slip), a quarter with the reverse-order check
        terms = [int(t) for t in question.split(" + ")]
        lines = zero.reasoning(" <think>" + completion).strip().split("\n")
        assert lines[:4] == task.worked_solution(task._problem(tuple(terms), "train"))
        assert zero.well_formed(" <think>" + completion) and zero.final_answer(" <think>" + completion) == str(sum(terms))
        checks += "wait, let me check." in lines
        # rendering: trained on the completion after its first token only; the same tokens as the joined text
        ids, mask = pretrain.render_doc(tok, (context, completion))
        assert ids == render_text(tok, pretrain.doc_text((context, completion)))[0]
        n_context = 1 + len(tok.encode(context))                            # BOS + context
        assert mask == [False] * (n_context + 1) + [True] * (len(ids) - n_context - 1)
        assert tok.decode(ids[n_context - 1:n_context]) == "<think>"
        user_at.append(len(tok.encode(context[:context.rindex("User: ")])))   # tokens before the question
    assert 0.15 < checks / len(worked) < 0.35
    # the question's place from the document start varies over the whole template, the full template included
    assert min(user_at) <= 5 and max(user_at) >= 70
    assert sum(c == zero.prompt(c.split("User: ")[1].split(". Assistant:")[0]) + " <think>" for c, _ in worked) > 0
    # --practice-layout document: the previous recipe's untemplated practice text, trained on every token
    args = pretrain.get_args(["--n-docs", "800", "--practice-layout", "document"])
    docs, stats = pretrain.build_corpus(task, args)
    practice = [d for d in docs if d.startswith("Q: ")]
    assert all(isinstance(d, str) for d in docs) and len(practice) == stats["docs_by_mode"]["practice"]


def test_cut_power_sets_how_much_of_the_instructions_a_worked_example_keeps():
    from nanor1.tasks import make_task
    from nanor1.templates import get_template
    zero = get_template("r1-zero")
    task = make_task("arithmetic", n_terms=5)
    problems = task.sample("train", 3000, seed=0)
    words = zero.prompt(problems[0].question).split(" User:")[0].split(" ")   # the instructions before the question

    def kept_shares(power, seed=0):
        rng = random.Random(seed)
        shares = []
        for p in problems:
            context, completion = pretrain.in_cut_template(p, zero.response("x", "1"), rng, power)
            assert context.endswith(f"User: {p.question}. Assistant: <think>")
            assert completion == zero.response("x", "1")[len(" <think>"):]
            kept = context[:context.rindex("User: ")].split()
            assert kept == (words[len(words) - len(kept):] if kept else [])          # a suffix of the instructions
            shares.append(len(kept) / len(words))
        return shares

    # the share kept is u**power for u uniform: mean 1 / (power + 1); every cut from none to all occurs
    for power, mean in ((1.0, 1 / 2), (3.0, 1 / 4)):
        shares = kept_shares(power)
        assert abs(sum(shares) / len(shares) - mean) < 0.02, (power, sum(shares) / len(shares))
        assert min(shares) == 0 and max(shares) == 1
    assert sum(s >= 0.9 for s in kept_shares(3.0)) / len(problems) < 0.06              # the full place is rare
    assert pretrain.get_args([]).cut_power == 3.0
