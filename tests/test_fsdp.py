"""FSDP2 on CPU: two gloo processes on 127.0.0.1 against one process on the same global batch.

One spawn of two ranks does everything sharded (build, load, gathered generation, a training step, a DCP save);
the tests compare what they wrote with single-process references."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nanor1 import fsdp
from nanor1.checkpoint import load, save
from nanor1.model import Transformer, get_config, lm_loss
from nanor1.sampler import SamplingParams, generate, pack, token_logprobs
from nanor1.training import clip_grad, make_optimizer

CFG = dict(n_mtp=1)                       # the tiny MLA-MoE, with the MTP module (its own FSDP unit)
WORLD, ROWS, T = 2, 2, 24                 # 2 ranks x 2 rows = the single process's 4 rows
BATCH = torch.randint(1, 512, (WORLD * ROWS, T), generator=torch.Generator().manual_seed(0))
BATCH2 = torch.randint(1, 512, (WORLD * ROWS, T), generator=torch.Generator().manual_seed(1))
PROMPTS = [[[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14]]]   # per rank
NEW = [6, 11]                             # new tokens per rank: ranks decode a different number of steps
LR, WD, CLIP, GAMMA = 1e-3, 0.1, 0.05, 1e-3
# (Adam's first step is ~lr * sign(g), so a gradient of the wrong scale would still give the same update: the tests
# compare the clipped gradients too; and it amplifies float noise in gradients near eps, hence a small lr.)


def _step(model, opt, tokens):
    """One optimizer step on this rank's rows (equal row counts and full masks: local mean == global mean)."""
    model.train()
    loss, _ = lm_loss(model, tokens, torch.ones_like(tokens, dtype=torch.bool))
    loss.backward()
    norm = clip_grad(model, CLIP)
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in model.named_parameters()}
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.update_routing_bias(GAMMA)
    return loss.detach(), norm, grads


def _full_state(model) -> dict:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def _worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    device = fsdp.init_distributed("cpu", timeout_s=60)
    try:
        from torch.distributed.tensor import DTensor
        out = {}
        torch.manual_seed(0)
        model = fsdp.build_sharded(get_config("tiny", **CFG), device, mixed_precision=False,
                                   activation_checkpointing=True)   # recomputed blocks: same gradients
        out["init"] = _full_state(model)
        fsdp.load_weights(model, os.path.join(tmp, "ref"))
        out["loaded"] = _full_state(model)
        opt = make_optimizer(model, LR, WD)   # before any forward: a no-grad forward leaves the root gathered
        with fsdp.gathered(model):
            ro = generate(model, PROMPTS[rank], SamplingParams(max_new_tokens=NEW[rank], greedy=True))
        out["sharded_after"] = isinstance(model.layers[0].attn.wo.weight, DTensor)
        model.eval()               # (train mode would count routed tokens into the routers' loads)
        with torch.no_grad():      # the trainer's path: a normal FSDP forward (all-gathers per block)
            out["trainer_logp"] = token_logprobs(model, pack(ro.prompts, ro.tokens, ro.mask))
        out["tokens"], out["logp"] = ro.tokens, ro.logprobs
        loss, norm, out["grads"] = _step(model, opt, BATCH[rank * ROWS:(rank + 1) * ROWS])
        out["loss"] = fsdp.all_reduce_sum(loss.clone()) / WORLD
        out["norm"], out["stepped"] = norm, _full_state(model)
        fsdp.save_sharded(os.path.join(tmp, "dcp"), model, opt, step=1, extra={"data_pos": 4})
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(1)
    ref = Transformer(get_config("tiny", **CFG))
    save(tmp / "ref", ref)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp)), nprocs=WORLD, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # tiny tensors: a second intra-op thread only adds waiting on 2 cores
    yield tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    torch.set_num_threads(threads)


def _assert_close(a: dict, b: dict, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_build_sharded_init_equals_reset_parameters(run):
    _, outs = run
    torch.manual_seed(0)
    plain = Transformer(get_config("tiny", **CFG))
    torch.manual_seed(0)
    plain.reset_parameters()
    _assert_close(outs[0]["init"], plain.state_dict(), atol=0)
    assert not torch.equal(outs[0]["init"]["layers.1.ffn.w1"][0], outs[0]["init"]["layers.1.ffn.w1"][4])


def test_load_weights_reads_each_rank_its_rows(run):
    tmp, outs = run
    ref, _, _ = load(tmp / "ref")
    _assert_close(outs[0]["loaded"], ref.state_dict(), atol=0)
    _assert_close(outs[1]["loaded"], ref.state_dict(), atol=0)


def test_gathered_generation_equals_unsharded_and_trainer(run):
    tmp, outs = run
    ref, _, _ = load(tmp / "ref")
    for r, out in enumerate(outs):
        ro = generate(ref, PROMPTS[r], SamplingParams(max_new_tokens=NEW[r], greedy=True))
        assert torch.equal(out["tokens"], ro.tokens)
        torch.testing.assert_close(out["logp"], ro.logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(out["logp"], out["trainer_logp"], atol=1e-5, rtol=0)   # sampler == trainer
        assert out["sharded_after"]                         # gathered() gave the memory back


def test_training_step_equals_single_process(run):
    tmp, outs = run
    ref, _, _ = load(tmp / "ref")
    opt = make_optimizer(ref, LR, WD)
    loss, norm, grads = _step(ref, opt, BATCH)
    torch.testing.assert_close(outs[0]["loss"], loss, atol=1e-5, rtol=0)
    for k in grads:                                         # FSDP averages over ranks: the full-batch gradient
        torch.testing.assert_close(outs[0]["grads"][k], grads[k], atol=1e-8, rtol=1e-4, msg=k)
    assert abs(outs[0]["norm"] - norm) < 1e-5 and norm > CLIP          # clipping across shards really clipped
    _assert_close(outs[0]["stepped"], ref.state_dict(), atol=1e-5)    # incl. the routing bias (global loads)
    assert ref.layers[1].ffn.gate.bias.abs().sum() > 0
    _assert_close(outs[1]["stepped"], outs[0]["stepped"], atol=0)


def test_sharded_checkpoint_loads_at_world_size_1_and_resumes(run, tmp_path):
    tmp, outs = run
    model = Transformer(get_config("tiny", **CFG))
    opt = make_optimizer(model, LR, WD)
    info = fsdp.load_sharded(tmp / "dcp", model, opt)
    assert info == {"step": 1, "extra": {"data_pos": 4}, "world_size": 2, "rank_state": None}   # another world size
    _assert_close(model.state_dict(), outs[0]["stepped"], atol=0)
    ref, _, _ = load(tmp / "ref")                          # the uninterrupted single-process run: two steps
    ref_opt = make_optimizer(ref, LR, WD)
    _step(ref, ref_opt, BATCH)
    _step(ref, ref_opt, BATCH2)
    _step(model, opt, BATCH2)                              # the resumed one: its second step
    _assert_close(model.state_dict(), ref.state_dict(), atol=1e-5)
    fsdp.export_full(tmp / "dcp", tmp_path / "full")
    exported, _, _ = load(tmp_path / "full")
    _assert_close(exported.state_dict(), outs[0]["stepped"], atol=0)


def test_memory_planner():
    v3 = fsdp.plan(get_config("deepseek-v3"), gpus=256, seq=4096, batch=1)
    assert round(v3["params without MTP"] / 1e9, 1) == 671.0
    assert v3["weights (fp32 shards)"] == 4 * v3["params"] / 256
    assert v3["optimizer (AdamW m, v fp32)"] == 2 * v3["weights (fp32 shards)"]
    assert not v3["fits"]                                  # a 11.6B-param MoE layer gathered does not fit 80 GB
    assert any("expert" in a for a in v3["advice"]) and any("rollouts" in a for a in v3["advice"])
    tiny = fsdp.plan(get_config("tiny"), gpus=2, seq=512, batch=8)
    n = sum(p.numel() for p in Transformer(get_config("tiny")).parameters())
    assert tiny["params"] == n and tiny["fits"] and tiny["advice"] == []
    assert 0 < fsdp.plan(get_config("tiny"), gpus=2, seq=512, batch=8, ac=True)["activations"] < tiny["activations"]


def test_bad_input_is_refused_clearly(run, tmp_path):
    tmp, _ = run
    other = Transformer(get_config("tiny", n_mtp=0))
    with pytest.raises(ValueError, match="config"):
        fsdp.load_weights(other, tmp / "ref")                # another model's checkpoint
    with pytest.raises(ValueError, match="config"):
        fsdp.load_sharded(tmp / "dcp", other)
    with pytest.raises(ValueError, match="nanor1 checkpoint"):
        fsdp.load_weights(other, "tests/fixtures/qwen2_tied")  # an HF folder: convert it first
    with fsdp.gathered(other) as m:                          # a plain model passes through
        assert m is other


def test_memory_planner_cli(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["fsdp", "tiny", "--gpus", "2", "--seq", "256", "--batch", "4", "--ac"])
    fsdp.main()
    out = capsys.readouterr().out
    assert "optimizer (AdamW m, v fp32)" in out and "training fits" in out
