"""The CosyVoice-300M-25Hz decoder: mixed speech ids + voice prompt → 24 kHz audio (flow → HiFT).

`load_decoder(dir)` reads cosyvoice.yaml, flow.pt, hift.pt and campplus.onnx from the official folder.
`CosyVoiceDecoder` exposes the prompt-side features (speaker embedding, prompt mel: the cacheable
part of a voice prompt) and the two synthesis stages, separately timed by the engine:
`token2mel` (flow matching) and `mel2wav` (vocoder), or both via `synthesize`; `open_stream` decodes
ids chunk by chunk as they arrive (editx.decoder.streaming). The submodules
(config, tokens, flow, vocoder, speaker) are imported lazily so importing the package stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from editx.errors import ModelFilesError, ValidationError

if TYPE_CHECKING:
    from editx.decoder.config import DecoderConfig
    from editx.decoder.flow import CosyVoiceFlow
    from editx.decoder.speaker import SpeakerEncoder
    from editx.decoder.vocoder import HiFTGenerator

log = logging.getLogger(__name__)

__all__ = ["CosyVoiceDecoder", "load_decoder"]

SPEAKER_DIM = 192  # CAM++ x-vector size the flow's spk_embed_affine_layer takes


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValidationError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def _as_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not torch.is_floating_point(t) or not torch.isfinite(t).all():
        raise ValidationError(f"{what} must be a finite float array")
    return t.float()


class CosyVoiceDecoder:
    """Flow + HiFT + CAM++ on one device; stateless per request, safe to share across requests."""

    def __init__(self, config: DecoderConfig, flow: CosyVoiceFlow, hift: HiFTGenerator,
                 speaker: SpeakerEncoder, *, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.flow = flow
        self.hift = hift
        self.speaker = speaker
        self.device = device
        self.dtype = dtype

    @property
    def sample_rate(self) -> int:
        return int(self.hift.cfg.sampling_rate)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hift.cfg.samples_per_frame

    # ------------------------------------------------------------------ prompt side (cacheable)

    def speaker_embedding(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mono waveform → CAM++ x-vector (192,) float32 on CPU (unnormalised; the flow normalises)."""
        return torch.from_numpy(self.speaker.embed(np.asarray(samples, dtype=np.float32), sample_rate))

    def prompt_features(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mono waveform → prompt mel (frames, 80) float32 on CPU, 50 frames per second at 24 kHz.

        As upstream `extract_speech_feat`: float32 sinc resampling to mel_conf.sampling_rate, then the
        Matcha log-mel with the yaml's mel_conf. Upstream feeds the raw prompt (peak-limited to 0.6 by
        newer tts.py); that scaling is the caller's choice.
        """
        from editx.audio import features

        mel = self.config.mel
        x = torch.from_numpy(np.asarray(samples, dtype=np.float32))
        if x.ndim != 1:
            raise ValidationError(f"prompt audio must be mono 1-D samples, got shape {tuple(x.shape)}")
        if sample_rate != mel.sampling_rate:
            x = features.resample(x, int(sample_rate), mel.sampling_rate, kernel_dtype=torch.float32)
        out = features.cosyvoice_mel(x, sr=mel.sampling_rate, n_fft=mel.n_fft, hop=mel.hop_size, win=mel.win_size,
                                     n_mels=mel.num_mels, fmin=mel.fmin, fmax=mel.fmax)
        return out.t().contiguous()

    # ------------------------------------------------------------------ synthesis

    def flow_tokens(self, mixed: np.ndarray) -> torch.Tensor:
        """Mixed ids 0..5119 → flow rows (rows, 2) int64 (upstream `_reshape`)."""
        from editx.decoder.tokens import mixed_to_flow_tokens

        return torch.from_numpy(mixed_to_flow_tokens(mixed))

    def flow_conditions(self, prompt_mel, spk_emb) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt mel (Tm, 80) and speaker embedding (192,) as every flow path takes them: checked,
        float32, rounded through bfloat16 (tts.py casts both to bfloat16 before token2wav)."""
        mel = _as_tensor(prompt_mel, "prompt mel")
        spk = _as_tensor(spk_emb, "speaker embedding").reshape(-1)
        if spk.numel() != self.flow.cfg.spk_embed_dim:
            raise ValidationError(f"speaker embedding must have {self.flow.cfg.spk_embed_dim} values, got {spk.numel()}")
        return mel.bfloat16().float(), spk.bfloat16().float()

    def token2mel(self, prompt_mixed: np.ndarray, prompt_mel: torch.Tensor, spk_emb: torch.Tensor,
                  target_mixed: np.ndarray, *, n_steps: int = 10, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The flow stage: mel (80, 2 * 3 * ceil(len(target_mixed) / 5)) in self.dtype on self.device.

        Like upstream's callers, the prompt mel and speaker embedding are rounded through bfloat16
        before the flow. The start noise is the fixed buffer prefix unless `noise` is given.
        """
        if n_steps < 1:
            raise ValidationError(f"n_steps must be >= 1, got {n_steps}")
        mel, spk = self.flow_conditions(prompt_mel, spk_emb)
        return self.flow.inference(self.flow_tokens(prompt_mixed), mel, spk, self.flow_tokens(target_mixed),
                                   n_steps=n_steps, noise=noise)

    def token2mel_primed(self, prime, target_mixed: np.ndarray, *, n_steps: int = 10) -> torch.Tensor:
        """The flow stage against a voice's StreamPrime (see `prime_stream`): the target rows as one
        last streamed chunk, so the prompt's frames are not run through the DiT again. Same shape as
        `token2mel`; close to, not equal to, its output (the prompt does not attend to the target)."""
        mel, _ = prime.first_chunk(self.flow, self.flow_tokens(target_mixed), last=True, n_steps=n_steps,
                                   noise_offset=prime.cache.prompt_frames)
        return mel

    def flow_job(self, prompt_mixed: np.ndarray, prompt_mel: torch.Tensor, spk_emb: torch.Tensor,
                 target_mixed: np.ndarray, *, primed=None, n_steps: int = 10):
        """The flow work of `token2mel` (or, with `primed` = the voice's StreamPrime, of
        `token2mel_primed`) up to its Euler solve: a FlowJob for `solve_flow_jobs`."""
        if n_steps < 1:
            raise ValidationError(f"n_steps must be >= 1, got {n_steps}")
        if primed is not None:
            return primed.first_job(self.flow, self.flow_tokens(target_mixed), n_steps=n_steps)
        mel, spk = self.flow_conditions(prompt_mel, spk_emb)
        return self.flow.prepare(self.flow_tokens(prompt_mixed), mel, spk, self.flow_tokens(target_mixed))

    def solve_flow_jobs(self, jobs, *, n_steps: int = 10) -> list[torch.Tensor]:
        """Each FlowJob's mel (80, frames), jobs of similar length sharing each Euler step's DiT call
        (editx.decoder.batch); equal to solving each alone up to float summation order."""
        from editx.decoder.batch import buckets, solve_euler_batch

        out: list[torch.Tensor | None] = [None] * len(jobs)
        for group in buckets([j.frames + j.cached for j in jobs]):
            for i, mel in zip(group, solve_euler_batch(self.flow, [jobs[i] for i in group], n_steps=n_steps)):
                out[i] = mel
        return out  # type: ignore[return-value]

    def mel2wav(self, mel: torch.Tensor, *, generator: torch.Generator | None = None) -> np.ndarray:
        """The vocoder stage: mel (80, T) or (1, 80, T) → waveform (T * 480,) float32 at 24 kHz."""
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        weight = next(self.hift.parameters())
        wav = self.hift.inference(mel.to(weight.device, weight.dtype), generator=generator)
        return wav[0].float().cpu().numpy()

    def synthesize(self, prompt_mixed: np.ndarray, prompt_mel: torch.Tensor, spk_emb: torch.Tensor,
                   target_mixed: np.ndarray, *, n_steps: int = 10,
                   generator: torch.Generator | None = None) -> np.ndarray:
        """token2mel then mel2wav: 24 kHz float32 audio for `target_mixed` in the prompt's voice.

        `generator` drives the vocoder's source noise; the flow noise is the fixed buffer (upstream).
        """
        mel = self.token2mel(prompt_mixed, prompt_mel, spk_emb, target_mixed, n_steps=n_steps)
        return self.mel2wav(mel, generator=generator)

    def open_stream(self, prompt_mixed: np.ndarray, prompt_mel: torch.Tensor, spk_emb: torch.Tensor, *,
                    n_steps: int = 10, chunk_rows=None, generator: torch.Generator | None = None,
                    noise: str = "offline", stage=None, prime=None):
        """A DecoderStream: `push(mixed ids)` as they arrive, then `finish()`; both return audio pieces.

        `prime` (from `prime_stream` for the same prompt and n_steps) skips the per-request prompt
        setup; without it the stream follows upstream's path exactly.
        """
        from editx.decoder.streaming import STREAM_CHUNK_ROWS, DecoderStream, _no_stage

        if n_steps < 1:
            raise ValidationError(f"n_steps must be >= 1, got {n_steps}")
        return DecoderStream(self, prompt_mixed, prompt_mel, spk_emb, n_steps=n_steps,
                             chunk_rows=chunk_rows or STREAM_CHUNK_ROWS, generator=generator, noise=noise,
                             stage=stage or _no_stage, prime=prime)

    def prime_stream(self, prompt_mixed: np.ndarray, prompt_mel: torch.Tensor, spk_emb: torch.Tensor, *,
                     n_steps: int = 10):
        """The prompt side of every stream in this voice (a StreamPrime), or None for a prompt too
        short to hold the flow's lookahead. Rounded through bfloat16 like every flow input."""
        from editx.decoder.streaming import flow_prime

        if n_steps < 1:
            raise ValidationError(f"n_steps must be >= 1, got {n_steps}")
        mel, spk = self.flow_conditions(prompt_mel, spk_emb)
        return flow_prime(self.flow, self.flow_tokens(prompt_mixed), mel, spk, n_steps=n_steps)


def read_config(root: Path) -> DecoderConfig:
    """cosyvoice.yaml parsed and checked for the values this decoder depends on."""
    from editx.decoder.config import DecoderConfig

    config = DecoderConfig.from_yaml(root)
    if config.mel.center:
        raise ModelFilesError(f"{root}/cosyvoice.yaml: mel_conf.center must be false (the Matcha mel is uncentred)")
    return config


def load_decoder(cosyvoice_dir: str | Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, onnx_threads: int = 1,
                 providers: list[str] | tuple[str, ...] | None = None) -> CosyVoiceDecoder:
    """Load the official CosyVoice-300M-25Hz folder (cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx)."""
    from editx.decoder.flow import FLOW_FILE, load_flow
    from editx.decoder.speaker import SpeakerEncoder
    from editx.decoder.vocoder import HiFTConfig, load_hift

    root = Path(cosyvoice_dir)
    if not root.is_dir():
        raise ModelFilesError(f"{root} is not a directory; pass Step-Audio-EditX/CosyVoice-300M-25Hz")
    device, dtype = torch.device(device), _as_dtype(dtype)
    config = read_config(root)
    flow = load_flow(root / FLOW_FILE, config.flow, device=device, dtype=dtype)
    hift = load_hift(root / "hift.pt", HiFTConfig.from_yaml(dict(config.hift)), device=device, dtype=dtype)
    speaker = SpeakerEncoder.load(root / "campplus.onnx", threads=onnx_threads, providers=providers)
    log.info("decoder ready from %s on %s (%s)", root, device, dtype)
    return CosyVoiceDecoder(config, flow, hift, speaker, device=device, dtype=dtype)
