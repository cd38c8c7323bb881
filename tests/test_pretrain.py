"""pretrain.py: the forced-mode curve logged while training; dev/probe_base.py on the base it makes."""
import json
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
