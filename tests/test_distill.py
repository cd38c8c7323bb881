"""distill.py: SFT of a dense student on a handful of traces overfits them (greedy decoding gives them back), an
interrupted run resumes to the uninterrupted run's weights, bad traces are clear errors before the run folder is
touched, and the default student base is pretrained on the teacher base's corpus (same tokenizer), next to which an
RL run on it is reported."""
import json
from contextlib import contextmanager

import pytest
import torch

import distill
from nanor1 import checkpoint
from nanor1.model import Transformer, get_config
from nanor1.rollout import rollout
from nanor1.sampler import SamplingParams
from nanor1.tasks import JsonlFormatError, make_task
from nanor1.templates import get_template

R1, ZERO = get_template("r1"), get_template("r1-zero")
TASK_KWARGS = {"n_terms": 2}
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer(bilingual_tokenizer):
    return bilingual_tokenizer


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer):
    """A tiny dense student (random) and a file of 8 R1-format traces of training questions."""
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    student = Transformer(get_config("tiny-dense", vocab_size=tokenizer.vocab_size, dim=64, head_dim=16,
                                     inter_dim=128, n_layers=2, max_seq_len=256))
    checkpoint.save(root / "student", student, tokenizer=tokenizer)
    task = make_task("arithmetic-bilingual", **TASK_KWARGS)
    problems = task.sample("train", 8, seed=0)
    traces = [{"question": p.question, "response": R1.response("\n".join(task.worked_solution(p)), p.answer,
                                                              summary=task.summary(p)), "source": "reasoning"}
              for p in problems]
    (root / "traces.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in traces))
    return root, problems, traces


def argv(root, out, *extra):
    return ["--student", str(root / "student"), "--traces", str(root / "traces.jsonl"), "--out", str(out),
            "--task-kwargs", json.dumps(TASK_KWARGS), "--batch-size", "8", "--lr", "3e-3", "--eval-problems", "3",
            "--eval-k", "2", "--max-new-tokens", "40", "--device", "cpu", *extra]


def test_sft_overfits_the_traces(inputs, tokenizer):
    root, problems, traces = inputs
    results = distill.main(argv(root, root / "overfit", "--steps", "120"))
    rows = [json.loads(line) for line in (root / "overfit" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["lm_loss"] for r in rows if "lm_loss" in r]
    assert [r["step"] for r in rows if "lm_loss" in r] == list(range(1, 121))
    assert losses[0] > 3 and losses[-1] < 0.1, (losses[0], losses[-1])   # response tokens only, from ~6 (random)
    model, tok, _ = checkpoint.load(root / "overfit" / "checkpoint")
    assert checkpoint.read_extra(root / "overfit" / "checkpoint")["template"] == "r1"   # evaluate.py reads it
    ro = rollout(model, tok, problems, template=R1, params=SamplingParams(max_new_tokens=60, greedy=True))
    exact = sum(text == t["response"] for text, t in zip(ro.texts, traces))
    assert exact >= 6, (exact, ro.texts)
    # results: the held-out report and the compute (6 N D over the forward tokens of every step)
    assert {"pass@1", "cons@2", "format_rate", "truncation_rate", "repetition_rate", "language_consistency",
            "mean_length"} <= set(results["eval"])
    tokens = sum(r["tokens"] for r in rows if "tokens" in r)
    assert results["compute"]["train_tokens"] == tokens > 120 * 8 * 10
    assert results["compute"]["train_flops"] == 6 * model.num_params()["active_params"] * tokens
    assert results["traces"] == {"available": 8, "used": 8, "source/reasoning": 8}
    assert json.loads((root / "overfit" / "results.json").read_text())["compute"] == results["compute"]


def test_interrupted_run_resumes_to_the_same_weights(inputs, monkeypatch):
    root = inputs[0]
    distill.main(argv(root, root / "straight", "--steps", "6", "--max-traces", "5"))

    class StopAfter3:
        calls, signal = 0, "SIGINT"

        def check(self):
            self.calls += 1
            return self.calls == 3

    @contextmanager
    def fake_handler():
        yield StopAfter3()
    with monkeypatch.context() as m:
        m.setattr(distill, "interrupt_handler", fake_handler)
        assert distill.main(argv(root, root / "cut", "--steps", "6", "--max-traces", "5")) is None
    assert checkpoint.read_extra(root / "cut" / "checkpoint")["step"] == 3
    with pytest.raises(distill.RunFolderError, match="--resume"):         # a fresh run into a used folder
        distill.main(argv(root, root / "cut", "--steps", "6", "--max-traces", "5"))
    distill.main(argv(root, root / "cut", "--steps", "6", "--max-traces", "5", "--resume"))
    a, b = (checkpoint.load(root / d / "checkpoint")[0].state_dict() for d in ("straight", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (root / "straight" / "traces.jsonl").read_text() == (root / "cut" / "traces.jsonl").read_text()
    steps = [json.loads(line)["step"] for line in (root / "cut" / "metrics.jsonl").read_text().splitlines()
             if "lm_loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_bad_traces_are_clear_errors(inputs, tmp_path, monkeypatch):
    root, _, traces = inputs
    monkeypatch.chdir(tmp_path)                      # the default --traces (runs/r1/stage3/...) is missing here
    with pytest.raises(FileNotFoundError, match="python train_r1.py"):
        distill.main(["--student", str(root / "student"), "--out", str(tmp_path / "a")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(traces[0]) + "\n{not json\n")
    with pytest.raises(JsonlFormatError, match="bad.jsonl:2"):
        distill.main(argv(root, tmp_path / "b", "--traces", str(bad)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()   # nothing written for a bad input
    held_out = make_task("arithmetic-bilingual", **TASK_KWARGS).sample("test", 1, seed=1234)[0]
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"question": held_out.question, "response": "x"}) + "\n")
    with pytest.raises(distill.TraceError, match="held-out"):
        distill.main(argv(root, tmp_path / "c", "--traces", str(leak)))
    with pytest.raises(distill.TraceError, match="kept 0"):   # an untrained teacher: nothing passes the filter
        distill.main(argv(root, tmp_path / "d", "--teacher", str(root / "student"), "--teacher-prompts", "2",
                          "--teacher-k", "2", "--max-new-tokens", "8"))


def test_pretrain_argv_replays_a_recorded_run():
    import pretrain
    recorded = vars(pretrain.get_args(["--task", "arithmetic-bilingual", "--task-kwargs", '{"n_terms": 3}',
                                       "--p-general", "0.05", "--p-other-lang", "0.2", "--steps", "7"]))
    argv = distill.pretrain_argv(recorded, preset="tiny-dense", out="x")
    assert vars(pretrain.get_args(argv)) == {**recorded, "preset": "tiny-dense", "out": "x"}
    with pytest.raises(ValueError, match="--no-such-flag"):
        distill.pretrain_argv({**recorded, "no_such_flag": 1})
    # a base recorded before --practice-layout existed had its practice text at the document start
    del recorded["practice_layout"]
    assert vars(pretrain.get_args(distill.pretrain_argv(recorded)))["practice_layout"] == "document"
    # and one recorded before --cut-power existed kept a uniform share of the instructions
    del recorded["cut_power"]
    assert vars(pretrain.get_args(distill.pretrain_argv(recorded)))["cut_power"] == 1.0


def test_default_student_base_and_the_rl_comparison(inputs, tmp_path, monkeypatch):
    import pretrain
    import train_zero
    root, _, _ = inputs
    monkeypatch.chdir(tmp_path)
    pretrain.main(["--task", "arithmetic-bilingual", "--task-kwargs", json.dumps(TASK_KWARGS), "--n-docs", "100",
                   "--steps", "2", "--batch-size", "4", "--vocab-size", "300", "--eval-k", "0", "--eval-problems", "2",
                   "--max-new-tokens", "8", "--out", "teacher-base"])
    common = ["--traces", str(root / "traces.jsonl"), "--teacher-base", "teacher-base", "--task-kwargs",
              json.dumps(TASK_KWARGS), "--steps", "2", "--batch-size", "4", "--eval-problems", "2", "--eval-k", "2",
              "--max-new-tokens", "8", "--device", "cpu"]
    results = distill.main(common)                   # --student runs/base-dense: made on teacher-base's corpus
    cfg = json.loads((tmp_path / "runs" / "base-dense" / "config.json").read_text())
    assert cfg["attn"] == "gqa" and cfg["n_routed_experts"] == 0
    teacher, student = (checkpoint.read_extra(p)["pretrain_args"] for p in ("teacher-base", "runs/base-dense"))
    changed = {k for k in teacher if teacher[k] != student[k]}
    assert changed == {"preset", "out", "device"}, changed
    assert results["student"]["same_tokenizer_as_teacher"] is True
    # the paper's comparison: GRPO on the same student base, read back next to the distilled student
    train_zero.main(["--base", "runs/base-dense", "--out", "zero-dense", "--task", "arithmetic-bilingual",
                     "--task-kwargs", json.dumps(TASK_KWARGS), "--steps", "1", "--prompts-per-step", "2",
                     "--group-size", "2", "--eval-problems", "2", "--eval-k", "2", "--max-new-tokens", "8",
                     "--device", "cpu"])
    again = distill.main(common + ["--resume", "--compare-rl", "zero-dense"])
    assert again["eval"] == results["eval"]           # the finished run is not retrained or re-evaluated
    rl = again["rl"]
    assert rl["steps"] == 1 and rl["same_eval_settings"] and rl["template"] == "r1-zero"
    assert rl["compute"]["train_flops"] > 0 and "pass@1" in rl["eval"]
    with pytest.raises(FileNotFoundError, match="summary.json"):
        distill.rl_run_report(tmp_path / "runs", distill.get_args(common))
