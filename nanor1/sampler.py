"""
The sampler: batched generation with a preallocated KV cache, for GRPO rollouts and for evaluation.

GRPO (R1 eq. 1) samples a group of G completions per question from the old policy, and generation takes most of the
wall time of an RL step. This file generates with one pass over the weights and the cache per token, and hands the
trainer exactly what it needs:

    params = SamplingParams(max_new_tokens=..., temperature=..., stop_ids=(eos,))    # validated once
    gen    = generate(model, prompts, params, group_size=G, seed=...)   # a Generation
    batch  = pack(gen.prompts, gen.tokens, gen.mask, gen.routing)     # the trainer's input, in the sampler's layout
    logp   = token_logprobs(model, batch, gen.temperature)            # [N, T]: logp, old_logp or ref_logp

How generation works
- Layout. Prompts are LEFT-padded to the longest (P tokens), so all rows write the same cache slot at each step and
  one `start` serves the whole batch. Each row passes its own RoPE positions (its first real token is position 0),
  and key_mask hides the pad slots. Completion token t of every row sits in slot (and packed column) P + t.
- Prefill runs each prompt once (rows in chunks of PREFILL_TOKENS prompt tokens) and computes logits for the last
  column only. For GRPO groups the prompt's cache is then copied into its G rows (repeat_interleave; rows are
  prompt-major: p0s0, p0s1, .., p1s0, ..).
- Decode feeds one token per row per step; MLA takes its absorbed path, attending in latent space over a cache of
  only c_kv and the rope key. Finished rows keep running (they emit PAD and are masked) until a host check finds
  them a quarter of the batch (COMPACT_AT); then they leave it, so a long tail of a few long completions is decoded
  at a small batch size (RL completions vary a lot in length). Outputs are kept for all rows throughout.
- Stopping. EOS ids are checked on the device at every step, with no host sync. Whatever needs the host (are all
  rows done? did a stop string appear?) happens once every `check_every` steps. Stop strings are matched on text,
  not token ids, because one string can be spelled by many token sequences: for each running row, only tokens whose
  own text holds a stop string's last character are examined, by decoding a short window that ends at that token.
  A row found stopped is cut right after the token that completed the string; the few tokens it produced since are
  masked (that costs at most check_every - 1 wasted steps, and changes no output).
- Sampling is inverse-CDF: one uniform u per row and step, and the token is the first index whose cumulative
  probability exceeds u; the cumulative sum is in float64 so small probabilities are not rounded away. The uniforms
  are drawn up front from CPU torch.Generators, so one seed gives the same samples on CPU and GPU, and with one seed
  per prompt (seed=[...]) a row's samples do not depend on what it is batched with. Uniforms are drawn step-major,
  so a longer max_new_tokens with the same seed extends the same completions.

Which log-probs. Generation.logprobs is log softmax(logits / temperature) of the drawn token: the temperature-scaled
policy *before* top-k/top-p truncation. That is the policy the trainer optimises (verl, TRL and OpenRLHF also scale
the trainer's logits by the sampling temperature) and token_logprobs(model, batch, temperature) recomputes it from
one forward, with no knowledge of the truncation. With top_k=0 and top_p=1 (the defaults; what RL should use) it is
exactly the distribution the tokens were drawn from. With truncation the draw comes from the renormalised kept set,
so those samples are slightly off-policy for this logp: keep truncation for evaluation.

Speed. A decode step is a few hundred small kernels, so on a GPU its time goes to launching them, not to reading
the weights and the cache. decode_mode picks the step:
- "eager" (default, the reference): the attended length grows by one every step (the cache is sliced to P + t).
- "static": the same step with fixed shapes: the cache slot to write is a device tensor (index_copy_) and attention
  runs over all S slots, the ones not written yet masked; sampling and bookkeeping write at a tensor position too.
  Nothing in the step depends on the host, so it can be captured. Tests check it equals "eager" on CPU.
- "cuda_graph": the static step recorded as a CUDA graph (once per generate() call, and again after each
  compaction, which changes the batch shape) and replayed: one launch per step.
In every mode, GQA layers project q, k and v with one matmul over weights concatenated once per generate() call
(model.fused_qkv; off with model.FAST_PATHS = False). On a CPU, "eager" decode steps run model.Decoder instead of
model.forward: the same step in ~20 ops per layer on weights fused and transposed once per call (tested equal to the
forward; off with sampler.CPU_DECODER = False, model.FAST_PATHS = False or compile=True).
compile=True runs the model's step through torch.compile (dynamic shapes for "eager", fixed for the others).
Generation runs with every SDPA kernel but cuDNN's (attention_kernels: cuDNN plans anew for each key length).

Shape letters: B prompts, G group size, N = B*G rows, n <= N rows still in the decode batch, P padded prompt length,
T new tokens, S cache slots, V vocab, K experts per token.
"""
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import nanor1.model as model_lib
from nanor1.model import Decoder, fused_qkv

PAD = 0                # written after a row stops; masked everywhere, so any valid id would do
CPU_DECODER = True     # eager CPU decode steps on model.Decoder (False: model.forward every step; bench/speed.py)
PREFILL_TOKENS = 2 ** 16  # prefill at most this many prompt tokens at once (bounds the activations' memory)
COMPACT_AT = 0.25         # drop finished rows from the decode batch once they are this share of it


@dataclass(frozen=True)
class SamplingParams:
    """How to sample, validated once: the length limit, the distribution (temperature, top-k, top-p or greedy) and
    what ends a row (stop token ids such as EOS, stop strings matched on the decoded text)."""
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {self.temperature}")
        if not 0 < self.top_p <= 1 or isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and an int top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")
        stop_ids = (self.stop_ids,) if isinstance(self.stop_ids, int) else tuple(self.stop_ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in stop_ids):
            raise ValueError(f"stop_ids must be token ids (ints >= 0), got {self.stop_ids!r}")
        if isinstance(self.stop_strings, str) or not all(isinstance(x, str) and x for x in self.stop_strings):
            raise ValueError(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")
        object.__setattr__(self, "stop_ids", stop_ids)                  # frozen: set the normalised tuples once
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

    def distribution(self) -> dict:
        """The keyword arguments of sample()."""
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, greedy=self.greedy)


@dataclass
class Generation:
    """What generate() returns: N = prompts * group_size rows of completions, with the sampler's log-probs."""
    prompts: list[list[int]]         # N: the prompt of each row (each prompt G times, prompt-major)
    tokens: torch.Tensor             # [N, T] long: generated ids, PAD after the row stopped
    logprobs: torch.Tensor           # [N, T] float32: log softmax(logits / temperature) of each token, 0 if masked
    mask: torch.Tensor               # [N, T] bool: completion tokens, the EOS or stop-string tokens included
    finish_reason: list[str]         # per row: "stop" (EOS or stop string) or "length" (hit max_new_tokens)
    temperature: float               # the temperature of `logprobs`: give the same one to token_logprobs
    routing: list[torch.Tensor] | None = None  # per MoE layer [N, P + T - 1, K] int16, columns as in pack()
    # (columns past a row's last token are unspecified: no scored token depends on them)

    def completions(self) -> list[list[int]]:
        """The generated ids of each row, without padding."""
        return [row[:n] for row, n in zip(self.tokens.tolist(), self.mask.sum(1).tolist())]

    def select(self, rows: list[int]) -> "Generation":
        """The given rows, in that order."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.tokens.device)
        return Generation(prompts=[self.prompts[i] for i in rows], tokens=self.tokens[idx], logprobs=self.logprobs[idx],
                          mask=self.mask[idx], finish_reason=[self.finish_reason[i] for i in rows],
                          temperature=self.temperature,
                          routing=None if self.routing is None else [r[idx.to(r.device)] for r in self.routing])

    @staticmethod
    def cat(parts: list["Generation"]) -> "Generation":
        """Rows of several generations (same temperature) in one: completions padded on the right to the longest,
        routing padded to the widest prompt padding (left) and the longest completion (right), as pack() lays it out."""
        if len({g.temperature for g in parts}) != 1:
            raise ValueError("cannot concatenate generations sampled at different temperatures")
        T = max(g.tokens.size(1) for g in parts)
        right = lambda x, v: torch.nn.functional.pad(x, (0, T - x.size(1)), value=v)  # noqa: E731
        routing = None
        if all(g.routing is not None for g in parts):
            P = max(g.routing[0].size(1) - g.tokens.size(1) + 1 for g in parts)        # widest prompt padding
            routing = [torch.cat([torch.nn.functional.pad(
                g.routing[m], (0, 0, P - (g.routing[m].size(1) - g.tokens.size(1) + 1), T - g.tokens.size(1)))
                for g in parts]) for m in range(len(parts[0].routing))]               # each [N, P + T - 1, K]
        return Generation(prompts=[p for g in parts for p in g.prompts],
                          tokens=torch.cat([right(g.tokens, PAD) for g in parts]),
                          logprobs=torch.cat([right(g.logprobs, 0.0) for g in parts]),
                          mask=torch.cat([right(g.mask, False) for g in parts]),
                          finish_reason=[r for g in parts for r in g.finish_reason],
                          temperature=parts[0].temperature, routing=routing)


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache per token over all layers (MLA: latent + rope key; GQA: K and V of each kv head)."""
    cache = model.new_cache(1, 1, device="meta")
    return sum(t.numel() * t.element_size() for layer in cache for t in layer.values())


# ----------------------------------------------------------------------------------------------------------------
# Sampling one token per row


def sample(logits, u, *, temperature=1.0, top_k=0, top_p=1.0, greedy=False):
    """One token per row. logits [N, V] float32, u [N] float64 uniforms in [0, 1) -> tokens [N] long, logp [N].

    logp is log softmax(logits / temperature) of the token, before truncation (see the module docstring).
    top_k keeps the k most likely tokens; top_p then keeps the smallest prefix of those (renormalised) whose mass
    reaches top_p, as HF and vLLM do. The most likely token is always kept.
    """
    logits = logits / temperature if temperature != 1 else logits            # x / 1 == x: skip the op
    lse = logits.logsumexp(-1, keepdim=True)                                  # [N, 1]
    if greedy:
        tok = logits.argmax(-1)
    else:
        probs = (logits - lse).exp()                                          # [N, V]
        truncate = top_k > 0 or top_p < 1
        if truncate:  # [N, V'] in descending order, with the vocab index of each
            probs, order = probs.topk(min(top_k, probs.size(-1)), -1) if top_k else probs.sort(-1, descending=True)
            if top_p < 1:
                probs = probs / probs.sum(-1, keepdim=True)
                before = probs.cumsum(-1) - probs                             # mass of the more likely kept tokens
                probs = probs.masked_fill(before >= top_p, 0.0)
        cdf = probs.cumsum(-1, dtype=torch.float64)                           # [N, V'] (unnormalised after truncation)
        # x < cdf[:, -1] strictly, so the first index with cdf > x exists and has probability > 0
        total = cdf[:, -1:]
        x = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        i = torch.searchsorted(cdf, x, right=True)                            # [N, 1]
        tok = (order.gather(-1, i) if truncate else i).squeeze(-1)
    logp = (logits.gather(-1, tok[:, None]) - lse).squeeze(-1)                # [N]
    return tok, logp


def _uniforms(seed, n_prompts: int, G: int, T: int) -> torch.Tensor:
    """[T, N] float64 uniforms, step-major. seed: int (one stream for the batch) or one int per prompt."""
    if seed is None:
        seed = int(torch.randint(2 ** 62, ()))  # from torch's global RNG, so torch.manual_seed still reproduces
    if not isinstance(seed, (list, tuple)):
        return torch.rand(T, n_prompts * G, generator=torch.Generator().manual_seed(int(seed)),
                          dtype=torch.float64)
    if len(seed) != n_prompts:
        raise ValueError(f"seed must be an int or one int per prompt; got {len(seed)} seeds for {n_prompts} prompts")
    return torch.cat([torch.rand(T, G, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                      for s in seed], dim=1)                                  # [T, N], prompt-major columns


# ----------------------------------------------------------------------------------------------------------------
# Stop strings, matched on the host


class StopStrings:
    """Finds where a row's text first contains one of `strings`; decode turns token ids into text."""

    def __init__(self, strings: Sequence[str], decode: Callable[[list[int]], str]):
        if isinstance(strings, str) or not strings or not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"stop_strings must be a non-empty list of non-empty strings, got {strings!r}")
        self.strings, self.decode = list(strings), decode
        # A token can complete a string only if its own text holds the string's last character. That is exact for
        # an ASCII last character; a non-ASCII one may be split over byte-level tokens, so then look at every token.
        self.last_chars = {s[-1] for s in self.strings}
        self.every_token = not all(c.isascii() for c in self.last_chars)
        # every token of a match covers >= 1 byte of the string; slack for tokens that decode to nothing
        self.window = max(len(s.encode()) for s in self.strings) + 8
        self._could_end: dict[int, bool] = {}

    def could_end(self, tok: int) -> bool:
        if self.every_token:
            return True
        if tok not in self._could_end:
            text = self.decode([tok])
            self._could_end[tok] = any(c in text for c in self.last_chars)
        return self._could_end[tok]

    def find(self, toks: list[int], begin: int) -> int | None:
        """Index of the first token at or after `begin` that completes a stop string, or None."""
        for j in range(begin, len(toks)):
            if self.could_end(toks[j]):
                text = self.decode(toks[max(0, j + 1 - self.window):j + 1])
                if any(s in text for s in self.strings):
                    return j
        return None


# ----------------------------------------------------------------------------------------------------------------
# Generation


def left_pad(prompts: list[list[int]], device=None):
    """tokens [B, P] (PAD on the left), pos [B, P] (0 at the first real token; pads 0), real [B, P] bool."""
    lens = torch.tensor([len(p) for p in prompts])
    P = int(lens.max())
    col = torch.arange(P)
    real = col[None, :] >= (P - lens)[:, None]                                # [B, P]
    tokens = torch.full((len(prompts), P), PAD, dtype=torch.long)
    tokens[real] = torch.tensor([t for p in prompts for t in p], dtype=torch.long)  # row-major fill = concatenation
    pos = (col[None, :] - (P - lens)[:, None]).clamp(min=0)
    return tokens.to(device), pos.to(device), real.to(device)


def _check_prompts(prompts, vocab_size: int):
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if not isinstance(p, (list, tuple)) or not p:
            raise ValueError(f"prompt {i} must be a non-empty list of token ids, got {p!r:.80}")
        if not all(isinstance(t, int) and 0 <= t < vocab_size for t in p):
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}) or non-ints: {p!r:.80}")


def _forward_last(model, tokens, pos, key_mask, cache, start, record):
    """One cached forward; returns the last column's logits [B, V] float32 and the routing (or None)."""
    out = model(tokens, pos=pos, key_mask=key_mask, cache=cache, start=start, last_only=True)
    return out.logits[:, -1].float(), (out.routing if record else None)


def _decoder_forward(decoder: Decoder):
    """_forward_last for one token per row, on the CPU decode path (model.Decoder)."""
    def forward(model, tokens, pos, key_mask, cache, start, record):
        logits, routing = decoder.step(tokens[:, 0], pos[:, 0], key_mask, cache, start)
        return logits, ([r[:, None] for r in routing] if record else None)            # per MoE layer [n, 1, K]
    return forward


def _use_decoder(model, decode_mode: str, compile: bool) -> bool:
    """The CPU decode path applies to eager steps of a float32 model whose weights are plain tensors (not FSDP's)."""
    params = list(model.parameters())
    return (CPU_DECODER and model_lib.FAST_PATHS and decode_mode == "eager" and not compile
            and all(p.device.type == "cpu" and p.dtype == torch.float32 and type(p.data) is torch.Tensor
                    for p in params))


def attention_kernels():
    """The SDPA kernels generation may use: all but cuDNN's, which builds a plan for every new key length (about 65 ms
    each on an H100 with torch 2.11) and decode meets a new length at every step."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


_compiled: dict = {}


def _fast(fn, dynamic: bool):
    """torch.compile'd version of fn, built once per process. dynamic: the eager step's cache length changes every
    step; the static step's shapes are fixed for a whole generate() call."""
    if (fn, dynamic) not in _compiled:
        _compiled[fn, dynamic] = torch.compile(fn, dynamic=dynamic)
    return _compiled[fn, dynamic]


DECODE_MODES = ("eager", "static", "cuda_graph")


@torch.no_grad()
def generate(model, prompts: list[list[int]], params: SamplingParams, *, group_size: int = 1,
             seed: int | Sequence[int] | None = None, decode: Callable[[list[int]], str] | None = None,
             record_routing: bool = False, check_every: int = 8, compact: bool = True, decode_mode: str = "eager",
             compile: bool = False) -> Generation:
    """Complete each prompt group_size times; returns a Generation with N = len(prompts) * group_size rows.

    params: how to sample (SamplingParams). Rows stop at a params.stop_ids token or once their text contains one of
    params.stop_strings (decode: ids -> text, needed with stop strings), else after params.max_new_tokens.
    seed: int, or one int per prompt (see module docstring); None draws one from torch's global RNG.
    record_routing keeps the MoE expert choice of every token. check_every: decode steps between host syncs (all
    rows done? stop strings?). compact: at a check, drop the finished rows from the batch once they are COMPACT_AT
    of it (same outputs, less work for the rest). decode_mode: "eager" (the reference), "static" (fixed shapes:
    attend over all cache slots, masked) or "cuda_graph" (the static step captured once and replayed; CUDA only).
    compile: torch.compile the model's step. The model runs in eval mode under no_grad, and gets its mode back.
    """
    cfg, device = model.cfg, model.embed.weight.device
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
    _check_prompts(prompts, cfg.vocab_size)
    longest = max(len(p) for p in prompts)
    if longest + params.max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
                         f"max_seq_len={cfg.max_seq_len}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
    if params.stop_strings and decode is None:
        raise ValueError("stop_strings need decode (a function from token ids to text)")
    if decode_mode not in DECODE_MODES:
        raise ValueError(f"decode_mode must be one of {DECODE_MODES}, got {decode_mode!r}")
    if decode_mode == "cuda_graph":
        if device.type != "cuda":
            raise ValueError(f"decode_mode='cuda_graph' needs the model on a CUDA device, it is on {device}")
        bf16 = model.embed.weight.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16)
        if model.moe_layers() and not (bf16 and model.moe_layers()[0].batched):
            # the fp32 expert path pads to the busiest expert's count, a shape only the host can know
            raise ValueError("decode_mode='cuda_graph' with MoE layers needs batched experts in bfloat16 (bf16 "
                             "weights or bf16 autocast: F.grouped_mm); use decode_mode='static' or 'eager' otherwise")
    stops = StopStrings(params.stop_strings, decode) if params.stop_strings else None
    eos = torch.tensor(params.stop_ids, dtype=torch.long, device=device)
    record = record_routing and bool(model.moe_layers())

    was_training = model.training
    model.eval()
    try:
        with attention_kernels(), fused_qkv(model):
            return _generate(model, prompts, params, eos=eos, stops=stops, G=group_size, seed=seed, record=record,
                             check_every=check_every, compact=compact, decode_mode=decode_mode, compile=compile)
    finally:
        model.train(was_training)


@dataclass
class _Decoding:
    """The decode loop's state: tensors only, updated in place, so that a captured CUDA graph replays steps on them.
    The batch holds n <= N running rows (finished rows are dropped by _compact); outputs are kept for all N rows."""
    rows: torch.Tensor               # [n] long: which of the N rows each batch row is
    cache: list[dict]                # per layer, [n, S, ...]
    key_mask: torch.Tensor           # [n, S] bool: real prompt slots and every generated slot
    tok: torch.Tensor                # [n] long: the last sampled token of each row (fed next)
    pos: torch.Tensor                # [n] long: the RoPE position of that token
    t: torch.Tensor                  # [] long: the index of the next token to sample
    u: torch.Tensor | None           # [T, N] float64 uniforms (None when greedy)
    eos: torch.Tensor                # [n_eos] long
    out_tok: torch.Tensor            # [N, T] long
    out_logp: torch.Tensor           # [N, T] float32
    lengths: torch.Tensor            # [N] long: tokens generated while not done
    done: torch.Tensor               # [N] bool
    routing: list[torch.Tensor] | None  # per MoE layer [N, S, K] int16


def _pick(d: _Decoding, logits, sampling: dict):
    """Sample token t of every row from logits [N, V] and record it, then t += 1. Static shapes, no host sync."""
    rows, col = d.rows, d.t.expand(d.rows.size(0))                           # [n], [n]: where this step writes
    u = None if d.u is None else d.u[col, rows]                               # [n]
    tok, logp = sample(logits, u, **sampling)
    done = d.done[rows]                                                       # [n]
    tok = tok.masked_fill(done, PAD)
    d.out_tok.index_put_((rows, col), tok)
    d.out_logp.index_put_((rows, col), logp.masked_fill(done, 0.0))
    d.lengths.index_add_(0, rows, (~done).long())
    d.done.index_put_((rows,), done | (tok[:, None] == d.eos).any(-1))       # hit one of the EOS ids
    d.tok.copy_(tok)
    d.t += 1


def _decode_step(model, d: _Decoding, P: int, sampling: dict, forward, start):
    """Feed each row's last token, which sits in cache slot start = P + t - 1, and sample token t.
    start: that slot as an int (eager: the attended length grows) or as a tensor (static shapes)."""
    logits, r = forward(model, d.tok[:, None], d.pos[:, None], d.key_mask, d.cache, start, d.routing is not None)
    d.pos += 1
    if r is not None:
        slot = (P + d.t - 1).expand(d.rows.size(0))                           # [n]
        for m, rm in enumerate(r):
            d.routing[m].index_put_((d.rows, slot), rm[:, 0].to(torch.int16))  # rm [n, 1, K]
    _pick(d, logits, sampling)


def _compact(d: _Decoding):
    """Drop the finished rows from the batch (their outputs are already written): later steps cost less. A host sync,
    done only at a check."""
    keep = (~d.done[d.rows]).nonzero().squeeze(1)                             # [n']
    d.rows, d.tok, d.pos, d.key_mask = d.rows[keep], d.tok[keep], d.pos[keep], d.key_mask[keep]
    d.cache = [{k: c[keep] for k, c in layer.items()} for layer in d.cache]


def _cuda_graph(step, d: _Decoding):
    """Capture step() (a static-shape decode step on d) as a CUDA graph; graph.replay() then runs it again on the same
    tensors with one launch instead of one per kernel. The state is left as it was."""
    saved = {k: getattr(d, k).clone() for k in ("tok", "pos", "t", "lengths", "done")}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture: lazy initialisation must not be recorded
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # under autocast, casts cached during capture would be freed with the graph's inputs: capture without the cache
    amp = torch.is_autocast_enabled("cuda")
    with torch.cuda.graph(graph), torch.autocast("cuda", torch.get_autocast_dtype("cuda"), amp, cache_enabled=False):
        step()  # records, does not run
    for k, v in saved.items():  # undo the warm-up step (it rewrote token t's column; replay writes it again)
        getattr(d, k).copy_(v)
    return graph


def _generate(model, prompts, params: SamplingParams, *, eos, stops, G, seed, record, check_every, compact,
              decode_mode, compile) -> Generation:
    """generate()'s loop, on checked arguments."""
    max_new_tokens, sampling = params.max_new_tokens, params.distribution()
    cfg, device = model.cfg, model.embed.weight.device
    B = len(prompts)
    N = B * G
    tokens, pos, real = left_pad(prompts, device)                         # [B, P] each
    P = tokens.size(1)
    S = P + max_new_tokens - 1                                            # the last token is never fed back
    cache = model.new_cache(N, S)
    key_mask = torch.ones(N, S, dtype=torch.bool, device=device)          # [N, S] generated slots all count
    key_mask[:, :P] = real.repeat_interleave(G, 0)

    # prefill each prompt once, a few rows at a time; writes go through views into the first B cache rows
    rows = max(1, PREFILL_TOKENS // P)
    last, prompt_routing = [], []
    for i in range(0, B, rows):
        view = [{k: t[i:i + rows] for k, t in layer.items()} for layer in cache]
        logits, r = _forward_last(model, tokens[i:i + rows], pos[i:i + rows], real[i:i + rows], view, 0, record)
        last.append(logits)
        prompt_routing.append(r)
    logits = torch.cat(last).repeat_interleave(G, 0)                      # [N, V] for completion token 0
    if G > 1:  # GRPO: copy each prompt's cache into its G rows
        for layer in cache:
            for t in layer.values():
                t[:, :P] = t[:B, :P].repeat_interleave(G, 0)
    routing = None
    if record:
        K = cfg.n_activated_experts
        routing = [torch.zeros(N, S, K, dtype=torch.int16, device=device) for _ in model.moe_layers()]
        for m, r in enumerate(routing):
            r[:, :P] = torch.cat([chunk[m] for chunk in prompt_routing]).repeat_interleave(G, 0)

    T = max_new_tokens
    d = _Decoding(
        rows=torch.arange(N, device=device), cache=cache, key_mask=key_mask,
        tok=torch.zeros(N, dtype=torch.long, device=device),
        pos=torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(G),  # token 0's position
        t=torch.zeros((), dtype=torch.long, device=device),
        u=None if sampling["greedy"] else _uniforms(seed, B, G, T).to(device),  # [T, N]
        eos=eos,
        out_tok=torch.full((N, T), PAD, dtype=torch.long, device=device),
        out_logp=torch.zeros(N, T, dtype=torch.float32, device=device),
        lengths=torch.zeros(N, dtype=torch.long, device=device),
        done=torch.zeros(N, dtype=torch.bool, device=device),
        routing=routing)
    _pick(d, logits, sampling)                                            # token 0, from the prefill

    static = decode_mode != "eager"
    if _use_decoder(model, decode_mode, compile):
        forward = _decoder_forward(Decoder(model))
    else:
        forward = _fast(_forward_last, dynamic=not static) if compile else _forward_last

    def step(t: int | None = None):  # feed token t - 1 (cache slot P + t - 1) and sample token t
        # static: the slot is computed on the device from d.t, so a captured graph finds it anew at every replay
        _decode_step(model, d, P, sampling, forward, P + d.t - 1 if static else P + t - 1)

    capture = decode_mode == "cuda_graph" and T > 1
    graph = _cuda_graph(step, d) if capture else None
    seen = [[] for _ in range(N)]                                         # host copy of each row, for stops
    checked = 0                                                           # steps already copied to the host
    for t in range(T):
        if t > 0 and graph is not None:
            graph.replay()                                                # the captured step, on d's tensors
        elif t > 0:
            step(t)
        if (t + 1) % check_every == 0 or t == T - 1:  # the only host syncs of the loop
            if stops is not None:
                _apply_stop_strings(stops, d.out_tok[:, checked:t + 1], seen, d.lengths, d.done)
                checked = t + 1
            running = int((~d.done[d.rows]).sum())
            if running == 0:
                break
            if compact and running <= (1 - COMPACT_AT) * d.rows.numel() and t < T - 1:
                _compact(d)
                graph = _cuda_graph(step, d) if capture else None        # new shapes: capture anew

    lengths = d.lengths
    T = max(1, int(lengths.max()))
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]    # [N, T]
    return Generation(
        prompts=[p for p in prompts for _ in range(G)],
        tokens=d.out_tok[:, :T].masked_fill(~mask, PAD),
        logprobs=d.out_logp[:, :T].masked_fill(~mask, 0.0),
        mask=mask,
        finish_reason=["stop" if x else "length" for x in d.done.tolist()],
        temperature=sampling["temperature"],
        routing=None if routing is None else [r[:, :P + T - 1] for r in routing],
    )


def _apply_stop_strings(stops: StopStrings, new_tokens, seen, lengths, done):
    """Extend each row's host copy with its new tokens (new_tokens [N, t]) and cut rows whose text now holds a stop
    string right after the token that completed it: updates lengths [N] and done [N] in place."""
    new, n_real = new_tokens.tolist(), lengths.tolist()
    cut_rows, cut_len = [], []
    for row, toks in enumerate(seen):
        if len(toks) >= n_real[row]:
            continue  # nothing new: stopped by EOS or cut at an earlier check
        begin = len(toks)
        toks.extend(new[row][:n_real[row] - begin])
        j = stops.find(toks, begin)
        if j is not None:
            cut_rows.append(row)
            cut_len.append(j + 1)
    if cut_rows:
        idx = torch.tensor(cut_rows, device=lengths.device)
        lengths[idx] = torch.tensor(cut_len, device=lengths.device)
        done[idx] = True


# ----------------------------------------------------------------------------------------------------------------
# The trainer's side: the same layout, one full forward


@dataclass
class Batch:
    tokens: torch.Tensor             # [N, P + T] long: prompt (left-padded) then completion (PAD after it)
    pos: torch.Tensor                # [N, P + T] RoPE positions: 0 at each row's first real token, pads 0
    key_mask: torch.Tensor           # [N, P + T] bool: real tokens
    mask: torch.Tensor               # [N, T] bool: the completion tokens to score (the loss mask)
    routing: list[torch.Tensor] | None = None  # per MoE layer [N, P + T - 1, K] long, replayed by token_logprobs

    @property
    def prompt_len(self) -> int:
        return self.tokens.size(1) - self.mask.size(1)

    def rows(self, idx) -> "Batch":
        """The sub-batch at the given row indices (a micro-batch)."""
        return Batch(tokens=self.tokens[idx], pos=self.pos[idx], key_mask=self.key_mask[idx], mask=self.mask[idx],
                     routing=None if self.routing is None else [r[idx] for r in self.routing])


def pack(prompts: list[list[int]], completions, mask=None, routing=None, device=None) -> Batch:
    """The trainer's input for N prompts and their completions, in the sampler's layout (completion token t of every
    row at column P + t, so that logits column P + t - 1 scores it).

    completions: a [N, T] tensor (with mask [N, T], default all real) or N lists of ids. routing: a Generation's
    routing for these rows (its prompt padding may be wider; the extra left columns are dropped).
    """
    if len(prompts) == 0 or len(completions) != len(prompts):
        raise ValueError(f"need one completion per prompt, got {len(prompts)} prompts, {len(completions)} completions")
    if isinstance(completions, torch.Tensor):
        device = device or completions.device
        comp = completions.long().to(device)
        mask = torch.ones_like(comp, dtype=torch.bool) if mask is None else mask.bool().to(device)
        if mask.shape != comp.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match completions {tuple(comp.shape)}")
    else:
        T = max(1, max(len(c) for c in completions))
        comp = torch.tensor([list(c) + [PAD] * (T - len(c)) for c in completions], dtype=torch.long, device=device)
        mask = torch.tensor([[i < len(c) for i in range(T)] for c in completions], device=device)
    tokens, pos, real = left_pad(prompts, comp.device)                        # [N, P]
    P, T = tokens.size(1), comp.size(1)
    comp_pos = pos[:, -1:] + 1 + torch.arange(T, device=comp.device)         # [N, T] continues each prompt
    batch = Batch(tokens=torch.cat([tokens, comp.masked_fill(~mask, PAD)], 1), pos=torch.cat([pos, comp_pos], 1),
                  key_mask=torch.cat([real, mask], 1), mask=mask)
    if routing is not None:
        width = P + T - 1
        if any(r.size(0) != len(prompts) or r.size(1) < width for r in routing):
            raise ValueError(f"routing must be per MoE layer [N={len(prompts)}, >= {width}, K] (from the Generation of "
                             f"these rows), got {[tuple(r.shape) for r in routing]}")
        batch.routing = [r[:, r.size(1) - width:].long().to(comp.device) for r in routing]
    return batch


def token_logprobs(model, batch: Batch, temperature: float = 1.0, with_entropy: bool = False):
    """log softmax(logits / temperature) of each completion token: [N, T] float32, 0 where batch.mask is 0.

    One forward of the model as the caller left it (train/eval mode, autograd on or off). The last column is not fed:
    its logits would score a token past the end. With batch.routing the MoE layers replay the sampler's experts.
    with_entropy also returns the entropy [N, T] of softmax(logits / temperature), detached (for logging).
    group_token_logprobs computes the same faster when rows share prompts (GRPO groups).
    """
    P = batch.prompt_len
    logits = model(batch.tokens[:, :-1], pos=batch.pos[:, :-1], key_mask=batch.key_mask[:, :-1],
                   routing=batch.routing).logits                             # [N, P + T - 1, V]
    return _score(logits[:, P - 1:], batch, temperature, with_entropy)


def _score(logits, batch: Batch, temperature: float, with_entropy: bool):
    """token_logprobs' result from the logits [N, T, V] whose column t scores completion token t."""
    logits = logits.float() / temperature                                     # [N, T, V]
    target = batch.tokens[:, batch.prompt_len:, None]                         # [N, T, 1]
    lse = logits.logsumexp(-1)                                                # [N, T]
    logp = (logits.gather(-1, target).squeeze(-1) - lse).masked_fill(~batch.mask, 0.0)
    if not with_entropy:
        return logp
    with torch.no_grad():
        probs = (logits - lse[..., None]).exp()                               # [N, T, V]
        entropy = lse - (probs * logits).sum(-1)                              # H = log Z - E_p[logit]
    return logp, entropy.masked_fill(~batch.mask, 0.0)


def group_token_logprobs(model, batch: Batch, temperature: float = 1.0, with_entropy: bool = False):
    """token_logprobs (same arguments, same result within float rounding, gradients included), with each distinct
    prompt run once instead of once per row: in GRPO the G rows of a group share their prompt, and prompts are most
    of an RL batch's columns. Rows may come in any order and any subset (distinct prompts are found by value).

    How: the U distinct prompts go through the model once, writing a KV cache (with autograd: the cache entries are
    part of the graph); each row then runs only its completion columns, attending to its prompt's cache entries
    (copied to the row). Gradients reach the weights through both passes, so loss.backward() is unchanged.
    What would differ from one full forward, and how it is kept the same:
    - MoE load counts (Gate.load, which drive the routing-bias update) count a prompt token once per row, as the full
      forward does: the prompt pass's counts are added again for each extra row that shares the prompt.
    - Routing replay (batch.routing): the prompt pass replays the routing of each prompt's first row; if rows that
      share a prompt disagree on its routing, this falls back to token_logprobs.
    - MoE balance losses (aux_loss) are per forward: the completion pass overwrites the prompt pass's. They are not
      used by the RL loss; with balance_loss_alpha > 0 in training mode this falls back to token_logprobs.
    """
    N, P = batch.tokens.size(0), batch.prompt_len
    T = batch.mask.size(1)
    moes = model.moe_layers()
    if model.training and model.cfg.balance_loss_alpha and moes:
        return token_logprobs(model, batch, temperature, with_entropy)
    prompt = torch.cat([batch.tokens[:, :P], batch.pos[:, :P], batch.key_mask[:, :P].long()], 1)  # [N, 3P]
    uniq, inverse = torch.unique(prompt, dim=0, return_inverse=True)          # [U, 3P], [N]: row -> its prompt
    U = uniq.size(0)
    first = torch.full((U,), N, dtype=torch.long, device=inverse.device).scatter_reduce_(
        0, inverse, torch.arange(N, device=inverse.device), "amin")          # [U]: the first row of each prompt
    prompt_routing = comp_routing = None
    if batch.routing is not None:
        prompt_routing = [r[first, :P] for r in batch.routing]                # [U, P, K] per MoE layer
        if not all(torch.equal(pr[inverse], r[:, :P]) for pr, r in zip(prompt_routing, batch.routing)):
            return token_logprobs(model, batch, temperature, with_entropy)
        comp_routing = [r[:, P:] for r in batch.routing]                      # [N, T - 1, K]
    if U == N:  # nothing shared: one forward is cheaper than two
        return token_logprobs(model, batch, temperature, with_entropy)

    # the prompt pass: U rows, P columns, into a fresh cache of P slots; only its last column's logits are needed
    cache = model.new_cache(U, P)
    out = model(batch.tokens[first, :P], pos=batch.pos[first, :P], key_mask=batch.key_mask[first, :P], cache=cache,
                routing=prompt_routing, last_only=True)
    if model.training:  # count each (real) prompt token once per row that shares it, as the full forward would
        extra = torch.bincount(inverse, minlength=U) - 1                      # [U]: rows beyond the first
        times = extra[:, None] * batch.key_mask[first, :P]                    # [U, P]: 0 on left padding
        for moe, idx in zip(moes, out.routing):                              # idx [U, P, K]
            load = moe.gate.load
            load.index_add_(0, idx.flatten(), times[..., None].expand_as(idx).flatten().to(load.dtype))
    logits = out.logits[inverse]                                              # [N, 1, V]: scores completion token 0
    if T > 1:  # the completion pass: N rows, columns P .. P+T-2, over their prompt's cache
        # (P slots: model.write_cache appends the completion out of place, as FSDP2 with gradients needs: it hands a
        # block its cache input as views that cannot be written in place)
        cache = [{k: c[inverse] for k, c in layer.items()} for layer in cache]  # [N, P, ...]
        comp = model(batch.tokens[:, P:-1], pos=batch.pos[:, P:-1], key_mask=batch.key_mask[:, :-1], cache=cache,
                     start=P, absorb=False, routing=comp_routing).logits       # [N, T - 1, V]
        logits = torch.cat([logits, comp], 1)                                 # [N, T, V]
    return _score(logits, batch, temperature, with_entropy)


if __name__ == "__main__":
    # python -m nanor1.sampler: a random tiny model completes three prompts of different lengths, twice each
    from nanor1.model import Transformer, get_config
    torch.manual_seed(0)
    model = Transformer(get_config("tiny"))
    ro = generate(model, [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], SamplingParams(max_new_tokens=12, stop_ids=(7,)),
                  group_size=2, seed=0)
    for p, c, lp, why in zip(ro.prompts, ro.completions(), ro.logprobs.sum(1).tolist(), ro.finish_reason):
        print(f"{p} -> {c}  ({why}, sum logp {lp:.2f})")
    print(f"KV cache: {kv_bytes_per_token(model)} bytes per token")
