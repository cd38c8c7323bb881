"""Shared training pieces: schedule, decay groups, grad clipping, RNG resume, JSONL log, device, rank-0 helpers."""

import argparse
import io
import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from nanor1.training import (
    DivergenceGuard,
    JsonlLogger,
    RunFolderError,
    autocast,
    clip_grad,
    is_main,
    lr_at,
    make_optimizer,
    pick_device,
    print0,
    prepare_run,
    rng_state,
    seed_everything,
    set_lr,
    set_rng_state,
)
from nanor1 import training


def test_lr_schedule_shape():
    kw = dict(max_lr=1e-3, warmup=10, total=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, **kw) for s in range(130)]
    warm = lrs[:10]
    assert warm[0] > 0
    assert np.allclose(np.diff(warm), 1e-4)                       # linear ramp
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)   # peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))        # never rises after warmup
    assert lrs[60] == pytest.approx((1e-3 + 1e-4) / 2)            # cosine midpoint
    assert lrs[110] == pytest.approx(1e-4) and lrs[129] == pytest.approx(1e-4)   # ends at, and stays at, min
    assert lr_at(0, max_lr=1.0, warmup=0, total=10) == pytest.approx(1.0)        # no warmup: start at peak


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight                        # tied
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, idx):
        return self.head(self.proj(self.norm(self.embed(idx))))


def test_decay_groups_split():
    model = Tiny()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    ids = lambda ps: {id(p) for p in ps}
    assert ids(decay["params"]) == ids([model.embed.weight, model.proj.weight])     # tied head counted once
    assert ids(no_decay["params"]) == ids([model.norm.weight, model.norm.bias, model.proj.bias])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.95) and opt.defaults["fused"]                  # fused on CPU and CUDA
    # one step moves trainable params and leaves the frozen ones alone
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.tensor([[1, 2, 3]])).square().mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("frozen"), n


def test_set_lr():
    opt = make_optimizer(Tiny(), lr=1e-3, weight_decay=0.1)
    set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-4]


def test_clip_grad_returns_pre_clip_norm():
    model = torch.nn.Linear(3, 2)
    model.weight.grad = torch.full((2, 3), 2.0)
    model.bias.grad = torch.tensor([3.0, 4.0])
    expected = math.sqrt(6 * 4 + 9 + 16)                             # 7.0
    assert clip_grad(model, max_norm=1.0) == pytest.approx(expected)
    after = math.sqrt(model.weight.grad.square().sum() + model.bias.grad.square().sum())
    assert after == pytest.approx(1.0, rel=1e-5)
    assert clip_grad(model.parameters(), max_norm=0) == pytest.approx(1.0, rel=1e-5)   # measure only
    assert clip_grad(model, max_norm=100.0) == pytest.approx(1.0, rel=1e-5)            # no-op below the limit
    model.bias.grad = torch.tensor([float("inf"), 0.0])
    assert not math.isfinite(clip_grad(model, max_norm=1.0))          # the skip-step signal
    assert clip_grad(torch.nn.Linear(2, 2), max_norm=1.0) == 0.0     # no grads yet


def draws():
    return random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_rng_state_round_trip():
    seed_everything(123)
    np.random.randn()                                                 # leaves a cached gaussian in numpy's state
    state = rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)                                            # as a checkpoint would store it
    first = draws()
    assert draws() != first
    set_rng_state(state)
    assert draws() == first
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    assert draws() == first


def test_seed_everything_reproduces():
    seed_everything(7)
    a = draws()
    seed_everything(7)
    assert draws() == a
    seed_everything(8)
    assert draws() != a


def test_jsonl_logger(tmp_path):
    path = tmp_path / "runs" / "x" / "metrics.jsonl"                 # parent dirs are created
    with JsonlLogger(path, enabled=True) as log:
        log.log(step=0, loss=torch.tensor(2.5), reward=np.float32(0.25), lens=torch.tensor([3, 4]), note="start")
        assert len(path.read_text().splitlines()) == 1              # flushed per line, readable while open
        log.log(step=1, loss=float("nan"))
    with JsonlLogger(path, enabled=True) as log:                     # a resumed run appends
        log.log(step=2, loss=1.0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"step": 0, "loss": 2.5, "reward": 0.25, "lens": [3, 4], "note": "start"}
    assert rows[1]["step"] == 1 and math.isnan(rows[1]["loss"])
    assert rows[2] == {"step": 2, "loss": 1.0}
    off = JsonlLogger(tmp_path / "off.jsonl", enabled=False)
    off.log(step=0)
    assert not (tmp_path / "off.jsonl").exists()


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(RuntimeError, match="MPS is not available"):
            pick_device("mps")


def test_autocast_is_fp32_on_cpu():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.float32


def test_rank0_helpers(capsys, monkeypatch, tmp_path):
    assert is_main()                                                 # no torch.distributed initialised
    print0("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"
    monkeypatch.setenv("RANK", "1")                                  # a torchrun worker before init
    assert not is_main()
    print0("quiet")
    assert capsys.readouterr().out == ""
    JsonlLogger(tmp_path / "r1.jsonl").log(step=0)                   # default: rank 0 writes, others do not
    assert not (tmp_path / "r1.jsonl").exists()


# ---- run safety: metrics across resumes, the run folder, flags, divergence, Ctrl-C ----

def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_jsonl_logger_resume_keeps_one_row_per_step(tmp_path):
    """A run killed after step 5 (checkpoint at 4) resumes at 4: rows 5 are dropped, not logged twice."""
    path = tmp_path / "metrics.jsonl"
    with JsonlLogger(path, enabled=True) as log:
        log.log(step=0, **{"eval/pass@1": 0.3})
        for step in range(1, 6):
            log.log(step=step, loss=float(step))
        log.log(step=4, **{"eval/pass@1": 0.5})   # eval row of the step that was saved
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')                  # torn by the kill
    with JsonlLogger(path, resume_step=4, enabled=True) as log:
        for step in range(5, 7):
            log.log(step=step, loss=10.0 + step)
    got = rows(path)
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4, 4, 5, 6]
    assert [r["loss"] for r in got if r["step"] in (5, 6)] == [15.0, 16.0]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())   # the atomic rewrite's temp is gone
    before = path.read_bytes()
    JsonlLogger(path, resume_step=100, enabled=True).close()            # nothing to drop: the file is untouched
    assert path.read_bytes() == before


def test_prepare_run_fresh_resume_or_refuse(tmp_path, monkeypatch):
    import nanor1.checkpoint as ck
    from nanor1.model import ModelConfig, Transformer
    out = tmp_path / "zero"
    assert prepare_run(out, resume=False, args={"lr": 1e-3, "out": out}) is False
    assert json.loads((out / "args.json").read_text()) == {"lr": 1e-3, "out": str(out)}

    # a fresh run into a used folder is refused, args.json untouched (it used to be overwritten, even by a failure)
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RunFolderError, match=r"already holds a run \(args\.json, metrics\.jsonl\); it has no "
                                             r"checkpoint.*another --out"):
        prepare_run(out, resume=False, args={"lr": 5.0})
    with pytest.raises(RunFolderError, match=r"--resume: .* no checkpoint at .*checkpoint"):
        prepare_run(out, resume=True, args={"lr": 5.0})
    assert json.loads((out / "args.json").read_text())["lr"] == 1e-3

    cfg = ModelConfig(vocab_size=16, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, attn="gqa",
                      inter_dim=16, n_routed_experts=0, max_seq_len=8, original_seq_len=8)
    ck.save(out / "checkpoint", Transformer(cfg), train_state={"step": 3})
    with pytest.raises(RunFolderError, match="pass --resume to continue it"):
        prepare_run(out, resume=False, args={"lr": 1e-3})
    monkeypatch.setattr(training.sys, "argv", ["train_zero.py", "--resume", "--lr", "5e-4"])
    assert prepare_run(out, resume=True, args={"lr": 5e-4, "out": str(out)}) is True
    assert prepare_run(out, resume=True, args={"lr": 5e-4, "out": str(out)}) is True
    assert json.loads((out / "args.json").read_text())["lr"] == 1e-3       # the first invocation's flags stay
    record = json.loads((out / "args_resume_2.json").read_text())
    assert record["changed"] == {"lr": [1e-3, 5e-4]} and record["argv"][1] == "--resume"

    # an interrupted save of the checkpoint is recovered, not mistaken for "nothing to resume"
    os.replace(out / "checkpoint", out / ".checkpoint.old")
    assert prepare_run(out, resume=True, args={}) is True and (out / "checkpoint" / "config.json").is_file()

    # --resume with nothing there starts fresh; allowed leftovers (a shell redirect) do not count as a run
    assert prepare_run(tmp_path / "new", resume=True, args={}) is False
    (tmp_path / "logged").mkdir()
    (tmp_path / "logged" / "run.log").write_text("")
    assert prepare_run(tmp_path / "logged", resume=False, args={}, fresh_ok=("*.log",)) is False


def parse(type_fn, value):
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("--flag", type=type_fn)
    return p.parse_args([f"--flag={value}"]).flag


@pytest.mark.parametrize("type_fn,good,bad,message", [
    (training.positive_int, [("3", 3)], ["0", "-3", "2.5", "x"], r"must be > 0|integer"),
    (training.nonnegative_int, [("0", 0)], ["-1"], r"must be >= 0"),
    (training.positive_float, [("1e-3", 1e-3)], ["0", "-1", "nan", "inf"], r"must be > 0|finite"),
    (training.nonnegative_float, [("0", 0.0)], ["-1e-9"], r"must be >= 0"),
    (training.fraction, [("0", 0.0), ("1", 1.0)], ["1.5", "-0.1"], r"must be in \[0.0, 1.0\]"),
    (training.in_range(0, 1, lo_open=True), [("0.2", 0.2)], ["0", "2"], r"must be in \(0, 1\]"),
    (training.json_dict, [('{"n_terms": 4}', {"n_terms": 4})], ["{n_terms: 4}", "[1]"], r"JSON"),
])
def test_flag_types_name_the_flag(type_fn, good, bad, message):
    for text, value in good:
        assert parse(type_fn, text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentError, match=rf"argument --flag: .*({message})"):
            parse(type_fn, text)


def healthy_run(seed, steps=300):
    """Noisy but healthy GRPO metrics: reward rising 0.25 -> 0.8, entropy falling, occasional flat groups."""
    rng = np.random.default_rng(seed)
    for t in range(1, steps + 1):
        trend = 0.25 + 0.55 * (1 - math.exp(-t / 40))
        yield {"step": t, "reward": float(np.clip(trend + rng.normal(0, 0.1), 0, 1.1)),
               "loss": float(rng.normal(-0.1, 0.15)), "grad_norm": float(rng.lognormal(-0.4, 0.4)),
               "entropy": float(0.2 * math.exp(-t / 30) + 0.02 + abs(rng.normal(0, 0.01))),
               "zero_variance_groups": float(rng.choice([0, 0.125, 0.25, 0.5]))}


def first_stop(guard, metrics):
    for m in metrics:
        if reason := guard.update(m):
            return m["step"], reason
    return None, None


def test_divergence_guard_is_quiet_on_healthy_runs():
    real = [r for r in rows(Path(__file__).resolve().parents[1] / "dev" / "r1zero_metrics.jsonl") if "reward" in r]
    assert len(real) == 40 and first_stop(DivergenceGuard(), real) == (None, None)
    for seed in range(5):
        assert first_stop(DivergenceGuard(), healthy_run(seed)) == (None, None), seed
    # a task too hard from the start: reward mostly 0, often no signal at all -- nothing learned, nothing lost
    rng = np.random.default_rng(0)
    hard = [{"step": t, "reward": float(rng.random() < 0.2) * 0.03, "grad_norm": 0.0, "loss": 0.0,
             "zero_variance_groups": 1.0, "entropy": 0.3} for t in range(1, 200)]
    assert first_stop(DivergenceGuard(), hard) == (None, None)
    # a solved task: all groups right (flat), reward at its maximum
    solved = list(healthy_run(0, 50)) + [{"step": t, "reward": 1.1, "grad_norm": 0.0, "loss": 0.0, "entropy": 0.01,
                                          "zero_variance_groups": 1.0} for t in range(51, 100)]
    assert first_stop(DivergenceGuard(), solved) == (None, None)
    # an LM loss with noise: the spike rule stays quiet
    lm = [{"step": t, "loss": 3.0 * math.exp(-t / 100) + 1 + 0.1 * rng.random()} for t in range(1, 500)]
    assert first_stop(DivergenceGuard(loss_spike=3.0), lm) == (None, None)


def test_divergence_guard_catches_collapses():
    # train_zero.py --lr 10: reward, loss and grad norm 0 from step 2 on, weights still finite
    lr10 = [{"step": 1, "reward": 0.239, "loss": -0.26, "grad_norm": 1.0, "entropy": 0.21, "zero_variance_groups": 0.0}]
    lr10 += [{"step": t, "reward": 0.0, "loss": 0.0, "grad_norm": 0.0, "entropy": 0.0, "zero_variance_groups": 1.0}
             for t in range(2, 40)]
    guard = DivergenceGuard()
    step, reason = first_stop(guard, lr10)
    assert step == 4 and "reward collapsed to 0.000 (from 0.239)" in reason and guard.bad_since == 2
    # the same without the flat-groups key: a zero gradient norm is the signal
    step, _ = first_stop(DivergenceGuard(), [{k: v for k, v in m.items() if k != "zero_variance_groups"} for m in lr10])
    assert step == 4
    # a slower collapse after 60 healthy steps, gradients never exactly 0
    rng = np.random.default_rng(1)
    slow = list(healthy_run(1, 60)) + [{"step": t, "reward": max(0.0, 0.7 - 0.1 * (t - 60)) + 0.02 * rng.random(),
                                        "grad_norm": 0.3, "loss": 0.0, "entropy": 0.05, "zero_variance_groups": 0.5}
                                       for t in range(61, 120)]
    step, reason = first_stop(DivergenceGuard(), slow)
    assert 60 < step <= 75 and "best 10-step mean" in reason
    # entropy collapse: one output for every sample, the reward halves
    ent = list(healthy_run(2, 30)) + [{"step": t, "reward": 0.2, "grad_norm": 0.1, "loss": 0.0, "entropy": 1e-5,
                                       "zero_variance_groups": 0.875} for t in range(31, 60)]
    step, reason = first_stop(DivergenceGuard(), ent)
    assert step == 33 and "entropy collapsed" in reason
    # non-finite gradients for 3 steps, and an LM loss spike
    nan = list(healthy_run(3, 10)) + [{"step": t, "reward": 0.3, "grad_norm": float("nan"), "loss": float("nan")}
                                      for t in range(11, 20)]
    assert first_stop(DivergenceGuard(), nan)[0] == 13
    lm = [{"step": t, "loss": 2.0 + 0.05 * (t % 3)} for t in range(1, 30)] + [{"step": 30, "loss": 9.0}]
    assert first_stop(DivergenceGuard(loss_spike=3.0), lm)[0] == 30


def test_interrupt_handler_first_sigint_asks_second_raises(capsys):
    before = signal.getsignal(signal.SIGINT)
    with training.interrupt_handler() as stop:
        assert not stop.check()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.check() and stop.signal == "SIGINT"
        assert capsys.readouterr().err.count("\n") == 2   # one line (after a newline that ends a progress bar)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before      # the previous handler is back
    with training.interrupt_handler() as stop:
        os.kill(os.getpid(), signal.SIGTERM)                # a cluster's preemption notice: stop cleanly too
        assert stop.requested and stop.signal == "SIGTERM"
def test_fused_adamw_equals_the_plain_one():
    """make_optimizer's fused AdamW (one kernel for all params, also on a CPU) takes the same steps as the loop."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = make_optimizer(models[0], lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW([{"params": [p for p in models[1].parameters() if p.dim() >= 2], "weight_decay": 0.1},
                               {"params": [p for p in models[1].parameters() if p.dim() < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(8, 6)
    for _ in range(5):
        for model, opt in ((models[0], fused), (models[1], plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
