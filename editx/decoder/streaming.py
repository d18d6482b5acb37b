"""Streaming decode: mixed speech ids arrive a few at a time, 24 kHz audio leaves chunk by chunk.

Upstream's chunked path (stepvocoder/cosyvoice2: `CosyVoice_stream_impl_.token2wav_stream`,
`CausalMaskedDiffWithXvec.setup_cache` / `inference_chunk`, `CausalConditionalCFM.forward_chunk`):

- Once the first lookahead rows (3 flow rows = 5 mixed ids) exist, `flow_setup` runs the prompt rows
  (with that lookahead) through the encoder and the prompt mel through every Euler step of the DiT,
  keeping their attention keys/values and convolution context. The prompt mel output is discarded.
- Each chunk of `rows` flow rows (growing: 15, 24, then 48 rows = 0.6, 0.96, 1.92 s) is sent with the
  next 3 rows as lookahead (sent again with the next chunk); the last chunk takes every remaining row
  and zero lookahead, as offline. The chunk attends to the cache, never to later frames, so streamed
  audio is close to, not equal to, the offline output (measured in tests/test_streaming.py).
- The DiT attention cache keeps the prompt frames and the newest DIT_LEFT_CONTEXT generated frames
  (upstream's trim). Upstream reads each chunk's start noise from the fixed buffer at the cache
  length, so once the cache is trimmed every later chunk starts from the same noise
  (`noise="upstream"`). By default (`noise="offline"`) a chunk reads the noise at its own frame
  position, the noise the offline path gives those frames: identical until the first trim, and
  streamed audio stays close to the offline output over any length (tests/test_streaming.py).
- HiFT continues across chunks with `vocode_chunk` (8-frame mel/excitation carry, Hamming cross-fade,
  held-back tail).
- `flow_prime` (our addition, the Engine's default): upstream's setup needs the first generated rows,
  so it repeats the prompt's whole DiT pass for every request. A StreamPrime uses the prompt's own last
  lookahead rows instead, is made once per voice and cached; the first chunk then carries those tail
  rows (conditioned on their prompt mel, output dropped) before its generated rows. The prompt frames
  before the tail do not attend to the tail, so primed audio differs slightly from the setup path;
  both stay within the same bound of the offline output (tests/test_streaming.py).

Cost: the DiT cache holds keys/values for (prompt + 96 + chunk) frames for every Euler step and block
(n_steps · depth · 2 CFG rows · heads · 2 · head_dim values per frame: ~1.3 MB per frame in float32
for the released flow), the encoder cache grows with every row of the request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from editx.decoder.conformer import EncoderCache
from editx.decoder.flow import CosyVoiceFlow, FlowJob, cosine_t_span
from editx.decoder.tokens import GROUP, ROWS_PER_GROUP
from editx.decoder.vocoder import STREAM_MEL_CACHE, HiFTGenerator
from editx.errors import ValidationError

NOISE_MODES = ("offline", "upstream")
STREAM_CHUNK_ROWS = (6, 24, 48)  # flow rows per chunk, the last repeats (upstream: 15, 24, 48; config.py)
DIT_LEFT_CONTEXT = 2 * 48  # generated mel frames the DiT attention cache keeps besides the prompt
MIN_CHUNK_ROWS = 6  # 12 mel frames: more than the vocoder's 8-frame carry


def mixed_for_rows(rows: int) -> int:
    """Mixed ids that make `rows` flow rows (whole groups only; upstream `_mixed_len`)."""
    return rows // ROWS_PER_GROUP * GROUP


def check_chunk_rows(chunk_rows: Iterable[int]) -> tuple[int, ...]:
    """Validate a chunk schedule: non-empty, each a multiple of 3 rows and at least MIN_CHUNK_ROWS."""
    rows = tuple(int(r) for r in chunk_rows)
    if not rows or any(r < MIN_CHUNK_ROWS or r % ROWS_PER_GROUP for r in rows):
        raise ValidationError(f"stream chunk sizes must be multiples of {ROWS_PER_GROUP} flow rows, each at least "
                              f"{MIN_CHUNK_ROWS} (one row = 40 ms), e.g. {STREAM_CHUNK_ROWS}; got {rows}")
    return rows


@dataclass
class FlowCache:
    """Everything one flow chunk hands to the next."""

    encoder: EncoderCache
    conv: list[list[torch.Tensor]]  # [Euler step][block] (2, 2C, 2) causal-conv context ([cond; uncond])
    att: list[list[torch.Tensor]]  # [Euler step][block] (2, H, S, 2D) keys|values, newest frames first
    spk: torch.Tensor  # (1, 80) projected speaker embedding
    prompt_frames: int

    @property
    def frames(self) -> int:
        """Mel frames the DiT cache holds (also the start-noise offset of the next chunk)."""
        return int(self.att[0][0].shape[2])


def solve_euler_chunk(flow: CosyVoiceFlow, noise: torch.Tensor, mu: torch.Tensor, spk: torch.Tensor,
                      cond: torch.Tensor, conv: list | None, att: list | None, *, n_steps: int
                      ) -> tuple[torch.Tensor, list, list]:
    """`solve_euler` on one chunk: each Euler step has its own DiT cache. noise, mu, cond (1, 80, T)."""
    t_span = cosine_t_span(n_steps, device=mu.device, dtype=mu.dtype)
    w = flow.cfg.cfg_rate
    mu_in = torch.cat([mu, torch.zeros_like(mu)], dim=0)
    spk_in = torch.cat([spk, torch.zeros_like(spk)], dim=0)
    cond_in = torch.cat([cond, torch.zeros_like(cond)], dim=0)
    conv = conv or [None] * n_steps
    att = att or [None] * n_steps
    new_conv, new_att = [], []
    x, t, dt = noise, t_span[:1], t_span[1] - t_span[0]
    for step in range(1, n_steps + 1):
        v, c, a = flow.estimator.forward_chunk(torch.cat([x, x], dim=0), t, mu_in, spk_in, cond_in,
                                               conv[step - 1], att[step - 1])
        v_cond, v_uncond = v.chunk(2, dim=0)
        x = x + dt * ((1.0 + w) * v_cond - w * v_uncond)
        t = t + dt
        if step < n_steps:
            dt = t_span[step + 1] - t
        new_conv.append(c)
        new_att.append(a)
    return x, new_conv, new_att


def _noise(flow: CosyVoiceFlow, offset: int, frames: int) -> torch.Tensor:
    buf = flow.rand_noise
    if buf is None:
        raise ValidationError("the flow has no noise buffer; load it with load_flow()")
    if offset + frames > buf.shape[-1]:
        raise ValidationError(f"a {frames}-frame chunk after {offset} cached frames exceeds the noise buffer")
    return buf[:, :, offset:offset + frames]


def _prime_caches(flow: CosyVoiceFlow, tokens: torch.Tensor, cond: torch.Tensor, spk_emb: torch.Tensor,
                  n_steps: int) -> FlowCache:
    """Run prompt rows (the last `pre_lookahead_len` of `tokens` only looked at) through the encoder
    and every Euler step of the DiT with `cond` (1, 80, frames) as the condition; keep the caches."""
    w = flow.encoder_proj.weight
    tokens = tokens.to(w.device, torch.long).unsqueeze(0)  # (1, T, 2)
    h, enc = flow.encoder.forward_chunk(flow.input_embedding(tokens.clamp(min=0)), None, last=False)
    mu = flow.encoder_proj(h).transpose(1, 2)  # (1, 80, frames)
    spk = flow.speaker(spk_emb.reshape(1, -1).to(w.device, w.dtype))
    frames = mu.shape[2]
    _, conv, att = solve_euler_chunk(flow, _noise(flow, 0, frames).to(w.dtype), mu, spk, cond, None, None,
                                     n_steps=n_steps)
    return FlowCache(enc, conv, att, spk, frames)


def _prompt_cond(flow: CosyVoiceFlow, prompt_mel: torch.Tensor, frames: int) -> torch.Tensor:
    """The prompt mel (Tm, 80) nearest-resized to `frames` frames, as the offline flow does: (1, 80, frames)."""
    w = flow.encoder_proj.weight
    return F.interpolate(prompt_mel.to(w.device, w.dtype).t().unsqueeze(0), size=frames, mode="nearest")


@torch.inference_mode()
def flow_setup(flow: CosyVoiceFlow, prompt_tokens: torch.Tensor, lookahead_tokens: torch.Tensor,
               prompt_mel: torch.Tensor, spk_emb: torch.Tensor, *, n_steps: int = 10) -> FlowCache:
    """Prime the caches with the prompt (upstream `setup_cache`).

    prompt_tokens (Tp, 2) and lookahead_tokens (lookahead, 2) flow rows; prompt_mel (Tm, 80) at any
    length (nearest-resized to 2*Tp frames as offline); spk_emb (192,).
    """
    cond = _prompt_cond(flow, prompt_mel, flow.cfg.encoder.up_stride * prompt_tokens.shape[0])
    return _prime_caches(flow, torch.cat([prompt_tokens, lookahead_tokens]), cond, spk_emb, n_steps)


@dataclass
class StreamPrime:
    """The prompt side of a streaming decode, computed once per voice and shared by its requests.

    Upstream's setup needs the first generated rows as the prompt's lookahead, so it runs per request.
    Here the prompt's own last `pre_lookahead_len` rows are that lookahead: the caches cover the
    prompt minus those `tail` rows, and the first chunk of every stream sends the tail rows (with
    their prompt mel as condition) in front of its generated rows. Read-only once built.
    """

    cache: FlowCache
    tail_tokens: torch.Tensor  # (lookahead, 2) the prompt's last flow rows
    tail_cond: torch.Tensor  # (1, 80, up_stride * lookahead) their prompt mel frames
    n_steps: int

    def check_steps(self, n_steps: int) -> None:
        if self.n_steps != n_steps:
            raise ValidationError(f"the stream prime was made for {self.n_steps} Euler steps, not {n_steps}")

    def first_chunk(self, flow: CosyVoiceFlow, tokens: torch.Tensor, *, last: bool, n_steps: int = 10,
                    noise_offset: int | None = None) -> tuple[torch.Tensor, FlowCache]:
        """`flow_chunk` for the first chunk after this prime: the prompt's tail rows lead `tokens`,
        conditioned on their prompt mel; only the rows of `tokens` come back."""
        self.check_steps(n_steps)
        tokens = torch.cat([self.tail_tokens.to(tokens.dtype), tokens])
        return flow_chunk(flow, tokens, self.cache, last=last, n_steps=n_steps, noise_offset=noise_offset,
                          cond_prefix=self.tail_cond)

    def first_job(self, flow: CosyVoiceFlow, tokens: torch.Tensor, *, n_steps: int = 10) -> FlowJob:
        """The FlowJob of a last first chunk (an offline decode against this prime), for a batched
        solve: `first_chunk(..., last=True, noise_offset=prompt frames)` before its Euler solve."""
        self.check_steps(n_steps)
        tokens = torch.cat([self.tail_tokens.to(tokens.dtype), tokens])
        return chunk_job(flow, tokens, self.cache, last=True, noise_offset=self.cache.prompt_frames,
                         cond_prefix=self.tail_cond)[0]

    @property
    def nbytes(self) -> int:
        tensors = [self.tail_tokens, self.tail_cond, self.cache.spk, self.cache.encoder.lookahead,
                   self.cache.encoder.upsample]
        tensors += [t for kv in self.cache.encoder.att for t in kv]
        tensors += [t for per_step in self.cache.conv + self.cache.att for t in per_step]
        return sum(t.numel() * t.element_size() for t in tensors)


@torch.inference_mode()
def flow_prime(flow: CosyVoiceFlow, prompt_tokens: torch.Tensor, prompt_mel: torch.Tensor, spk_emb: torch.Tensor,
               *, n_steps: int = 10) -> StreamPrime | None:
    """A StreamPrime for this prompt, or None when the prompt has no more rows than the lookahead."""
    tail = flow.cfg.encoder.pre_lookahead_len
    rows = int(prompt_tokens.shape[0])
    if rows <= tail:
        return None
    ratio = flow.cfg.encoder.up_stride
    cond = _prompt_cond(flow, prompt_mel, ratio * rows)
    head = ratio * (rows - tail)
    cache = _prime_caches(flow, prompt_tokens, cond[:, :, :head], spk_emb, n_steps)
    return StreamPrime(cache, prompt_tokens[rows - tail:].clone(), cond[:, :, head:].clone(), n_steps)


@torch.inference_mode()
def chunk_job(flow: CosyVoiceFlow, tokens: torch.Tensor, cache: FlowCache, *, last: bool,
              noise_offset: int | None = None, cond_prefix: torch.Tensor | None = None) -> tuple[FlowJob, EncoderCache]:
    """Everything of `flow_chunk` before the Euler solve: the chunk's FlowJob (its `keep` = the held
    prompt frames of `cond_prefix`) and the encoder cache after it."""
    w = flow.encoder_proj.weight
    tokens = tokens.to(w.device, torch.long).unsqueeze(0)
    h, enc = flow.encoder.forward_chunk(flow.input_embedding(tokens.clamp(min=0)), cache.encoder, last=last)
    mu = flow.encoder_proj(h).transpose(1, 2)  # (1, 80, 2T)
    offset = cache.frames if noise_offset is None else noise_offset
    noise = _noise(flow, offset, mu.shape[2]).to(w.dtype)
    held = 0
    cond = torch.zeros_like(mu)
    if cond_prefix is not None:
        if cache.frames != cache.prompt_frames:
            raise ValidationError("prompt rows can only lead the first chunk of a stream")
        held = cond_prefix.shape[-1]
        cond[:, :, :held] = cond_prefix.to(cond.dtype)
    return FlowJob(noise, mu, cache.spk, cond, keep=held, conv=cache.conv, att=cache.att), enc


@torch.inference_mode()
def flow_chunk(flow: CosyVoiceFlow, tokens: torch.Tensor, cache: FlowCache, *, last: bool, n_steps: int = 10,
               left_context: int = DIT_LEFT_CONTEXT, noise_offset: int | None = None,
               cond_prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, FlowCache]:
    """Mel (80, 2*T) for the next T rows (upstream `inference_chunk` + the cache trim).

    tokens (T + lookahead, 2) flow rows, or (T, 2) on the `last` chunk. The start noise is read at
    `noise_offset` into the fixed buffer; None means upstream's choice, the DiT cache length.
    `cond_prefix` (1, 80, F): the chunk starts with prompt rows still owed to a StreamPrime's cache;
    their F frames take it as condition, join the cache's prompt and are not returned.
    """
    job, enc = chunk_job(flow, tokens, cache, last=last, noise_offset=noise_offset, cond_prefix=cond_prefix)
    held, p = job.keep, cache.prompt_frames
    x, conv, att = solve_euler_chunk(flow, job.noise, job.mu, job.spk, job.cond, job.conv, job.att, n_steps=n_steps)
    if last:  # nothing follows: no cache to reorder or trim
        return x[0, :, held:], FlowCache(enc, conv, att, cache.spk, p + held)
    if held:  # the held prompt frames go to the prompt end of the cache (the DiT attention has no positions)
        n = job.frames
        att = [[torch.cat([a[:, :, held:n], a[:, :, :held], a[:, :, n:]], dim=2) for a in per_step]
               for per_step in att]
        p += held
    if att[0][0].shape[2] > p + left_context:  # keep the newest frames (first) and the prompt (last)
        att = [[torch.cat([a[:, :, :left_context], a[:, :, -p:]], dim=2) for a in per_step] for per_step in att]
    return x[0, :, held:], FlowCache(enc, conv, att, cache.spk, p)


@dataclass(frozen=True)
class VocoderStream:
    """What one vocoded chunk hands to the next (cli/cosyvoice.py `hift_cache_dict`): the last
    STREAM_MEL_CACHE mel frames, their excitation and their not-yet-emitted audio."""

    mel: torch.Tensor  # (B, 80, <=8)
    source: torch.Tensor  # (B, 1, <=8*samples_per_frame)
    speech: torch.Tensor  # (B, <=8*samples_per_frame)

    @classmethod
    def start(cls, batch: int = 1, n_mels: int = 80, device: torch.device | str = "cpu") -> VocoderStream:
        empty = torch.zeros(batch, 0, device=device)
        return cls(torch.zeros(batch, n_mels, 0, device=device), empty[:, None], empty)


@torch.inference_mode()
def vocode_chunk(hift: HiFTGenerator, mel: torch.Tensor, state: VocoderStream, *, last: bool,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, VocoderStream]:
    """Vocode the next mel chunk (B, 80, t) of a stream; returns (new audio (B, n), next state).

    The chunk is vocoded together with the carried mel frames, re-using their excitation; the overlap
    is cross-faded with a Hamming window and the tail is held back until the next chunk (or `last`).
    """
    overlap = STREAM_MEL_CACHE * hift.cfg.samples_per_frame
    mel = torch.cat([state.mel.to(mel), mel], dim=2)
    speech, source = hift.inference_with_source(mel, state.source, generator)
    if state.speech.shape[-1] > 0:
        n = state.speech.shape[-1]
        head = speech[:, :n] * hift.stream_window[:n] + state.speech * hift.stream_window[-n:]
        speech = torch.cat([head, speech[:, n:]], dim=1)
    nxt = VocoderStream(mel[..., -STREAM_MEL_CACHE:], source[..., -overlap:], speech[:, -overlap:])
    return (speech if last else speech[:, :-overlap]), nxt


def _no_stage(_name, **_attrs):  # the default `stage`: times nothing
    class _Null:
        def __enter__(self):
            return {}

        def __exit__(self, *exc):
            return False

    return _Null()


class DecoderStream:
    """One request's streaming decode: `push` mixed ids as the LM emits them, `finish` at the end.

    Each returns the 24 kHz float32 audio that became final; concatenated, the pieces are the whole
    clip (as long as the offline `synthesize` output). `stage(name, **attrs)` (a Timeline.stage) times
    the setup, each flow chunk and each vocoder chunk. `noise`: see the module docstring.
    """

    def __init__(self, decoder, prompt_mixed: np.ndarray, prompt_mel: torch.Tensor, spk_emb: torch.Tensor, *,
                 n_steps: int = 10, chunk_rows: Iterable[int] = STREAM_CHUNK_ROWS,
                 generator: torch.Generator | None = None, noise: str = "offline",
                 stage: Callable = _no_stage, prime: StreamPrime | None = None) -> None:
        if noise not in NOISE_MODES:
            raise ValidationError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        self.decoder, self.flow, self.noise = decoder, decoder.flow, noise
        self.frames = 0  # generated mel frames so far
        self.n_steps, self.generator, self.stage = n_steps, generator, stage
        self.schedule = list(check_chunk_rows(chunk_rows))
        lookahead = self.flow.cfg.encoder.pre_lookahead_len
        if lookahead % ROWS_PER_GROUP:
            raise ValidationError(f"streaming needs a lookahead of whole token groups ({ROWS_PER_GROUP} rows), "
                                  f"the flow has {lookahead}")
        self.lookahead_ids = mixed_for_rows(lookahead)
        self.prompt_tokens = decoder.flow_tokens(prompt_mixed)
        self.prompt_mel, self.spk = decoder.flow_conditions(prompt_mel, spk_emb)
        self.pending: list[int] = []  # mixed ids not yet decoded (a chunk's lookahead stays here)
        self.cache: FlowCache | None = None
        self._held: StreamPrime | None = None  # prompt rows the first chunk still owes the prime's cache
        if prime is not None:
            prime.check_steps(n_steps)
            self.cache, self._held = prime.cache, prime
        dev = self.flow.encoder_proj.weight.device
        self.vocoder = VocoderStream.start(1, self.flow.cfg.output_size, dev)
        self.chunks = 0
        self.finished = False

    def push(self, mixed: Iterable[int]) -> list[np.ndarray]:
        """Add mixed ids (0..5119); returns the audio of every chunk that is now complete."""
        if self.finished:
            raise ValidationError("this stream is finished")
        self.pending.extend(int(i) for i in mixed)
        out = []
        if self.cache is None and len(self.pending) >= self.lookahead_ids:
            self._setup()
        while self.cache is not None:
            take = mixed_for_rows(self.schedule[0])
            if len(self.pending) < take + self.lookahead_ids:
                break
            ids, self.pending = self.pending[:take + self.lookahead_ids], self.pending[take:]
            out.append(self._chunk(ids, last=False))
            if len(self.schedule) > 1:
                self.schedule.pop(0)
        return out

    def finish(self, mixed: Iterable[int] = ()) -> np.ndarray:
        """Add the final ids and decode everything left as the last chunk; returns its audio."""
        if self.finished:
            raise ValidationError("this stream is finished")
        self.pending.extend(int(i) for i in mixed)
        if not self.pending and self.chunks == 0:
            raise ValidationError("no speech tokens to decode (the LM produced none)")
        if self.cache is None:
            self._setup()
        self.finished = True
        return self._chunk(self.pending, last=True)

    def _setup(self) -> None:
        look = self.decoder.flow_tokens(np.asarray(self.pending[:self.lookahead_ids]))
        look = look[:self.flow.cfg.encoder.pre_lookahead_len]
        with self.stage("flow_setup", prompt_rows=int(self.prompt_tokens.shape[0])):
            self.cache = flow_setup(self.flow, self.prompt_tokens, look, self.prompt_mel, self.spk,
                                    n_steps=self.n_steps)

    def _chunk(self, ids: list[int], *, last: bool) -> np.ndarray:
        tokens = self.decoder.flow_tokens(np.asarray(ids, dtype=np.int64))
        rows = tokens.shape[0] - (0 if last else self.flow.cfg.encoder.pre_lookahead_len)
        held, self._held = self._held, None
        with self.stage("flow", chunk=self.chunks, rows=int(rows), steps=self.n_steps):
            offset = self.cache.prompt_frames + self.frames if self.noise == "offline" else None
            if held is not None:
                mel, self.cache = held.first_chunk(self.flow, tokens, last=last, n_steps=self.n_steps,
                                                   noise_offset=offset)
            else:
                mel, self.cache = flow_chunk(self.flow, tokens, self.cache, last=last, n_steps=self.n_steps,
                                             noise_offset=offset)
        self.frames += int(mel.shape[-1])
        hift = self.decoder.hift
        weight = next(hift.parameters())
        with self.stage("vocoder", chunk=self.chunks, frames=int(mel.shape[-1])):
            length = (self.vocoder.mel.shape[-1] + mel.shape[-1]) * hift.cfg.samples_per_frame
            wav, self.vocoder = vocode_chunk(hift, mel.unsqueeze(0).to(weight.device, weight.dtype), self.vocoder,
                                             last=last, generator=self.generator)
            if self.generator is not None:
                # upstream's source module also draws an unused noise branch of the excitation's length
                # from the same RNG; drawing it too keeps every later chunk's noise equal to upstream's
                torch.randn(length, generator=self.generator, device=self.generator.device)
        self.chunks += 1
        return wav[0].float().cpu().numpy()


__all__ = ["DIT_LEFT_CONTEXT", "NOISE_MODES", "STREAM_CHUNK_ROWS", "DecoderStream", "FlowCache", "StreamPrime",
           "VocoderStream", "check_chunk_rows", "chunk_job", "flow_chunk", "flow_prime", "flow_setup", "mixed_for_rows",
           "solve_euler_chunk", "vocode_chunk"]
