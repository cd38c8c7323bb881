"""Shared training pieces: device, seeds, bf16 autocast, AdamW with decay groups, LR schedule, grad clipping,
RNG state for exact resume, a JSONL metrics log, and rank-0 printing.

Small plain functions used by pretrain.py, train_zero.py, train_r1.py and distill.py; each script keeps its own
loop. Choices made here (the R1 paper does not specify them for our scale):
- Weight decay applies to every parameter with 2+ dims (linear weights, embeddings, the output head) and not to
  1-D ones (biases, norm gains), as in nanoGPT. Embeddings are decayed because the head may be tied to them and a
  tied tensor can only sit in one group.
- LR: linear warmup, then cosine from max_lr down to min_lr_ratio·max_lr at `total` steps, flat after.
- bf16 autocast on CUDA only; CPU and MPS run in fp32, which keeps the CPU tests exact and simple.
- A non-finite gradient norm is reported, not raised: `clip_grad` returns it and the caller skips that step.
"""

import contextlib
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


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

def is_main() -> bool:
    """True on rank 0, and in any single-process run (torch.distributed not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0        # torchrun sets RANK before init_process_group


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
    """Append one JSON object per line to `path`, flushed per line (plots read it live). Writes on rank 0 only."""

    def __init__(self, path, enabled: bool | None = None):
        self.enabled = is_main() if enabled is None else enabled
        self.file = None
        if self.enabled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":
    print0(f"device: {pick_device()}")
    for s in (0, 9, 10, 50, 100, 110):
        print0(f"lr_at({s:3d}, max_lr=1e-3, warmup=10, total=100) = {lr_at(s, max_lr=1e-3, warmup=10, total=100):.2e}")
