"""speedrun.sh at toy sizes (SPEEDRUN_SMOKE=1): every stage's command runs, each reads what the one before wrote,
and the run ends with the table of every model and the time of every stage. (A rerun skips or resumes every
stage: checked by hand, left out here for time.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

from nanor1.tasks import make_task
from nanor1.templates import get_template

ROOT = Path(__file__).resolve().parent.parent


def test_speedrun_smoke(tmp_path):
    out = tmp_path / "speedrun"
    # an untrained R1-Zero solves nothing, so stage 1's rejection filter would keep no sample: seed its data
    r1, task = get_template("r1"), make_task("arithmetic-bilingual", n_terms=2)
    cold = out / "r1" / "stage1" / "cold_start.jsonl"
    cold.parent.mkdir(parents=True)
    cold.write_text("".join(json.dumps({"question": p.question, "source": "reasoning", "response": r1.response(
        "\n".join(task.worked_solution(p)), p.answer, summary=task.summary(p))}, ensure_ascii=False) + "\n"
        for p in task.sample("train", 4, seed=0)))
    env = {**os.environ, "SPEEDRUN_SMOKE": "1", "SPEEDRUN_OUT": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(ROOT / "speedrun.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = (out / "eval" / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 9, table                      # base, R1-Zero, 4 R1 stages, student base, its RL, distilled
    assert "| distill-checkpoint | r1 |" in table and "| zero-dense-checkpoint | r1-zero |" in table
    times = (out / "times.txt").read_text().splitlines()
    assert [line.split()[0] for line in times[1:]] == [str(i) for i in range(1, 8)], times
    distilled = json.loads((out / "distill" / "results.json").read_text())
    assert distilled["student"]["same_tokenizer_as_teacher"] and distilled["rl"]["same_eval_settings"]
    assert "RL only" in run.stdout and "total" in run.stdout.splitlines()[-1]
    # the speedrun's base is R1's base: the corpus flags train_r1.py would pretrain it with (pretrain.py defaults
    # for the rest), so the two never drift apart silently
    import pretrain
    import train_r1
    recorded = json.loads((out / "base-r1" / "extra.json").read_text())["pretrain_args"]
    expected = vars(pretrain.get_args(["--task", "arithmetic-bilingual", *train_r1.BASE_FLAGS]))
    corpus = ("task", "p_practice", "practice_layout", "cut_power", "p_guess", "p_plain", "p_steps", "p_check",
              "guess_acc", "slip_rate", "p_other_lang", "p_switch", "p_general", "seed", "preset")
    assert {k: recorded[k] for k in corpus} == {k: expected[k] for k in corpus}
