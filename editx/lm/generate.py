"""Our decode loop for the Step1 LM: prefill / decode_one, a step-level session, generate and stream.

Output semantics follow upstream exactly (`tts.py`: `output_ids[:, len(prompt):-1]` after HF
`generate(max_length=8192)`): generation runs until the EOS id or until prompt + generated reaches
`max_length`, and the **last generated token is always dropped**: the EOS when there is one, a real
token when the length cap hit first. A prompt already at or over `max_length` is refused, as HF
(4.53.3) refuses it with a ValueError. Streaming emits exactly the tokens of that final result.

Batching: requests sit in the rows of one static `KVCache`, each with its own positions, so ragged
prompts, restored prefixes and requests joining mid-flight all give the same tokens as decoding
each request alone (per-row ALiBi distances, per-row sampling state and `torch.Generator`).
Token selection runs on the CPU whatever the model's device (one (B, V) copy per step), so a
request's generator is always a CPU `torch.Generator` and a seed picks the same tokens on any device
given the same logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from editx.config import SamplingConfig
from editx.errors import QueueFullError, ValidationError
from editx.lm import threads
from editx.lm.kv_cache import KVCache, PrefixSnapshot
from editx.lm.sampling import make_generator, select_token

log = logging.getLogger(__name__)

PREFILL_CHUNK = 256  # bounds the (B, H, chunk, S) ALiBi bias and activations of long prompts


def _rows(slots: Sequence[int]) -> slice | torch.Tensor:
    """Cache rows as a slice when they are consecutive (reads stay views), else an index tensor."""
    if all(b - a == 1 for a, b in zip(slots, slots[1:])):
        return slice(slots[0], slots[-1] + 1)
    return torch.tensor(slots, dtype=torch.int64)


@torch.inference_mode()
def prefill(model, cache: KVCache, slots: Sequence[int], chunks: Sequence[Sequence[int]],
            starts: Sequence[int], *, chunk_size: int = PREFILL_CHUNK) -> torch.Tensor:
    """Run each row's tokens `chunks[b]` at positions starts[b].. into cache row slots[b].

    Rows are right-padded to a common length; padding writes go to the scratch slot and its outputs
    are ignored. Returns fp32 logits (B, V) at each row's last token.
    """
    device = model.device
    lengths = [len(c) for c in chunks]
    if min(lengths) < 1:
        raise ValidationError("prefill needs at least one token per row")
    if max(s + n for s, n in zip(starts, lengths)) > cache.max_len:
        raise ValidationError(f"prompt does not fit the KV cache ({cache.max_len} positions)")
    rows = _rows(slots)
    if isinstance(rows, torch.Tensor):
        rows = rows.to(device)
    last_hidden = [None] * len(chunks)
    for c0 in range(0, max(lengths), chunk_size):
        width = min(chunk_size, max(lengths) - c0)
        tok = torch.zeros(len(chunks), width, dtype=torch.int64)
        pos = torch.zeros(len(chunks), width, dtype=torch.int64)
        slot = torch.full((len(chunks), width), cache.scratch_slot, dtype=torch.int64)
        for b, (chunk, start) in enumerate(zip(chunks, starts)):
            part = chunk[c0: c0 + width]
            n = len(part)
            if n:
                tok[b, :n] = torch.tensor(part, dtype=torch.int64)
                pos[b, :n] = torch.arange(start + c0, start + c0 + n)
                slot[b, :n] = pos[b, :n]
            pos[b, n:] = pos[b, n - 1] if n else start  # padding queries: any valid position
        kv_len = max(start + min(c0 + width, n) for start, n in zip(starts, lengths))
        hidden = model(tok.to(device), pos.to(device), cache, rows, slot.to(device), kv_len)
        for b, n in enumerate(lengths):
            if c0 < n <= c0 + width:
                last_hidden[b] = hidden[b, n - c0 - 1]
    return model.logits(torch.stack(last_hidden))


@torch.inference_mode()
def decode_one(model, cache: KVCache, slots: Sequence[int], tokens: Sequence[int],
               positions: Sequence[int], *, narrow_threads: bool = True) -> torch.Tensor:
    """Feed one token per row at its position; returns fp32 logits (B, V) for the next token.

    `narrow_threads`: on the CPU, the step's small ops run on one intra-op thread and only the
    weight GEMVs on all of them (`editx.lm.threads`); the numbers do not change.
    """
    device = model.device
    rows = _rows(slots)
    if isinstance(rows, torch.Tensor):
        rows = rows.to(device)
    pos = torch.tensor(positions, dtype=torch.int64, device=device)[:, None]  # (B, 1)
    tok = torch.tensor(tokens, dtype=torch.int64, device=device)[:, None]
    with threads.narrow(narrow_threads and device.type == "cpu"):
        hidden = model(tok, pos, cache, rows, pos, max(positions) + 1)
        return model.logits(hidden[:, 0])


@torch.inference_mode()
def prefill_prefix(model, tokens: Sequence[int], *, chunk_size: int = PREFILL_CHUNK) -> PrefixSnapshot:
    """K/V of `tokens` as a reusable snapshot (e.g. a cached voice prompt's fixed prompt head)."""
    if not tokens:
        raise ValidationError("a prefix needs at least one token")
    cache = KVCache.for_model(model, 1, len(tokens))
    prefill(model, cache, [0], [list(tokens)], [0], chunk_size=chunk_size)
    return cache.snapshot(0, tokens)


@torch.inference_mode()
def sequence_logits(model, tokens: Sequence[int], *, chunk_size: int = PREFILL_CHUNK) -> torch.Tensor:
    """fp32 logits (T, V) at every position of one sequence (scoring, tests, goldens)."""
    cache = KVCache.for_model(model, 1, len(tokens))
    out = []
    for c0 in range(0, len(tokens), chunk_size):
        part = torch.tensor([list(tokens[c0: c0 + chunk_size])], dtype=torch.int64, device=model.device)
        pos = torch.arange(c0, c0 + part.shape[1], device=model.device)[None]
        out.append(model.logits(model(part, pos, cache, slice(0, 1), pos, c0 + part.shape[1])[0]))
    return torch.cat(out)


@dataclass(frozen=True)
class StepOutput:
    """What one step did for one request: the token it emitted (None when the step produced the
    token upstream drops, or nothing), and whether the request is now finished and why."""

    slot: int
    token: int | None
    finished: bool
    reason: str | None = None  # "eos" | "length" | "max_new_tokens"


@dataclass
class _Request:
    prompt: list[int]
    sampling: SamplingConfig
    generator: torch.Generator | None
    start: int  # positions already in the cache (restored prefix)
    recent: list[int]  # the last repetition_window tokens of prompt + generated
    n_generated: int = 0
    last: int | None = None
    emitted: list[int] = field(default_factory=list)
    reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.reason is not None


class DecodeSession:
    """Continuous batching over one static cache: `add` requests, call `step` until they finish.

    Each `step()` first prefills every newly added request (batched) and samples its first token,
    then decodes one token for every request that was already running. Finished requests keep their
    result until `release(slot)` frees the row for a new request.
    """

    def __init__(self, model, *, max_batch: int = 1, max_length: int = SamplingConfig().max_length,
                 eos_id: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
                 narrow_threads: bool = True) -> None:
        self.model = model
        self.narrow_threads = narrow_threads
        self.max_length = max_length
        self.eos_id = model.config.eos_token_id if eos_id is None else eos_id
        self.prefill_chunk = prefill_chunk
        with torch.inference_mode():
            self.cache = KVCache.for_model(model, max_batch, max_length)
        self._requests: dict[int, _Request] = {}
        self._pending: list[int] = []

    @property
    def free_slots(self) -> int:
        return self.cache.batch - len(self._requests)

    @property
    def active(self) -> list[int]:
        return sorted(s for s, r in self._requests.items() if not r.finished)

    def add(self, prompt: Sequence[int], *, sampling: SamplingConfig | None = None,
            generator: torch.Generator | None = None, prefix: PrefixSnapshot | None = None) -> int:
        """Queue a request for the next step; returns its slot. Raises QueueFullError when full."""
        sampling = sampling or SamplingConfig()
        prompt = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if not prompt:
            raise ValidationError("the LM prompt is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValidationError(f"LM prompt ids must be in 0..{vocab - 1}")
        if len(prompt) >= sampling.max_length:
            raise ValidationError(f"the LM prompt has {len(prompt)} tokens, which leaves nothing to generate "
                                  f"under max_length {sampling.max_length}; use a shorter prompt audio or text")
        if sampling.max_length > self.max_length:
            raise ValidationError(f"max_length {sampling.max_length} exceeds this session's {self.max_length}")
        free = [s for s in range(self.cache.batch) if s not in self._requests]
        if not free:
            raise QueueFullError(f"all {self.cache.batch} decode slots are busy")
        slot = free[0]
        if generator is None and sampling.temperature > 0:
            generator = make_generator(None)
        window = sampling.repetition_window
        req = _Request(prompt, sampling, generator, 0, prompt[-window:] if window > 0 else [])
        if prefix is not None:
            if not prefix.matches(prompt):
                raise ValidationError("the prefix snapshot's tokens are not a prefix of this prompt")
            # Keep at least the last prompt token to prefill: its logits give the first new token.
            with torch.inference_mode():
                req.start = self.cache.restore(slot, prefix, min(prefix.length, len(prompt) - 1))
        self._requests[slot] = req
        self._pending.append(slot)
        return slot

    def step(self) -> list[StepOutput]:
        """Advance every unfinished request by one token (new requests: their prefill)."""
        out: list[StepOutput] = []
        running = [s for s in self.active if s not in self._pending]
        if self._pending:
            slots, self._pending = sorted(self._pending), []
            reqs = [self._requests[s] for s in slots]
            logits = prefill(self.model, self.cache, slots, [r.prompt[r.start:] for r in reqs],
                             [r.start for r in reqs], chunk_size=self.prefill_chunk)
            out += [self._advance(s, r, row) for s, r, row in zip(slots, reqs, logits.cpu())]
        if running:
            reqs = [self._requests[s] for s in running]
            logits = decode_one(self.model, self.cache, running, [r.last for r in reqs],
                                [len(r.prompt) + r.n_generated - 1 for r in reqs],
                                narrow_threads=self.narrow_threads)
            out += [self._advance(s, r, row) for s, r, row in zip(running, reqs, logits.cpu())]
        return sorted(out, key=lambda o: o.slot)

    def _advance(self, slot: int, req: _Request, logits: torch.Tensor) -> StepOutput:
        sp = req.sampling
        token = select_token(logits, req.recent, temperature=sp.temperature, top_k=sp.top_k,
                             top_p=sp.top_p, generator=req.generator,
                             repetition_window=sp.repetition_window,
                             repetition_threshold=sp.repetition_threshold)
        req.n_generated += 1
        req.last = token
        if sp.repetition_window > 0:
            req.recent = (req.recent + [token])[-sp.repetition_window:]
        if token == self.eos_id:
            req.reason = "eos"
        elif len(req.prompt) + req.n_generated >= sp.max_length:
            req.reason = "length"  # upstream drops this last token too
        else:
            req.emitted.append(token)
            if sp.max_new_tokens is not None and len(req.emitted) >= sp.max_new_tokens:
                req.reason = "max_new_tokens"  # our extra cap: keeps the tokens it emitted
                return StepOutput(slot, token, True, req.reason)
            return StepOutput(slot, token, False)
        return StepOutput(slot, None, True, req.reason)

    def finished(self, slot: int) -> bool:
        return self._requests[slot].finished

    def result(self, slot: int) -> list[int]:
        """Generated LM ids of a request so far (prompt and dropped last token excluded)."""
        return list(self._requests[slot].emitted)

    def reason(self, slot: int) -> str | None:
        return self._requests[slot].reason

    def release(self, slot: int) -> None:
        """Free a slot (finished or not: releasing a running request cancels it)."""
        self._requests.pop(slot, None)
        if slot in self._pending:
            self._pending.remove(slot)

    def snapshot(self, slot: int, length: int) -> PrefixSnapshot:
        """Snapshot the first `length` prompt positions of a request that has been prefilled."""
        req = self._requests[slot]
        if slot in self._pending or not 0 < length <= len(req.prompt):
            raise ValidationError(f"cannot snapshot {length} positions of slot {slot} (prefill it first; "
                                  f"length must be 1..{len(req.prompt)})")
        with torch.inference_mode():
            return self.cache.snapshot(slot, req.prompt[:length])


def _per_prompt(value, n: int, name: str) -> list:
    if value is None or not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise ValidationError(f"{name} has {len(value)} entries for {n} prompts")
    return list(value)


def generate(model, prompts: Sequence[Sequence[int]], *, sampling: SamplingConfig | None = None,
             generators: Sequence[torch.Generator | None] | None = None, eos_id: int | None = None,
             prefix: PrefixSnapshot | Sequence[PrefixSnapshot | None] | None = None,
             on_step: Callable[[int, int], None] | None = None, max_batch: int | None = None,
             prefill_chunk: int = PREFILL_CHUNK) -> list[list[int]]:
    """Generate for every prompt (batched, continuous) and return the LM ids per prompt.

    Results follow upstream semantics (module docstring). `prefix`: one snapshot used for every
    prompt it is a prefix of, or one per prompt. `on_step(i, token)` is called for each token of
    prompt i as soon as it is final. `max_batch` bounds the rows decoded together (default: all).
    """
    sampling = sampling or SamplingConfig()
    n = len(prompts)
    if n == 0:
        return []
    gens = _per_prompt(generators, n, "generators")
    prefixes = _per_prompt(prefix, n, "prefix")
    session = DecodeSession(model, max_batch=min(max_batch or n, n), max_length=sampling.max_length,
                            eos_id=eos_id, prefill_chunk=prefill_chunk)
    results: list[list[int] | None] = [None] * n
    owner: dict[int, int] = {}
    queue = list(range(n))
    while queue or owner:
        while queue and session.free_slots:
            i = queue.pop(0)
            pre = prefixes[i] if prefixes[i] is not None and prefixes[i].matches(prompts[i]) else None
            owner[session.add(prompts[i], sampling=sampling, generator=gens[i], prefix=pre)] = i
        for ev in session.step():
            i = owner[ev.slot]
            if ev.token is not None and on_step is not None:
                on_step(i, ev.token)
            if ev.finished:
                results[i] = session.result(ev.slot)
                session.release(ev.slot)
                del owner[ev.slot]
    return results  # type: ignore[return-value]


def stream(model, prompt: Sequence[int], *, sampling: SamplingConfig | None = None,
           generator: torch.Generator | None = None, prefix: PrefixSnapshot | None = None,
           eos_id: int | None = None) -> Iterator[int]:
    """Yield one request's final tokens as they are generated (same tokens as `generate`)."""
    sampling = sampling or SamplingConfig()
    session = DecodeSession(model, max_batch=1, max_length=sampling.max_length, eos_id=eos_id)
    slot = session.add(prompt, sampling=sampling, generator=generator, prefix=prefix)
    while True:
        for ev in session.step():
            if ev.token is not None:
                yield ev.token
        if session.finished(slot):
            return
