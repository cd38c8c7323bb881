"""The stage scripts under torch.distributed on CPU (gloo, 127.0.0.1) against one process on the same global batch.

One spawn of two ranks does the in-process checks (a GRPO step, rollout.evaluate, evaluate.py, the pretraining loss
weighting); one test runs train_zero.py as two torchrun "nodes" joined by a c10d rendezvous, as a cluster would."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import evaluate as evaluate_py
from nanor1 import checkpoint, fsdp
from nanor1.grpo import GRPOConfig
from nanor1.model import Transformer, lm_loss
from nanor1.rollout import Rollouts, evaluate, fill_groups
from nanor1.sampler import Generation
from nanor1.sft import sft_loss
from nanor1.tasks import make_task
from nanor1.templates import get_template
from nanor1.training import make_optimizer
import train_zero
from train_zero import rl_step

ZERO = get_template("r1-zero")
WORLD = 2
PROBLEMS = make_task("arithmetic", n_terms=3).sample("train", 4, seed=0)      # 2 questions per rank
CFG = GRPOConfig(group_size=4, max_new_tokens=10, micro_batch=8)              # 2 micro-batches per rank
LR, SEED = 1e-3, 7
EVAL = dict(template=ZERO, k=2, max_new_tokens=8, seed=3)


def digit_share(texts, problems):
    """A deterministic reward with variance within groups."""
    values = [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]
    return values, {"digits": values}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_argv(base, out):
    return [str(base), "--problems", "5", "--k", "2", "--max-new-tokens", "8", "--shard-size", "2", "--n-boot", "50",
            "--device", "cpu", "--out", str(out)]


def zero_argv(base, out, *extra):
    return ["--base", str(base), "--out", str(out), "--task-kwargs", '{"n_terms": 3}', "--prompts-per-step", "2",
            "--group-size", "4", "--max-new-tokens", "8", "--eval-every", "100", "--eval-problems", "2",
            "--eval-k", "2", "--save-every", "1", "--device", "cpu", *extra]


def pretrain_batch(second_row=7):
    """Four documents of different lengths (rows with different token counts on each rank) that start with the same
    10 tokens, as the templated transcripts do: sft_loss runs such a prefix once. With a second row of 7 tokens only
    rank 1's rows can share it, so both ranks must fall back to the full forward (FSDP: as many forwards on each)."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, 300, (4, 20), generator=g)
    tokens[:, :10] = tokens[0, :10]
    mask = torch.arange(20) < torch.tensor([[20], [second_row], [12], [16]])     # [4, 20] right-padded
    return tokens, mask


def fake_rollouts(rewards: list[list[float]]) -> Rollouts:
    """Rollouts of len(rewards) groups with the given rewards (no model: one-token completions)."""
    n = sum(map(len, rewards))
    gen = Generation(prompts=[[1]] * n, tokens=torch.zeros(n, 1, dtype=torch.long), logprobs=torch.zeros(n, 1),
                     mask=torch.ones(n, 1, dtype=torch.bool), finish_reason=["stop"] * n, temperature=1.0)
    return Rollouts(problems=[f"q{i}" for i in range(len(rewards))], group_size=len(rewards[0]), gen=gen,
                    texts=[""] * n, rewards=torch.tensor([r for g in rewards for r in g]))


def refill_on_two_ranks(rank, max_refills):
    """Rank 0's groups are all informative, rank 1's none; rank 1's refills hold one informative group each.
    Returns (calls of more() as (n, attempt), groups kept, groups sampled)."""
    calls = []
    def more(n, attempt):  # noqa: E306
        calls.append((n, attempt))
        return fake_rollouts([[1.0, 0.0]] + [[0.0, 0.0]] * (n - 1)) if n else None
    first = fake_rollouts([[1.0, 0.0]] * 2 if rank == 0 else [[0.0, 0.0]] * 2)
    ro, sampled = fill_groups(first, more, max_refills)
    return calls, len(ro.problems), sampled


def _worker(rank, port, base, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    fsdp.init_distributed("cpu", timeout_s=120)
    try:
        out = {"refill": [refill_on_two_ranks(rank, m) for m in (3, 1)]}
        policy, tok, _ = checkpoint.load(base)
        fsdp.shard_model(policy, mixed_precision=False)
        optimizer = make_optimizer(policy, LR, 0.0)
        lo, hi = fsdp.share(len(PROBLEMS))
        out["metrics"] = rl_step(policy, optimizer, tok, ZERO, PROBLEMS[lo:hi], digit_share, CFG, seed=SEED,
                                 first_index=lo)
        out["stepped"] = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                          for k, v in policy.state_dict().items()}
        with fsdp.gathered(policy):
            out["eval"] = evaluate(policy, tok, PROBLEMS, **EVAL)
        evaluate_py.main(eval_argv(base, os.path.join(tmp, "eval2")))
        # pretraining's loss weighting: rows with different token counts on each rank
        model, _, _ = checkpoint.load(base)
        fsdp.shard_model(model, mixed_precision=False)
        for second_row in (7, 11):   # one rank may share a prefix / both do
            model.zero_grad(set_to_none=True)
            for m in model.moe_layers():
                m.gate.load.zero_()
            tokens, mask = (t[rank * 2:rank * 2 + 2] for t in pretrain_batch(second_row))
            loss, _ = sft_loss(model.train(), tokens, mask, shared_prefix=True)
            (loss * fsdp.token_share(mask[:, 1:])).backward()
            out[f"pretrain_grads{second_row}"] = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
            out[f"pretrain_loads{second_row}"] = [fsdp.all_reduce_sum(m.gate.load.clone()) for m in model.moe_layers()]
        # train_zero.py: one step, then --resume for a second (sharded checkpoint, each rank's RNG)
        train_zero.main(zero_argv(base, os.path.join(tmp, "resumed"), "--steps", "1"))
        train_zero.main(zero_argv(base, os.path.join(tmp, "resumed"), "--steps", "2", "--resume"))
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(base), str(tmp)), nprocs=WORLD, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    torch.set_num_threads(threads)


def test_grpo_step_at_world_size_2_equals_one_process(base, spawned):
    _, outs = spawned
    policy, tok, _ = checkpoint.load(base)
    optimizer = make_optimizer(policy, LR, 0.0)
    single = rl_step(policy, optimizer, tok, ZERO, PROBLEMS, digit_share, CFG, seed=SEED)
    dist = outs[0]["metrics"]
    assert dist == outs[1]["metrics"]                                    # every rank logs the same numbers
    assert dist.keys() == single.keys()
    for key in ("reward", "mean_length", "reward/digits", "zero_variance_groups", "sampled_groups", "loss",
                "entropy", "ratio_mean", "clip_frac", "grad_norm", "ratio_min", "ratio_max", "logp_diff"):
        assert dist[key] == pytest.approx(single[key], abs=1e-5), key
    assert single["zero_variance_groups"] < 1 and single["grad_norm"] > 0   # a step that really moved
    state = policy.state_dict()
    for name, value in outs[0]["stepped"].items():
        torch.testing.assert_close(value, state[name], atol=1e-5, rtol=0, msg=name)


def test_dynamic_sampling_refills_in_lockstep(spawned):
    """Each rank refills its own groups; a full rank still joins every refill round (more(0, ...): under FSDP it
    must take part in gathering the weights), and every rank keeps the shortest rank's number of groups."""
    _, outs = spawned
    (calls0, kept0, sampled0), (calls1, kept1, sampled1) = outs[0]["refill"][0], outs[1]["refill"][0]
    assert calls0 == [(0, 0), (0, 1)] and calls1 == [(2, 0), (1, 1)]
    assert kept0 == kept1 == 2 and (sampled0, sampled1) == (2, 5)
    (calls0, kept0, _), (calls1, kept1, _) = outs[0]["refill"][1], outs[1]["refill"][1]   # max_refills 1
    assert calls0 == [(0, 0)] and calls1 == [(2, 0)] and kept0 == kept1 == 1        # rank 1 found one: both keep 1
    assert refill_on_two_ranks(0, 3) == ([], 2, 2)                                   # one process: nothing to refill


def test_evaluation_at_world_size_2_equals_one_process(base, spawned, tmp_path):
    tmp, outs = spawned
    policy, tok, _ = checkpoint.load(base)
    torch.manual_seed(0)                     # rl_step moved the weights in the workers: evaluate the stepped ones
    policy.load_state_dict(outs[0]["stepped"])
    single = evaluate(policy, tok, PROBLEMS, **EVAL)
    assert outs[0]["eval"] == outs[1]["eval"] == single
    # evaluate.py: rank 0 scored once both ranks' shard files existed (3 shards: 2 on rank 0, 1 on rank 1)
    two = json.loads((tmp / "eval2" / "results.json").read_text())
    one = evaluate_py.main(eval_argv(base, tmp_path / "eval1"))
    assert two["models"][0]["metrics"] == one["models"][0]["metrics"]
    assert two["models"][0]["pass_at_k"] == one["models"][0]["pass_at_k"]
    assert len(list((tmp / "eval2").glob("*/samples-*.jsonl"))) == 3


def test_pretraining_loss_weighting_gives_the_full_batch_gradient(base, spawned):
    _, outs = spawned
    for second_row in (7, 11):
        model, _, _ = checkpoint.load(base)
        loss, _ = lm_loss(model.train(), *pretrain_batch(second_row))   # one process, one full forward
        loss.backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(outs[0][f"pretrain_grads{second_row}"][name], p.grad, atol=1e-6, rtol=1e-4,
                                       msg=name)
        # the routing-bias update's counts: the ranks pad their rows to other widths, and padding does not count
        for two, one in zip(outs[0][f"pretrain_loads{second_row}"], [m.gate.load for m in model.moe_layers()]):
            torch.testing.assert_close(two, one, atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")   # DCP loading in one process: intended
def test_train_zero_on_two_nodes_resumes_exactly(base, spawned, tmp_path):
    """Two torchrun launchers (one per "node", one rank each) meet at a c10d rendezvous on 127.0.0.1 and run two
    R1-Zero steps; the spawned ranks ran one step and then resumed for the second: the same step 2, the same weights."""
    tmp, _ = spawned
    port, out = free_port(), tmp_path / "zero"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "zero", "train_zero.py",
                               *zero_argv(base, out, "--steps", "2")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]

    def steps(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/") and "per_s" not in k}
                for r in rows if "reward" in r]
    straight, resumed = steps(out), steps(tmp / "resumed")
    assert [r["step"] for r in straight] == [r["step"] for r in resumed] == [1, 2]   # one row per step
    for key in straight[1]:
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-6, abs=1e-7), key
    model, _, _ = checkpoint.load(out / "checkpoint")                    # the single-process format, for sampling
    again, _, _ = checkpoint.load(tmp / "resumed" / "checkpoint")
    assert checkpoint.read_extra(out / "checkpoint")["step"] == 2
    plain = Transformer(model.cfg)
    info = fsdp.load_sharded(out / "checkpoint-sharded", plain)          # the sharded state, at world size 1
    assert info["step"] == 2 and info["world_size"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
        torch.testing.assert_close(again.state_dict()[k], v, atol=1e-6, rtol=0, msg=k)
    assert json.loads((out / "summary.json").read_text())["final"]["pass@1"] >= 0
