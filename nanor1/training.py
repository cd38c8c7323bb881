"""Shared training pieces: device, seeds, bf16 autocast, AdamW with decay groups, LR schedule, grad clipping,
RNG state for exact resume, a JSONL metrics log, rank-0 printing, and what keeps a long run from losing work:
the run folder (`prepare_run`), flag checks (`positive_int`, `in_range`, `json_dict`...), a divergence guard and a
Ctrl-C handler.

Small plain functions used by pretrain.py, train_zero.py, train_r1.py and distill.py; each script keeps its own
loop. Choices made here (the R1 paper does not specify them for our scale):
- Weight decay applies to every parameter with 2+ dims (linear weights, embeddings, the output head) and not to
  1-D ones (biases, norm gains), as in nanoGPT. Embeddings are decayed because the head may be tied to them and a
  tied tensor can only sit in one group.
- LR: linear warmup, then cosine from max_lr down to min_lr_ratio·max_lr at `total` steps, flat after.
- bf16 autocast on CUDA only; CPU and MPS run in fp32, which keeps the CPU tests exact and simple.
- A non-finite gradient norm is reported, not raised: `clip_grad` returns it and the caller skips that step.
- A run folder is either a fresh run or the continuation of one, never a mix: `prepare_run` refuses a fresh run
  into a used folder, keeps the first args.json on resume (each resume is recorded next to it), and
  `JsonlLogger(resume_step=s)` drops the rows a killed run logged after its last checkpoint, so the metrics keep
  one row per step.
"""

import argparse
import contextlib
import fnmatch
import json
import math
import os
import random
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nanor1.fsdp import barrier, is_main  # noqa: F401  (rank, world size, is-main live there; is_main re-exported)


# ---- device, seeds, precision ----

def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda (cuda:LOCAL_RANK under torchrun), else mps, else cpu; an unavailable explicit device raises."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all CUDA devices too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- optimizer and schedule ----

def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
    """AdamW; decay on 2-D+ weights (incl. embeddings), none on 1-D params (biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]      # parameters() already dedups tied weights
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all params, on CUDA and (torch >= 2.4) on a CPU: 1.04-1.06x per tiny pretraining step there
    fused = bool(params) and {p.device.type for p in params} in ({"cuda"}, {"cpu"})
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_at(step: int, *, max_lr: float, warmup: int, total: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup over `warmup` steps to max_lr, then cosine to min_lr_ratio·max_lr at `total`, flat after."""
    min_lr = min_lr_ratio * max_lr
    if step < warmup:
        return max_lr * (step + 1) / warmup            # step 0 already moves (lr > 0), step warmup-1 hits max_lr
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)   # 0 -> 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every param group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad(model_or_params, max_norm: float) -> float:
    """Clip the global grad norm to max_norm (<= 0: measure only); return the pre-clip norm.

    A non-finite return (inf/NaN: an overflow or a bad batch) means: do not step; zero the grads and go on.
    The grads themselves are then NaN (torch scales them by max_norm / NaN).
    """
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):                   # FSDP2 / DTensor grads: the norm is a sharded DTensor
        norm = norm.full_tensor()
    return norm.item()


# ---- random state, for exact resume ----

def rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA) generator states; plain tensors/ints, so torch.load(weights_only=True) works.

    Each rank has its own state: save one per rank.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


# ---- logging, rank 0 only ----

def print0(*args, **kwargs) -> None:
    """print() on rank 0 only, flushed (logs of long runs are read while they run)."""
    if is_main():
        print(*args, **kwargs, flush=True)


def _plain(x):
    # tensors / numpy values -> python numbers or lists, which json can write
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, (np.ndarray, np.generic)):
        return x.item() if x.size == 1 else x.tolist()
    return x


class JsonlLogger:
    """Append one JSON object per line to `path`, flushed per line (plots read it live). Writes on rank 0 only.

    resume_step: the step of the checkpoint a resumed run starts from. Rows a killed run logged after it (step >
    resume_step) are dropped first, with the file rewritten atomically, so the replayed steps are not logged twice.
    A torn last line (a crash mid-write) is always dropped, so the next row starts on a line of its own.
    """

    def __init__(self, path, *, resume_step: int | None = None, enabled: bool | None = None):
        self.enabled = is_main() if enabled is None else enabled
        self.file = None
        if self.enabled:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file():
                _trim_jsonl(path, resume_step)
            self.file = open(path, "a")                # append: a resumed run continues the same file

    def log(self, **metrics) -> None:
        """Write one line, e.g. log(step=10, loss=2.3, reward=0.4); tensors become numbers."""
        if self.file is None:
            return
        self.file.write(json.dumps({k: _plain(v) for k, v in metrics.items()}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _trim_jsonl(path: Path, resume_step: int | None) -> None:
    """Drop a torn last line, and the rows with step > resume_step; rewrite atomically only if something goes."""
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop() != b""                          # the text after the last newline: empty unless torn
    keep = []
    for line in lines:
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):          # not a JSON object: not ours to judge, keep it
            step = None
        if resume_step is None or not isinstance(step, (int, float)) or step <= resume_step:
            keep.append(line)
    if not torn and len(keep) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(line + b"\n" for line in keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- the run folder: fresh or resumed, never a mix ----

class RunFolderError(RuntimeError):
    """A run folder that cannot be started or resumed as asked; the message says what to do instead."""


def prepare_run(out, *, resume: bool, args: dict, checkpoint=None, fresh_ok: tuple[str, ...] = ()) -> bool:
    """Start the run in `out` or continue the one there; returns True when resuming.

    - resume, and a checkpoint at `checkpoint` (default out/"checkpoint"; found with checkpoint.find, which repairs
      an interrupted save): the first args.json stays, this invocation is recorded as args_resume_<n>.json (with the
      flags that changed, also printed). The caller loads that checkpoint.
    - otherwise `out` must be missing or empty (names matching a glob of `fresh_ok`, e.g. "*.log" for a shell
      redirect into it, do not count): it is created, args.json written, False returned. --resume with nothing to
      resume starts fresh, so a job can always be (re)launched with --resume.
    - anything else raises RunFolderError: a fresh run into a used folder (pass --resume or choose another --out),
      or --resume into a folder with no checkpoint (a run that never saved: delete it or choose another --out).
    Validate every flag before calling it: args.json is written only here. Distributed: call on every rank after
    init_process_group; rank 0 repairs and writes, every rank returns the same answer.
    """
    from nanor1.checkpoint import find  # training.py stays importable without the model code

    out = Path(out)
    ckpt = Path(checkpoint) if checkpoint is not None else out / "checkpoint"
    if is_main() and resume:
        find(ckpt)                                     # repair first, so that every rank sees the same folder
    barrier()
    found = find(ckpt) if resume else None             # no repair left to do: read-only on every rank
    used = sorted(f.name for f in out.iterdir()
                  if not any(fnmatch.fnmatch(f.name, g) for g in fresh_ok)) if out.is_dir() else []
    shown = ", ".join(used[:6]) + (f" and {len(used) - 6} more" if len(used) > 6 else "")
    if found is None and used:
        if resume:
            raise RunFolderError(f"--resume: {out} holds {shown} but no checkpoint at {ckpt} (a run that stopped "
                                 "before its first save?); delete it or choose another --out")
        hint = "pass --resume to continue it, or" if find(ckpt) is not None else "it has no checkpoint to resume;"
        raise RunFolderError(f"{out} already holds a run ({shown}); {hint} choose another --out (or delete it)")
    barrier()                                         # everyone has looked before rank 0 writes
    record = json.loads(json.dumps(args, default=str))  # as args.json will hold it (paths as text, tuples as lists)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        if found is None:
            if resume:
                print0(f"--resume: nothing to resume in {out}, starting fresh")
            _write_json(out / "args.json", record)
        else:
            first = json.loads((out / "args.json").read_text()) if (out / "args.json").is_file() else {}
            changed = {k: [first.get(k), v] for k, v in record.items() if first.get(k) != v}
            n = 1 + sum(1 for _ in out.glob("args_resume_*.json"))
            _write_json(out / f"args_resume_{n}.json", {"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                        "argv": sys.argv, "changed": changed, "args": record})
            print0(f"resuming {out} from {found}" + (f"; changed flags: {changed}" if changed else ""))
    barrier()
    return found is not None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---- argparse types: a bad flag fails at once, naming the flag ("argument --lr: must be > 0, got '0'") ----

def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def in_range(lo=None, hi=None, *, kind=float, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type accepting `kind` values in [lo, hi] (open ends with lo_open/hi_open; None: unbounded)."""
    def parse(text: str):
        value = _number(text, kind)
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high:
            if hi is None:
                rule = f"{'>' if lo_open else '>='} {lo}"
            elif lo is None:
                rule = f"{'<' if hi_open else '<='} {hi}"
            else:
                rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value
    parse.__name__ = f"{kind.__name__}_in_range"
    return parse


positive_int = in_range(0, kind=int, lo_open=True)
nonnegative_int = in_range(0, kind=int)
positive_float = in_range(0.0, lo_open=True)
nonnegative_float = in_range(0.0)
fraction = in_range(0.0, 1.0)                       # a probability or share: [0, 1]


def json_dict(text: str) -> dict:
    """An argparse type for a JSON object flag such as --task-kwargs '{"n_terms": 4}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno}): {text!r}; "
                                         """expected an object such as '{"n_terms": 4}'""") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"n_terms\": 4}}', got {text!r}")
    return value


# ---- divergence guard ----

class DivergenceGuard:
    """Says when a run's learning signal has died, so the loop can stop before it saves the broken model.

    `update(metrics)` takes each step's metrics dict and returns None, or the reason to stop. Each rule reads only
    its keys (reward_key, loss_key, grad_key, entropy_key, flat_key); a key missing from the metrics disables it.
      non-finite:  loss or grad norm NaN/inf `patience` steps in a row (clip_grad skips those updates: the run is
                   no longer training).
      dead signal: no learning signal `patience` steps in a row (every group's samples scored alike: flat_key
                   "zero_variance_groups" == 1, or, without that key, a grad norm of exactly 0) while their mean
                   reward is below `collapse` x the mean reward of the `window` steps before, itself >= min_reward.
                   The steps before may be fewer than `window`, down to one. This is --lr 10: from step 2 reward,
                   loss and grad norm are 0 ("waitwait0 wait..."), and the rule fires at step 4 (patience 3). A solved task (all right, also flat) keeps its reward; a task
                   too hard from the start never had min_reward.
      reward collapse: the mean reward of the last `window` steps below `collapse` x the best earlier `window`-step
                   mean, once that best is >= min_reward (a slower collapse, gradients not all 0).
      entropy collapse: mean entropy of the last `patience` steps below min_entropy (nats per token: a group's
                   samples all the same) while their reward is below half the mean of the `window` steps before.
      loss spike:  off unless loss_spike is set; for LM losses (pretraining, SFT), not GRPO's centred surrogate:
                   loss > loss_spike x the median of the previous `window` losses.
    Defaults (patience 3, window 10, collapse 0.25, min_reward 0.05, min_entropy 1e-3) never fire on the 40 steps of
    the default R1-Zero run (dev/r1zero_metrics.jsonl) nor on long synthetic noisy runs (tests/test_training.py).
    Small batches (e.g. 2 prompts x 4 samples) can have all-equal groups by chance: raise patience there.
    After a stop, `bad_since` is the first step of the streak or window that fired: a checkpoint saved at or after
    it holds the degenerated model.
    """

    def __init__(self, *, patience: int = 3, window: int = 10, collapse: float = 0.25, min_reward: float = 0.05,
                 min_entropy: float = 1e-3, loss_spike: float | None = None, reward_key: str = "reward",
                 loss_key: str = "loss", grad_key: str = "grad_norm", entropy_key: str = "entropy",
                 flat_key: str = "zero_variance_groups"):
        if patience < 1 or window < 1 or not 0 < collapse < 1:
            raise ValueError(f"need patience >= 1, window >= 1, 0 < collapse < 1; got {patience}, {window}, {collapse}")
        self.patience, self.window, self.collapse, self.min_reward = patience, window, collapse, min_reward
        self.min_entropy, self.loss_spike = min_entropy, loss_spike
        self.keys = dict(reward=reward_key, loss=loss_key, grad=grad_key, entropy=entropy_key, flat=flat_key)
        self.history = {name: deque(maxlen=window + patience) for name in ("step", *self.keys)}
        self.best_reward_window = None                 # best mean reward over `window` consecutive steps so far
        self.n, self.bad_since = 0, None

    def _last(self, name: str, n: int, skip: int = 0, partial: bool = False) -> list | None:
        """The n values of `name` before the last `skip` steps (partial: up to n, at least 1), or None if there are
        not enough, or any is missing (the rule is then off)."""
        h = list(self.history[name])[:len(self.history[name]) - skip]
        values = h[-n:] if len(h) >= n or (partial and h) else None
        return None if values is None or any(v is None for v in values) else values

    def update(self, metrics: dict) -> str | None:
        """Record one step's metrics; the reason to stop, or None."""
        self.n += 1
        for name, key in self.keys.items():
            v = metrics.get(key)
            self.history[name].append(None if v is None else float(_plain(v)))
        self.history["step"].append(metrics.get("step", self.n))
        reason = self._check()
        if reason is not None:
            return f"divergence guard: {reason}"
        rewards = self._last("reward", self.window)
        if rewards is not None and math.isfinite(mean := sum(rewards) / len(rewards)):
            self.best_reward_window = max(self.best_reward_window or mean, mean)
        return None

    def _fire(self, n_back: int, message: str) -> str:
        self.bad_since = list(self.history["step"])[-n_back]
        return message

    def _check(self) -> str | None:
        p, w = self.patience, self.window
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        for name in ("loss", "grad"):
            xs = self._last(name, p)
            if xs is not None and not any(math.isfinite(x) for x in xs):
                return self._fire(p, f"{self.keys[name]} non-finite for {p} steps in a row ({xs[-1]}); the run "
                                     "has diverged")
        flat, grads = self._last("flat", p), self._last("grad", p)
        dead = all(f >= 1 for f in flat) if flat is not None else grads is not None and all(g == 0 for g in grads)
        recent, before = self._last("reward", p), self._last("reward", w, skip=p, partial=True)
        if dead and recent is not None and before is not None:
            if mean(before) >= self.min_reward and mean(recent) < self.collapse * mean(before):
                return self._fire(p, f"reward collapsed to {mean(recent):.3f} (from {mean(before):.3f}) with no "
                                     f"learning signal for {p} steps (every group's samples scored alike): the "
                                     "policy has degenerated (learning rate too high?)")
        last_window = self._last("reward", w)
        best = self.best_reward_window
        if last_window is not None and best is not None and best >= self.min_reward:
            if mean(last_window) < self.collapse * best:
                return self._fire(w, f"mean reward of the last {w} steps {mean(last_window):.3f} is below "
                                     f"{self.collapse} x its best {w}-step mean {best:.3f}")
        entropy = self._last("entropy", p)
        if entropy is not None and recent is not None and before is not None and mean(entropy) < self.min_entropy:
            if mean(before) >= self.min_reward and mean(recent) < 0.5 * mean(before):
                return self._fire(p, f"entropy collapsed to {mean(entropy):.2e} nats/token for {p} steps while the "
                                     f"reward fell to {mean(recent):.3f} (from {mean(before):.3f}): a degenerate policy")
        losses = self._last("loss", w + 1)
        if self.loss_spike is not None and losses is not None:
            median = statistics.median(losses[:-1])
            if median > 0 and losses[-1] > self.loss_spike * median:
                return self._fire(1, f"loss spiked to {losses[-1]:.4g}, {losses[-1] / median:.1f} x the median "
                                     f"{median:.4g} of the previous {w} steps")
        return None


# ---- Ctrl-C: finish the step, save, exit with one line ----

class StopRequest:
    """Set by the first SIGINT/SIGTERM inside `interrupt_handler`; the loop checks it once per step."""

    def __init__(self):
        self.requested, self.signal = False, None

    def check(self) -> bool:
        """Whether to stop now; agreed by all ranks under torch.distributed (a collective: call it on every rank)."""
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(self.requested)],
                                device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested


@contextlib.contextmanager
def interrupt_handler(signals=(signal.SIGINT, signal.SIGTERM)):
    """Inside it, the first SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption notice) only sets stop.requested
    (and prints one line); the loop then saves and exits cleanly. A second one raises KeyboardInterrupt at once.

        with interrupt_handler() as stop:
            for step in ...:
                ...
                if stop.check():
                    save(...); print0(f"stopped at step {step}: resume with --resume"); break

    Outside the main thread (where Python cannot install handlers) it yields a StopRequest that is never set.
    """
    stop = StopRequest()

    def handle(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested, stop.signal = True, signal.Signals(signum).name
        if is_main():
            print(f"\n{stop.signal}: finishing this step, then saving and exiting (again to quit at once)",
                  file=sys.stderr, flush=True)
    try:
        previous = {s: signal.signal(s, handle) for s in signals}
    except ValueError:                                 # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    print0(f"device: {pick_device()}")
    for s in (0, 9, 10, 50, 100, 110):
        print0(f"lr_at({s:3d}, max_lr=1e-3, warmup=10, total=100) = {lr_at(s, max_lr=1e-3, warmup=10, total=100):.2e}")
