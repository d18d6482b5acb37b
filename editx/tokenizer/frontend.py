"""vq02 features: FunASR WavFrontendOnline (fbank -> LFR -> CMVN) with Step-Audio's chunking, computed once.

Upstream feeds the utterance to the streaming front end in 3840-sample pieces (chunk_size[1] * 960).
Kaldi fbank frames only depend on their own 400 samples, so the per-chunk fbank equals the whole-
utterance fbank; what the chunking decides is (1) how many LFR frames come out and (2) how they are
grouped into encoder chunks. `chunk_plan` replays that bookkeeping exactly (including the ends where
upstream drops the last frames), and `lfr_cmvn` builds the same stacked frames in one pass.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editx.audio.features import kaldi_fbank
from editx.errors import ModelFilesError

SAMPLE_RATE = 16000  # the Paraformer front end and both codebooks run at 16 kHz
PCM_SCALE = float(1 << 15)  # WavFrontendOnline(upsacle_samples=True): float audio -> int16 range
CHUNK_FRAME_SAMPLES = 960  # upstream: chunk_stride_samples = chunk_size[1] * 960 (6 LFR x 160 hop)


@dataclass(frozen=True)
class FrontendConfig:
    """`frontend_conf` of the FunASR config.yaml (WavFrontendOnline); dither is always 0 here."""

    fs: int = SAMPLE_RATE
    window: str = "hamming"
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    lfr_m: int = 1
    lfr_n: int = 1

    @classmethod
    def from_dict(cls, conf: dict, source: str = "config.yaml") -> FrontendConfig:
        try:
            cfg = cls(
                fs=int(conf.get("fs", SAMPLE_RATE)),
                window=str(conf.get("window", "hamming")),
                n_mels=int(conf.get("n_mels", 80)),
                frame_length_ms=float(conf.get("frame_length", 25)),
                frame_shift_ms=float(conf.get("frame_shift", 10)),
                lfr_m=int(conf.get("lfr_m", 1)),
                lfr_n=int(conf.get("lfr_n", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise ModelFilesError(f"{source}: bad frontend_conf value: {exc}") from exc
        if cfg.fs != SAMPLE_RATE or cfg.lfr_m < 1 or cfg.lfr_n < 1:
            raise ModelFilesError(f"{source}: frontend_conf must have fs {SAMPLE_RATE} and lfr_m/lfr_n >= 1, "
                                  f"got fs {cfg.fs}, lfr_m {cfg.lfr_m}, lfr_n {cfg.lfr_n}")
        return cfg

    @property
    def win(self) -> int:  # samples per fbank frame (400)
        return int(self.frame_length_ms * self.fs / 1000)

    @property
    def hop(self) -> int:  # samples between fbank frames (160)
        return int(self.frame_shift_ms * self.fs / 1000)


@dataclass(frozen=True)
class Cmvn:
    """Global CMVN from am.mvn: features become (x + shift) * scale."""

    shift: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)

    @classmethod
    def from_file(cls, path: Path, dim: int) -> Cmvn:
        """Parse the Kaldi nnet text file (`<AddShift>` and `<Rescale>` components)."""
        if not path.is_file():
            raise ModelFilesError(f"missing {path} (Paraformer CMVN statistics); re-download Step-Audio-Tokenizer")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFilesError(f"cannot read {path}: {exc}") from exc
        vectors = {}
        for name in ("AddShift", "Rescale"):
            # The component's values sit in the first [ ... ] after its tag.
            m = re.search(rf"<{name}>[^\[]*\[([^\]]*)\]", text)
            try:
                values = np.array(m.group(1).split(), dtype=np.float32) if m else None
            except ValueError:
                values = None
            if values is None or values.size < dim:
                raise ModelFilesError(f"{path}: no <{name}> vector with {dim} values; the file is not a "
                                      "FunASR am.mvn for this model")
            vectors[name] = torch.from_numpy(values[:dim].copy())  # upstream uses cmvn[:, :dim]
        return cls(vectors["AddShift"], vectors["Rescale"])


def chunk_plan(num_samples: int, cfg: FrontendConfig, chunk_frames: int) -> tuple[int, list[int]]:
    """(fbank frames used, LFR frames per encoder chunk) for upstream's is_final=True streaming run.

    Replays ParaformerStreaming.infer_encoder + WavFrontendOnline: chunks of chunk_frames*960 samples
    (the last one shorter, or empty and skipped when the length divides evenly); LFR windows of lfr_m
    frames every lfr_n, after (lfr_m-1)//2 copies of frame 0; a non-final chunk emits only complete
    windows; the final chunk pads the rest with the last frame, unless it brings too few new frames,
    in which case upstream stops and the leftover frames are dropped.
    """
    stride = chunk_frames * CHUNK_FRAME_SAMPLES
    pad = (cfg.lfr_m - 1) // 2
    n_chunks = num_samples // stride + 1

    def frames_after(samples: int) -> int:
        return 0 if samples < cfg.win else (samples - cfg.win) // cfg.hop + 1

    lens: list[int] = []
    emitted, frames_seen, started = 0, 0, False
    for i in range(n_chunks):
        final = i == n_chunks - 1
        end = min((i + 1) * stride, num_samples)
        if end <= i * stride:  # the empty tail when the length is a multiple of the stride
            break
        frames = frames_after(end)
        new = frames - frames_seen
        if new > 0:
            cached = pad if not started else frames_seen + pad - cfg.lfr_n * emitted
            started = True
            frames_seen = frames
            if new + cached < cfg.lfr_m:  # frames only go to the splice cache; nothing comes out
                if final:
                    break
                continue
            total = math.ceil(frames / cfg.lfr_n) if final else (frames + pad - cfg.lfr_m) // cfg.lfr_n + 1
        elif final and started:  # final flush of the splice cache alone
            total = math.ceil(frames / cfg.lfr_n)
        else:
            break
        if total > emitted:
            lens.append(total - emitted)
            emitted = total
    return frames_seen, lens


def lfr_cmvn(fbank: torch.Tensor, n_out: int, cfg: FrontendConfig, cmvn: Cmvn) -> torch.Tensor:
    """Stack lfr_m frames every lfr_n (frame 0 repeated on the left, the last frame on the right): (n_out, 560)."""
    pad = (cfg.lfr_m - 1) // 2
    padded = torch.cat((fbank[:1].expand(pad, -1), fbank))  # (pad + K, n_mels)
    idx = torch.arange(n_out)[:, None] * cfg.lfr_n + torch.arange(cfg.lfr_m)[None, :]
    stacked = padded[idx.clamp(max=padded.shape[0] - 1)].reshape(n_out, -1)  # (n_out, lfr_m * n_mels)
    return (stacked + cmvn.shift) * cmvn.scale


def streaming_features(samples16k: np.ndarray, cfg: FrontendConfig, cmvn: Cmvn,
                       chunk_frames: int) -> tuple[torch.Tensor, list[int]]:
    """LFR+CMVN frames (T, lfr_m * n_mels) float32 and the encoder chunk sizes (summing to T)."""
    wav = torch.as_tensor(np.asarray(samples16k, dtype=np.float32))
    frames, lens = chunk_plan(int(wav.shape[0]), cfg, chunk_frames)
    if not lens:
        return torch.empty(0, cfg.n_mels * cfg.lfr_m), []
    used = (frames - 1) * cfg.hop + cfg.win
    fbank = kaldi_fbank(wav[:used] * PCM_SCALE, cfg.fs, cfg.n_mels, frame_length_ms=cfg.frame_length_ms,
                        frame_shift_ms=cfg.frame_shift_ms, dither=0.0, window=cfg.window,
                        energy_floor=0.0)  # (frames, n_mels)
    return lfr_cmvn(fbank, sum(lens), cfg, cmvn), lens
