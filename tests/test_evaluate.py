"""evaluate.py end to end on a tiny random checkpoint: outputs, resuming, shard invariance, clear errors for bad
input (missing file, malformed line, unknown task, no tokenizer, unparseable golds), and the scoring of records."""
import json

import pytest
import torch

import evaluate
import nanor1.rollout
from nanor1 import checkpoint
from nanor1.model import Transformer, get_config
from nanor1.tasks import JsonlFormatError, Problem, make_task
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random dense model with a BPE trained on R1-Zero transcripts, saved with its template."""
    task = make_task("arithmetic", n_terms=3)
    zero = get_template("r1-zero")
    texts = [zero.prompt(p.question) + zero.response("\n".join(task.worked_solution(p)), p.answer)
             for p in task.sample("train", 200, seed=0)]
    tok = train_bpe(texts, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=tok.vocab_size, dim=32, n_layers=1, attn="gqa", n_heads=2,
                                   n_kv_heads=1, head_dim=16, n_routed_experts=0, inter_dim=64, max_seq_len=256))
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(folder, model, tokenizer=tok, extra={"template": "r1-zero"})
    return folder


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


PROBLEMS = [{"id": "a", "problem": "1 + 2 + 3", "answer": "6"},
            {"id": "b", "question": "What is half of one?", "answer": "\\frac{1}{2}"},
            {"id": "c", "problem": "2 + 2", "answer": 4},
            {"id": "bad-gold", "problem": "?", "answer": "\\frac{1}{"}]


def run(ckpt, tmp_path, out="out", *extra):
    data = write_jsonl(tmp_path / "bench.jsonl", PROBLEMS)
    return evaluate.main([str(ckpt), "--data", str(data), "--k", "4", "--seeds", "2", "--greedy",
                          "--max-new-tokens", "6", "--shard-size", "2", "--n-boot", "200", "--out",
                          str(tmp_path / out), *extra])


def test_end_to_end(ckpt, tmp_path, capsys):
    results = run(ckpt, tmp_path)
    out = tmp_path / "out"
    s = results["settings"]
    # everything that decides the numbers is recorded
    assert (s["k"], s["seeds"], s["max_new_tokens"], s["temperature"], s["top_p"]) == (4, 2, 6, 0.6, 0.95)
    assert "math_equal" in s["grader"] and s["n_problems"] == 3
    assert s["unparseable_golds"] == [["bad-gold", "\\frac{1}{"]]
    assert "bad-gold" in capsys.readouterr().err                       # named, not silently scored as wrong
    (m,) = results["models"]
    assert m["template"] == "r1-zero"                                   # read from the checkpoint's extra.json
    assert list(m["pass_at_k"]) == ["1", "2", "4"]
    for name in ("pass@1", "cons@k", "pass@4", "greedy", "format", "length", "truncated"):
        x = m["metrics"][name]
        assert x["lo"] <= x["mean"] <= x["hi"], name
    assert m["metrics"]["truncated"]["mean"] > 0.5                      # 6 new tokens: nearly all cut off
    # per-sample records: 3 problems x 4 samples x 2 seeds, plus 3 greedy
    folder = out / m["name"]
    records = [json.loads(line) for f in sorted(folder.glob("samples-*.jsonl")) for line in f.read_text().splitlines()]
    assert len(records) == 24 and {r["problem_id"] for r in records} == {"a", "b", "c"}
    assert set(records[0]) >= {"problem_id", "seed", "sample", "completion", "answer", "correct", "length",
                               "finish_reason", "well_formed"}
    assert all(1 <= r["length"] <= 6 for r in records)
    assert len(list(folder.glob("greedy-*.jsonl"))) == 2               # shards of 2 problems: 2 greedy shards
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"][0]["metrics"] == json.loads(json.dumps(m["metrics"]))
    assert (out / "results.md").read_text().startswith("| model |")


def test_resume_skips_finished_shards(ckpt, tmp_path, monkeypatch):
    first = run(ckpt, tmp_path)
    folder = tmp_path / "out" / first["models"][0]["name"]
    shard = sorted(folder.glob("samples-seed1-*.jsonl"))[-1]
    shard.unlink()
    calls = []
    real = evaluate.sample_shard
    monkeypatch.setattr(evaluate, "sample_shard", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    again = run(ckpt, tmp_path)
    assert len(calls) == 1                                             # only the deleted shard is sampled again
    assert again["models"][0]["metrics"] == first["models"][0]["metrics"]   # same seeds, same samples
    with pytest.raises(ValueError, match="other settings"):
        run(ckpt, tmp_path, "out", "--temperature", "1.0")


def test_samples_do_not_depend_on_sharding(ckpt, tmp_path):
    """Each problem's seed comes from its id: the data-parallel seam (any shard layout gives the same samples)."""
    def completions(out, shard_size):
        data = write_jsonl(tmp_path / "bench.jsonl", PROBLEMS[:3])
        r = evaluate.main([str(ckpt), "--data", str(data), "--k", "3", "--max-new-tokens", "5", "--n-boot", "50",
                           "--shard-size", shard_size, "--out", str(tmp_path / out)])
        folder = tmp_path / out / r["models"][0]["name"]
        rows = [json.loads(x) for f in folder.glob("samples-*.jsonl") for x in f.read_text().splitlines()]
        return {(x["problem_id"], x["sample"]): x["completion"] for x in rows}
    assert completions("one", "1") == completions("all", "3")


def test_bad_input_is_a_clear_error(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate.main([str(ckpt), "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o1")])
    bad = write_jsonl(tmp_path / "bad.jsonl", [PROBLEMS[0], '{"problem": "1 + 1", "answer": ', PROBLEMS[2]])
    with pytest.raises(JsonlFormatError, match=r"bad\.jsonl:2"):
        evaluate.main([str(ckpt), "--data", str(bad), "--out", str(tmp_path / "o2")])
    with pytest.raises(ValueError, match="unknown task"):
        evaluate.main([str(ckpt), "--task", "chess", "--out", str(tmp_path / "o3")])
    only_bad = write_jsonl(tmp_path / "golds.jsonl", [PROBLEMS[3]])
    with pytest.raises(ValueError, match="no problems left"):
        evaluate.main([str(ckpt), "--data", str(only_bad), "--out", str(tmp_path / "o4")])
    bare = tmp_path / "no-tokenizer"
    model, _, _ = checkpoint.load(ckpt)
    checkpoint.save(bare, model)
    with pytest.raises(ValueError, match="no tokenizer"):
        evaluate.main([str(bare), "--data", str(write_jsonl(tmp_path / "ok.jsonl", PROBLEMS[:1])),
                       "--max-new-tokens", "4", "--out", str(tmp_path / "o5")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.main([str(tmp_path / "missing-ckpt"), "--data", str(tmp_path / "ok.jsonl"),
                       "--out", str(tmp_path / "o6")])


def test_score_hand_made_records():
    """score() on records whose verdicts are known: pass@k, cons@k (with a tie), format, length, truncation."""
    problems = [Problem("p", "q", "2", "math"), Problem("r", "q", "0.5", "math")]

    def rec(pid, i, answer, correct, fmt=True, length=10, reason="stop", seed=0):
        return dict(problem_id=pid, seed=seed, sample=i, answer=answer, correct=correct, well_formed=fmt,
                    length=length, finish_reason=reason)
    records = [rec("p", 0, "2", True), rec("p", 1, "3", False), rec("p", 2, None, False, fmt=False, reason="length"),
               rec("p", 3, "2", True, length=30),
               rec("r", 0, "1/2", True), rec("r", 1, "7", False), rec("r", 2, "8", False), rec("r", 3, "0.50", True)]
    scores = evaluate.score(records, problems, seeds=[0], k=4)
    assert scores["pass@1"].tolist() == [[0.5, 0.5]]
    assert scores["pass@2"][0] == pytest.approx([1 - 1 / 6, 1 - 1 / 6])   # C(2,2)/C(4,2) of pairs miss
    assert scores["pass@4"].tolist() == [[1.0, 1.0]]
    assert scores["cons@k"].tolist() == [[1.0, 1.0]]                    # "2" wins 2-1; 1/2 and 0.50 vote together
    assert scores["format"].tolist() == [[0.75, 1.0]]
    assert scores["length"].tolist() == [[15.0, 10.0]]
    assert scores["truncated"].tolist() == [[0.25, 0.0]]
    assert scores["readable"].tolist() == [[0.0, 0.0]] and "language" not in scores   # no problem names a language
    for i, r in enumerate(records):
        r.update(readable=i in (0, 4, 5), language=float(i % 2))
    scores = evaluate.score(records, problems, seeds=[0], k=4)
    assert scores["readable"].tolist() == [[0.25, 0.5]] and scores["language"].tolist() == [[0.5, 0.5]]
    records[7]["answer"] = "9"                                           # now 1/2, 7, 8, 9: a four-way tie
    assert evaluate.score(records, problems, seeds=[0], k=4)["cons@k"].tolist() == [[1.0, 0.25]]


def test_right_answers_are_scored_right(ckpt, tmp_path, monkeypatch):
    """With the sampler replaced by one that answers problem "a" right in k-1 of k samples (one spelling "6.0"),
    problem "b" wrongly and problem "c" without an answer tag, the records and metrics say exactly that."""
    from nanor1.sampler import Generation
    tok = checkpoint.load(ckpt)[1]
    zero = get_template("r1-zero")
    texts = {"a": [zero.response("1 + 2 = 3, 3 + 3 = 6", "6")] * 3 + [zero.response("6", "6.0")],
             "b": [zero.response("half", "2")] * 4, "c": [" <think> 2 + 2"] * 4}
    texts["a"][0] = zero.response("oops", "7")

    def fake_generate(model, prompts, params, *, group_size, seed, decode, record_routing, decode_mode):
        assert len(prompts) == 3                                         # one shard: problems a, b, c in order
        rows = [tok.encode(t) for pid in "abc" for t in texts[pid][:group_size]]
        T = max(map(len, rows))
        tokens = torch.tensor([r + [0] * (T - len(r)) for r in rows])
        mask = torch.tensor([[i < len(r) for i in range(T)] for r in rows])
        return Generation(prompts=[p for p in prompts for _ in range(group_size)], tokens=tokens,
                          logprobs=torch.zeros(tokens.shape), mask=mask,
                          finish_reason=["stop" if "</answer>" in tok.decode(r) else "length" for r in rows],
                          temperature=params.temperature)
    monkeypatch.setattr(nanor1.rollout, "generate", fake_generate)      # evaluate.py samples through rollout()
    data = write_jsonl(tmp_path / "bench.jsonl", [{**p, "lang": "en"} for p in PROBLEMS[:3]])
    results = evaluate.main([str(ckpt), "--data", str(data), "--k", "4", "--max-new-tokens", "40", "--n-boot", "100",
                             "--out", str(tmp_path / "out")])
    m = results["models"][0]["metrics"]
    assert m["pass@1"]["mean"] == pytest.approx((3 / 4 + 0 + 0) / 3)
    assert m["pass@4"]["mean"] == pytest.approx(1 / 3)
    assert m["cons@k"]["mean"] == pytest.approx(1 / 3)                 # only problem a: "6" (with "6.0") beats "7"
    assert m["format"]["mean"] == pytest.approx(8 / 12) and m["truncated"]["mean"] == pytest.approx(4 / 12)
    folder = tmp_path / "out" / results["models"][0]["name"]
    records = [json.loads(x) for f in folder.glob("samples-*.jsonl") for x in f.read_text().splitlines()]
    a = sorted((r for r in records if r["problem_id"] == "a"), key=lambda r: r["sample"])
    assert [r["answer"] for r in a] == ["7", "6", "6", "6.0"] and [r["correct"] for r in a] == [False, True, True, True]
    assert all(r["answer"] is None and not r["well_formed"] for r in records if r["problem_id"] == "c")
    # R1's language reward and the readability rule, per sample and averaged per problem
    assert [r["language"] for r in a] == [1.0, 0.0, 0.0, 0.0]            # "oops" is English; digits are neutral
    assert all(r["language"] == 1.0 for r in records if r["problem_id"] == "b")   # "half"
    assert [r["readable"] for r in a] == [True, True, True, True]
    by_problem = [sum(r["language"] for r in records if r["problem_id"] == pid) / 4 for pid in "abc"]
    assert m["language"]["mean"] == pytest.approx(sum(by_problem) / 3)
