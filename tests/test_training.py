"""Shared training pieces: schedule, decay groups, grad clipping, RNG resume, JSONL log, device, rank-0 helpers."""

import io
import json
import math
import random

import numpy as np
import pytest
import torch

from nanor1.training import (
    JsonlLogger,
    autocast,
    clip_grad,
    is_main,
    lr_at,
    make_optimizer,
    pick_device,
    print0,
    rng_state,
    seed_everything,
    set_lr,
    set_rng_state,
)


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
