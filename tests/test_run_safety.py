"""Runs that do not lose a user's files, checkpoints or hours (train_zero.py end to end, tiny model, CPU): flags
checked before anything loads, bad data found up front with its file:line, a run folder resumed or refused but never
mixed, one metrics row per step across resumes, recovery from an interrupted save, the divergence guard, Ctrl-C."""
import json
import os
import shutil
import signal

import pytest
import torch

import train_zero
from nanor1 import checkpoint
from nanor1.templates import get_template
from nanor1.training import RunFolderError

torch.set_num_threads(1)
ZERO = get_template("r1-zero")


def run(base, out, *extra):
    return train_zero.main(["--base", str(base), "--out", str(out), "--task-kwargs", '{"n_terms": 3}',
                            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "12",
                            "--eval-every", "100", "--eval-problems", "2", "--eval-k", "2", "--save-every", "1",
                            "--device", "cpu", *extra])


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("flags, words", [
    (["--loss-agg", "foo"], "invalid choice"), (["--overlong", "masked"], "invalid choice"),
    (["--group-size", "1"], "group_size must be >= 2"), (["--save-every", "0"], "> 0"), (["--mu", "0"], "> 0"),
    (["--micro-batch", "0"], "> 0"), (["--beta", "-1"], ">= 0"), (["--eps-low", "2"], "eps_low"),
    (["--steps", "-3"], ">= 0"), (["--task-kwargs", "{bad"], "--task-kwargs"), (["--eval-top-p", "1.5"], "top-p"),
])
def test_bad_flags_fail_before_anything_loads(tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "no-such-base", tmp_path / "out", *flags)
    assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()                                  # nothing written, nothing loaded


def test_bad_task_file_is_refused_at_start_with_its_line(tmp_path, base):
    good = [{"problem": f"{a} + {b}", "answer": str(a + b)} for a in range(1, 6) for b in range(1, 4)]
    lines = [json.dumps(r) for r in good]
    lines.insert(3, json.dumps({"problem": "1 + " * 300 + "1", "answer": "301"}))     # longer than the context
    lines.insert(7, json.dumps({"problem": "2 + 2", "answer": "\\frac{1}{"}))         # a gold the grader cannot parse
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[:3]) + "\n")
    files = ["--task-file", str(tmp_path / "train.jsonl"), "--eval-file", str(tmp_path / "test.jsonl"), "--steps", "1"]
    with pytest.raises(SystemExit) as e:
        run(base, tmp_path / "a", *files)
    assert "train.jsonl:4" in str(e.value) and "train.jsonl:8" in str(e.value) and "2 problem(s)" in str(e.value)
    # dropped with a warning instead; the folder of the run that failed at start-up can be used again
    summary = run(base, tmp_path / "a", *files, "--skip-bad-problems")
    assert summary["final"]["pass@1"] >= 0


def test_run_folder_is_resumed_or_refused_never_mixed(tmp_path, base):
    out = tmp_path / "run"
    run(base, out, "--steps", "2")
    args_before = (out / "args.json").read_text()
    with pytest.raises(RunFolderError, match="--resume"):
        run(base, out, "--steps", "2", "--lr", "1e-3")                          # a fresh run into a used folder
    assert (out / "args.json").read_text() == args_before                          # the old run's record is intact
    run(base, out, "--steps", "3", "--resume")
    steps = [r["step"] for r in rows(out) if "reward" in r]
    assert steps == [1, 2, 3]                                                      # one row per step


def test_resume_after_the_last_save_still_evaluates(tmp_path, base, monkeypatch):
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the final save")
    with monkeypatch.context() as m:
        m.setattr(train_zero, "run_eval", lambda *a, **k: killed() if a[5] > 0 else {"pass@1": 0.0})
        with pytest.raises(KeyboardInterrupt):
            run(base, out, "--steps", "2")
    assert checkpoint.find(out / "checkpoint") is not None and not (out / "summary.json").exists()
    summary = run(base, out, "--steps", "2", "--resume")
    assert (out / "summary.json").exists() and "pass@1" in summary["final"]
    assert [r["step"] for r in rows(out) if "eval/pass@1" in r][-1] == 2


def test_resume_recovers_an_interrupted_save(tmp_path, base):
    out = tmp_path / "run"
    run(base, out, "--steps", "2")
    ck = out / "checkpoint"
    # what a crash between the two renames of the old save layout left: the previous checkpoint moved aside
    shutil.copytree(ck, out / ".checkpoint.tmp")
    os.replace(ck, out / ".checkpoint.old")
    run(base, out, "--steps", "3", "--resume")
    assert [r["step"] for r in rows(out) if "reward" in r] == [1, 2, 3]        # resumed at 2, did not restart


def test_divergence_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, base, monkeypatch):
    out = tmp_path / "run"
    real = train_zero.rl_step
    calls = {"n": 0}

    def collapsing(*args, **kwargs):
        metrics = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] <= 4:      # a healthy start, then the policy degenerates: no signal, reward 0
            return {**metrics, "reward": 0.8, "zero_variance_groups": 0.0}
        return {**metrics, "reward": 0.0, "zero_variance_groups": 1.0, "entropy": 0.0}
    monkeypatch.setattr(train_zero, "rl_step", collapsing)
    with pytest.raises(SystemExit, match="divergence guard") as e:
        run(base, out, "--steps", "20", "--save-every", "2")       # saves at 2, 4, 6; the collapse starts at 5
    saved = checkpoint.load(checkpoint.find(out / "checkpoint"))[2]["step"]
    assert saved == 4 and "step 4" in str(e.value), str(e.value)      # the last save before the collapse (step 5)
    assert checkpoint.read_extra(out / "checkpoint-diverged")["step"] == 6


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, base, monkeypatch, capsys):
    out = tmp_path / "run"
    real = train_zero.rl_step

    def interrupted(*args, **kwargs):
        metrics = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)           # as if the user pressed Ctrl-C during the step
        return metrics
    monkeypatch.setattr(train_zero, "rl_step", interrupted)
    assert run(base, out, "--steps", "5", "--save-every", "100") is None
    assert checkpoint.load(checkpoint.find(out / "checkpoint"))[2]["step"] == 1
    assert "continue with --resume" in capsys.readouterr().out
